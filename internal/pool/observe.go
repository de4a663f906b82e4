package pool

import "time"

// Observer is told what happens in a pool, for metrics (internal/metrics) and lifecycle
// events (internal/events). Every call names the pool, so one observer serves many
// pools. Calls must return quickly and must not call back into the Manager: Transition
// runs on the pool's owner goroutine, Phase on the worker that starts a sandbox, and
// Allocated on the goroutine of the request that bound the identifier.
type Observer interface {
	// Transition reports one change of a sandbox's state, in the order they happen.
	Transition(pool string, t Transition)
	// Phase reports the end of one phase of a sandbox's start: how long it took and its
	// error (nil on success). A failed phase is followed by a Transition to Destroyed
	// with ReasonCreateFailed.
	Phase(pool string, phase Phase, d time.Duration, err error)
	// Allocated reports that a request bound a new identifier to a sandbox, d after it
	// asked: from the ready queue (cold false) or after waiting for a start (cold true).
	Allocated(pool string, d time.Duration, cold bool)
}

// Phase is a step of a sandbox's start.
type Phase string

const (
	// PhaseCreate is the runtime's create: the sandbox runs and its agent answers.
	PhaseCreate Phase = "create"
	// PhasePrepare is Options.Prepare: the kernel warm-up of code-interpreter pools.
	PhasePrepare Phase = "prepare"
)

// Transition is one change of a sandbox's state.
type Transition struct {
	At        time.Time
	SandboxID string
	// Identifier is the session's identifier once the sandbox is bound to one.
	Identifier string
	// From is "" for a sandbox new to the pool (its create was issued, or it was adopted).
	From, To State
	// Reason says why, where it is not plain progress: one of the Reason constants.
	Reason string
	// Err is a failed create's or destroy's error.
	Err error
}

// Reasons of transitions. A sandbox retired (To == StateDeleting) has one of the first
// six; the others mark failures and hand-overs between processes.
const (
	ReasonCooldown = reasonCooldown // a session was idle for the cooldown period
	ReasonMaxAlive = reasonMaxAlive // a session reached its maximum lifetime
	ReasonDead     = reasonDead     // the sandbox's agent stopped answering health checks
	ReasonDeleted  = reasonDeleted  // Delete was called for the session
	ReasonSurplus  = reasonSurplus  // more sandboxes were ready than the pool keeps
	ReasonClosing  = reasonClosing  // the pool is shutting down
	// ReasonCreateFailed: Pending → Destroyed, with Err.
	ReasonCreateFailed = reasonCreateFailed
	// ReasonDestroyFailed: Deleting → Deleting, with Err; the destroy is retried. The last
	// failed attempt is Deleting → Destroyed with Err and no reason.
	ReasonDestroyFailed = reasonDestroyFailed
	// ReasonRecovered: "" → Allocated, a session adopted from an earlier process.
	ReasonRecovered = reasonRecovered
	// ReasonDetached: Allocated → Allocated, a session left running for the next process.
	ReasonDetached = reasonDetached
)

const (
	reasonCreateFailed  = "create failed"
	reasonDestroyFailed = "destroy failed"
)

func (t transition) export() Transition {
	return Transition{At: t.At, SandboxID: t.ID, Identifier: t.Identifier, From: t.From, To: t.To, Reason: t.Reason, Err: t.Err}
}

// Observers returns an Observer that tells each of obs in turn; nil entries are skipped.
func Observers(obs ...Observer) Observer {
	var out multiObserver
	for _, o := range obs {
		if o != nil {
			out = append(out, o)
		}
	}
	return out
}

type multiObserver []Observer

func (m multiObserver) Transition(pool string, t Transition) {
	for _, o := range m {
		o.Transition(pool, t)
	}
}

func (m multiObserver) Phase(pool string, phase Phase, d time.Duration, err error) {
	for _, o := range m {
		o.Phase(pool, phase, d, err)
	}
}

func (m multiObserver) Allocated(pool string, d time.Duration, cold bool) {
	for _, o := range m {
		o.Allocated(pool, d, cold)
	}
}
