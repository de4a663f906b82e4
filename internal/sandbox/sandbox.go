// Package sandbox is the contract between the control plane and sandbox runtimes: the
// Runtime interface, the Spec a sandbox is created from, what a runtime reports about its
// sandboxes, and the optional abilities a runtime may have. It holds no implementation;
// runtimes live in subpackages (oci) and are registered by cmd/sessiond.
//
// A sandbox is an isolated set of processes whose init is sessiond-agent. Everything above
// the runtime talks to a sandbox only through its agent (internal/agentapi), so a runtime's
// whole job is to start a sandbox, hand out a connection to its agent, and remove it.
package sandbox

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
)

// Runtime creates, adopts and destroys sandboxes. Implementations are safe for concurrent
// use; operations on different IDs proceed in parallel.
type Runtime interface {
	// Name is the runtime's registered name ("runsc", "runc", "fake").
	Name() string

	// Capabilities reports what this runtime can do on this machine.
	Capabilities() Capabilities

	// Create starts a sandbox from spec and returns once its agent answers a health check,
	// or fails when spec.StartTimeout (default DefaultStartTimeout) passes first. A failed
	// Create leaves nothing behind. Errors: Invalid for a bad spec, AlreadyExists for a
	// taken ID, Timeout, Unavailable when the runtime binary is missing.
	Create(ctx context.Context, spec Spec) (Info, error)

	// Attach adopts a sandbox created by this or an earlier process: it checks that the
	// sandbox's processes are alive and its agent answers. NotFound if there is no record;
	// Unavailable if the record exists but the sandbox cannot be adopted (the caller then
	// destroys it).
	Attach(ctx context.Context, id string) (Info, error)

	// List returns every sandbox this runtime has a record of, including ones left by an
	// earlier process and ones half created or half destroyed. It does not check health.
	List(ctx context.Context) ([]Info, error)

	// Destroy kills the sandbox's processes and removes its mounts, cgroups, runtime state
	// and directories. It is idempotent: destroying an unknown or already destroyed ID
	// returns nil. It finishes its cleanup even if ctx is cancelled part way.
	Destroy(ctx context.Context, id string) error

	// Stats reports the resource use of a running sandbox. NotFound if there is none.
	Stats(ctx context.Context, id string) (Stats, error)

	// Agent returns a client for the sandbox's agent. It does not check that the sandbox
	// exists; calls through the client fail with Unavailable if it does not.
	Agent(id string) *agentapi.Client
}

// Spec describes a sandbox to create.
type Spec struct {
	// ID names the sandbox: 1–64 characters of [a-z0-9-], starting with a letter or digit.
	// Empty means the runtime generates one.
	ID string
	// Image is the image reference the root filesystem came from (recorded, not resolved).
	Image string
	// RootFS is the absolute path of the unpacked image root filesystem. It is shared
	// read-only; each sandbox gets its own writable layer above it.
	RootFS string
	// Env is added to the environment of the agent and of everything it starts.
	Env []string
	// Command, if set, is the sandbox's main process, started and supervised by the agent
	// as the unprivileged user; its console output is kept (agentapi.PathLogs).
	Command []string
	// WorkingDir of Command; default agentapi.DataDir.
	WorkingDir string
	// User, if set, is the identity Command runs as, instead of the unprivileged user
	// (agentapi.UserUID:UserGID): a custom container image's configured user. 0:0 is the
	// sandbox's root, which holds no privilege on the host (runc maps it to the sandbox's
	// own host uid range; under gVisor it is root of the sentry's kernel) and keeps only
	// the agent's reduced capability set. Exec and the files API stay with the
	// unprivileged user.
	User *User
	// Kernel, if set, makes the agent start and supervise a Jupyter kernel of that name
	// ("python3") for code-interpreter sessions.
	Kernel string
	// Limits bound the sandbox's resources; zero fields take the defaults in DefaultLimits.
	Limits Limits
	// Labels are stored with the sandbox and returned by List (pool name, session, ...).
	Labels map[string]string
	// StartTimeout bounds Create; 0 means DefaultStartTimeout.
	StartTimeout time.Duration
	// Background starts the sandbox with a low CPU weight, so that warming it up yields
	// to sandboxes serving sessions, until Promote (where the runtime is a Promoter).
	Background bool
	// Network is the sandbox's network; the zero value is none (loopback only).
	Network Network
}

// Network says what a sandbox may reach over IP (pool setting
// sessionNetworkConfiguration.status, plus sessiond's allow-lists). Whatever it says, the
// host itself, the control plane, other sandboxes, private, link-local and metadata
// addresses stay unreachable; the rules are enforced on the host, outside the sandbox.
type Network struct {
	// Egress (EgressEnabled) gives the sandbox outbound IPv4 through NAT on the host and
	// DNS through the host's forwarder. False (EgressDisabled): loopback only.
	Egress bool
	// AllowCIDRs, if set, limit egress to these IPv4 networks (and AllowDomains).
	AllowCIDRs []netip.Prefix
	// AllowDomains, if set, limit egress to these names ("example.com", "*.example.com":
	// any name below) and the addresses they resolve to (and AllowCIDRs); other names do
	// not resolve.
	AllowDomains []string
}

// User is a numeric identity inside a sandbox.
type User struct {
	UID, GID int
}

// Promoter is an optional Runtime ability: Promote gives a sandbox created with
// Spec.Background the normal CPU weight, once it serves a session. It is fast (no process
// is started) and idempotent; NotFound for an unknown sandbox.
type Promoter interface {
	Promote(id string) error
}

// DefaultStartTimeout bounds Create when Spec.StartTimeout is zero. gVisor on a loaded
// 2-core machine can take a few seconds to boot; runc well under one.
const DefaultStartTimeout = 30 * time.Second

// Limits bound one sandbox. Every field has a default (DefaultLimits).
type Limits struct {
	// MemoryBytes is the hard memory limit of all the sandbox's processes (and, for runc,
	// its memory-backed writable storage). The OOM killer acts inside the sandbox only.
	MemoryBytes int64
	// CPUMillis is the CPU quota in thousandths of a core (1000 = one full core).
	CPUMillis int64
	// Pids caps the number of processes and threads.
	Pids int64
	// DiskBytes caps the writable layer, /mnt/data, /tmp and the home directory together.
	DiskBytes int64
	// OpenFiles is RLIMIT_NOFILE for processes in the sandbox.
	OpenFiles uint64
}

// DefaultLimits are the limits of a sandbox whose Spec leaves them zero.
var DefaultLimits = Limits{
	MemoryBytes: 1 << 30, // 1 GiB
	CPUMillis:   1000,    // one core
	Pids:        512,
	DiskBytes:   1 << 30, // 1 GiB
	OpenFiles:   4096,
}

// WithDefaults returns l with zero fields replaced by DefaultLimits.
func (l Limits) WithDefaults() Limits {
	d := DefaultLimits
	if l.MemoryBytes > 0 {
		d.MemoryBytes = l.MemoryBytes
	}
	if l.CPUMillis > 0 {
		d.CPUMillis = l.CPUMillis
	}
	if l.Pids > 0 {
		d.Pids = l.Pids
	}
	if l.DiskBytes > 0 {
		d.DiskBytes = l.DiskBytes
	}
	if l.OpenFiles > 0 {
		d.OpenFiles = l.OpenFiles
	}
	return d
}

// State is where a sandbox is in its life as its runtime last recorded it.
type State string

const (
	StateCreating   State = "creating"
	StateRunning    State = "running"
	StateDestroying State = "destroying"
	// StateUnknown: the record exists but the runtime could not tell (List does not probe).
	StateUnknown State = "unknown"
)

// Info describes a sandbox.
type Info struct {
	ID      string
	Runtime string
	Image   string
	State   State
	Created time.Time
	Labels  map[string]string
	Limits  Limits
	// PID is the host pid of the sandbox's init (runc) or sandbox process (runsc), if known.
	PID int
}

// Stats is a sandbox's resource use.
type Stats struct {
	// MemoryBytes is the cgroup's charged memory (includes page cache and tmpfs).
	MemoryBytes int64
	// PSSBytes is the proportional set size summed over all the sandbox's host processes
	// (for runsc, the sentry and the gofer).
	PSSBytes int64
	// Processes is the number of host processes belonging to the sandbox.
	Processes int
	// CPUTime is the cumulative CPU time of the sandbox's cgroup.
	CPUTime time.Duration
}

// Capabilities reports a runtime's abilities on this machine.
type Capabilities struct {
	// Available is false when the runtime cannot run here; Reason says why.
	Available bool
	Reason    string
	// Isolation names the boundary: "gvisor" (user-space kernel) or "namespaces".
	Isolation string
	// UserNamespace: root inside maps to an unprivileged host user.
	UserNamespace bool
	// Seccomp: a default-deny syscall filter is applied to the sandbox.
	Seccomp bool
}

// KernelPreloadBeside returns the kernel preload library (agentapi.KernelPreloadName) in
// the directory of agentBinary, where `make build` puts it, or "" if there is none there.
// Runtimes give it to code-interpreter sandboxes (agent.Config.KernelPreload).
func KernelPreloadBeside(agentBinary string) string {
	p := filepath.Join(filepath.Dir(agentBinary), agentapi.KernelPreloadName)
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}
