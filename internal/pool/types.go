// Package pool keeps pools of pre-warmed sandboxes and binds them to session identifiers:
// the ready queue, identifier → session, the concurrency cap, idle cooldown and maximum
// lifetime. A Manager owns one pool; its state is owned by one goroutine, and the decisions
// are made by a pure reconcile function, so that the logic is tested with a fake clock and
// a fake runtime as well as against real sandboxes.
//
// It does not speak HTTP (internal/api does) and does not parse configuration files
// (internal/config does); it imports sandbox and agentapi.
package pool

import (
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/sandbox"
)

// ContainerType is a pool's kind, spelled as ARM's properties.containerType.
type ContainerType string

const (
	PythonLTS       ContainerType = "PythonLTS"
	Shell           ContainerType = "Shell"
	CustomContainer ContainerType = "CustomContainer"
)

// Defaults of a pool's properties (Azure's CLI defaults, except where noted).
const (
	DefaultMaxConcurrentSessions = 10
	DefaultReadySessionInstances = 5
	DefaultCooldownPeriod        = 300 * time.Second
	// DefaultExecutionTimeoutCap is Azure's hard limit on one execution.
	DefaultExecutionTimeoutCap = 220 * time.Second
	// DefaultWarmupCode imports what most code-interpreter sessions import, so that the first
	// execution after allocation pays none of it.
	DefaultWarmupCode = "import numpy, pandas, matplotlib\nimport matplotlib.pyplot as plt\n%matplotlib inline"
)

// Spec is what a pool is. Config files and the management API spell its fields as ARM's
// Microsoft.App/sessionPools properties; internal/config maps them.
type Spec struct {
	// Name is 3–63 characters of [a-z0-9-], starting with a letter, not ending with '-'.
	Name          string
	ContainerType ContainerType
	// MaxConcurrentSessions caps allocated sessions; at the cap new identifiers get
	// LimitExceeded (HTTP 429).
	MaxConcurrentSessions int
	// ReadySessionInstances is how many started, warmed, unallocated sandboxes are kept.
	ReadySessionInstances int
	// LifecycleType is "Timed" (cooldown after the last request) or "OnContainerExit".
	LifecycleType string
	// CooldownPeriod: a session idle this long is destroyed (Azure: 300–3600 s; sessiond
	// accepts down to 1 s for development and tests).
	CooldownPeriod time.Duration
	// MaxAlivePeriod, if set, destroys a session this long after allocation, idle or not.
	MaxAlivePeriod time.Duration
	// Network is sessionNetworkConfiguration: Egress for EgressEnabled, with sessiond's
	// allow-lists; the zero value (EgressDisabled) gives sessions loopback only.
	Network sandbox.Network

	// sessiond's own properties.

	// Runtime is the isolation runtime ("runsc", "runc"); "" is the default runtime.
	Runtime string
	// Image is the image reference sandboxes are created from.
	Image string
	// Limits bound each session's sandbox.
	Limits sandbox.Limits
	// WarmupCode runs in a code-interpreter sandbox's kernel before it joins the ready
	// queue; "" runs nothing. Its failure fails the sandbox.
	WarmupCode string
	// ExecutionTimeoutCap caps timeoutInSeconds of one execution.
	ExecutionTimeoutCap time.Duration
	// Container is a CustomContainer pool's container (container.go); nil for the others.
	Container *ContainerSpec
}

// State is where a session is in its life (Azure's names).
type State string

const (
	StatePending   State = "Pending"   // sandbox starting or warming up
	StateReady     State = "Ready"     // in the ready queue, not bound to an identifier
	StateAllocated State = "Allocated" // bound to an identifier
	StateDeleting  State = "Deleting"  // being destroyed
	StateDestroyed State = "Destroyed"
)

// SessionInfo describes an allocated session.
type SessionInfo struct {
	Identifier string
	SandboxID  string
	State      State
	CreatedAt  time.Time // when the identifier was bound
	// LastAccessedAt is the end of the last request for the identifier (or its start, while
	// one is in flight).
	LastAccessedAt time.Time
	// ExpiresAt is when the session will be destroyed if no request comes (the earlier of
	// the cooldown and the maximum lifetime).
	ExpiresAt time.Time
}

// Counts are a pool's live numbers (Azure's PoolReadyPodCount, PoolPendingPodCount,
// PoolExecutingPodCount).
type Counts struct {
	Ready, Pending, Allocated int
	// Deleting counts sandboxes taken out of service whose destroy has not finished.
	Deleting int
	// Waiting counts identifiers waiting for a cold start.
	Waiting int
	// Outdated counts the ready and pending sandboxes (among Ready and Pending) made from
	// a template older than the pool's current one: a rolling update (Manager.Update)
	// is in progress while it is above 0.
	Outdated int
	// CreateFailures counts consecutive failed creates (0 after a success); while it is
	// above 0, creates back off exponentially. Manager.LastError returns the last one.
	CreateFailures int
}

// Lease is a session in use by one request. While any lease of a session is held the
// session does not expire; Release restarts its idle timer. Release is idempotent.
type Lease struct {
	Session SessionInfo
	// New is true when this request bound the identifier (a fresh session).
	New bool
	// Agent reaches the session's sandbox.
	Agent   *agentapi.Client
	release func()
}

// NewLease returns a lease whose Release calls release once. For the pool manager and for
// test doubles of the API's pool interface.
func NewLease(s SessionInfo, isNew bool, agent *agentapi.Client, release func()) *Lease {
	return &Lease{Session: s, New: isNew, Agent: agent, release: release}
}

// Release ends the lease.
func (l *Lease) Release() {
	if l.release != nil {
		r := l.release
		l.release = nil
		r()
	}
}

// Metadata describes what a pool's sessions run (Azure's GET metadata).
type Metadata struct {
	Runtimes []NameVersion
	// Packages preinstalled in the image.
	Packages []NameVersion
	Kernel   *agentapi.KernelInfo
	// CreatedAt and UpdatedAt of the pool.
	CreatedAt, UpdatedAt time.Time
}

// NameVersion is a name with a version.
type NameVersion struct {
	Name, Version string
}
