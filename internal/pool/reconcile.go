package pool

import "time"

// The pool's decisions are made here, by a pure function: given the pool's policy, the
// sandboxes as the owner goroutine knows them, the runtime operations in flight and the
// time, reconcile returns what to do next. It does no IO, reads no clock and changes
// nothing; the owner applies its actions to the state (state.apply) and runs the runtime
// calls they name in workers. This is what the table, property and script tests drive.

// policy is what reconcile decides by: the pool's Spec and the manager's knobs.
type policy struct {
	Spec Spec
	// CreateParallelism bounds creates in flight (Options.RefillParallelism).
	CreateParallelism int
	// DestroyParallelism bounds destroys in flight.
	DestroyParallelism int
	// ProbeParallelism bounds health checks in flight.
	ProbeParallelism int
	// HealthInterval is how often each live sandbox's agent is probed; 0 disables probes.
	HealthInterval time.Duration
	// ProbeRetry is how soon a failed probe is repeated.
	ProbeRetry time.Duration
	// DeadAfter consecutive failed probes make a sandbox dead. One refused connection is
	// not enough: a sandbox busy at 100% of its CPU quota may miss one probe's deadline,
	// and a false positive destroys a user's session.
	DeadAfter int
	// SurplusGrace: ready sandboxes above ReadySessionInstances (left by cold starts whose
	// callers gave up) are destroyed once no new identifier has been bound for this long.
	// Destroying them at once would waste the very sandbox a retrying client is about to
	// ask for again.
	SurplusGrace time.Duration
	// RefillDelay: while ready sandboxes remain and nobody waits for a cold start, no
	// create is issued before LastDemand + RefillDelay (Options.RefillDelay).
	RefillDelay time.Duration
}

// sbView is one sandbox as reconcile sees it.
type sbView struct {
	ID    string
	State State // Pending, Ready, Allocated or Deleting
	// Identifier is the session identifier the sandbox is bound to (Allocated).
	Identifier string
	// AllocatedAt is when the identifier was bound; LastAccess is the start of the last
	// request or the end of the last lease.
	AllocatedAt, LastAccess time.Time
	// Leases counts the requests using the session now; while any is held the cooldown
	// does not run.
	Leases int
	// NextProbe is when the agent is next health-checked; ProbeFailures counts
	// consecutive failed checks.
	NextProbe     time.Time
	ProbeFailures int
	// Probing and Destroying mark the runtime calls in flight for this sandbox.
	Probing, Destroying bool
	// DestroyAfter delays the retry of a failed destroy.
	DestroyAfter time.Time
	// Generation is the pool's template generation the sandbox was created from
	// (Manager.Update); a ready sandbox of an older one is replaced.
	Generation int
}

// observed is the pool as the owner knows it.
type observed struct {
	// Sandboxes are all the pool's sandboxes, in the order their creates were issued.
	Sandboxes []sbView
	// Waiting is the number of identifiers waiting for a sandbox (cold starts).
	Waiting int
	// CreateAfter is the end of the create back-off: no create is issued before it.
	CreateAfter time.Time
	// LastDemand is when a new identifier last asked for a session.
	LastDemand time.Time
	// Closing: the manager is shutting down; everything is destroyed, nothing created.
	Closing bool
	// Generation is the current template generation: new sandboxes belong to it.
	Generation int
}

// inFlight counts the runtime calls issued and not yet reported back. A create is counted
// before it is issued (its sandbox is Pending from that moment), so a reconcile that runs
// before the create returns never issues it twice.
type inFlight struct {
	Creates, Destroys, Probes int
}

type actionKind int

const (
	// actRetire takes a sandbox out of service now: its identifier is unbound and it is
	// Deleting. No IO; the destroy follows as actDestroy when a slot is free.
	actRetire actionKind = iota + 1
	// actCreate creates (and prepares) one new sandbox.
	actCreate
	// actDestroy destroys a Deleting sandbox.
	actDestroy
	// actProbe health-checks a sandbox's agent.
	actProbe
	// actWake asks to run reconcile again at At, when something falls due.
	actWake
)

// Reasons a sandbox is retired.
const (
	reasonCooldown = "cooldown"
	reasonMaxAlive = "max-alive"
	reasonDead     = "dead"
	reasonSurplus  = "surplus"
	reasonClosing  = "closing"
	reasonDeleted  = "deleted"
	// reasonUpdated: a ready sandbox of an older template, replaced by one of the current.
	reasonUpdated = "template-updated"
	// reasonRecovered and reasonDetached mark sessions handed from one process to the
	// next: adopted at Start, left running by Detach.
	reasonRecovered = "recovered"
	reasonDetached  = "detached"
)

type action struct {
	Kind   actionKind
	ID     string    // the sandbox (retire, destroy, probe)
	Reason string    // why (retire)
	At     time.Time // when (wake)
}

// reconcile returns the actions that bring the pool towards its policy at now:
// retirements first (expired, dead, outdated, surplus; everything when closing), then
// creates, then destroys, then health checks, and last the time it must run again, if
// any. It issues every create the state allows in one pass, counting the creates already
// in flight, so that applying its actions and calling it again yields no further creates.
//
// The bounds it keeps: creates in flight ≤ CreateParallelism; ready + pending + allocated
// ≤ MaxConcurrentSessions + ReadySessionInstances; no create before CreateAfter. (That
// allocated ≤ MaxConcurrentSessions is kept where identifiers are bound, in state.acquire.)
func reconcile(p policy, obs observed, fl inFlight, now time.Time) []action {
	var acts []action
	var wake time.Time
	later := func(t time.Time) {
		if t.After(now) && (wake.IsZero() || t.Before(wake)) {
			wake = t
		}
	}
	s := p.Spec
	retired := make([]bool, len(obs.Sandboxes))
	retire := func(i int, reason string) {
		retired[i] = true
		acts = append(acts, action{Kind: actRetire, ID: obs.Sandboxes[i].ID, Reason: reason})
	}

	// fresh and freshPending count the ready and pending sandboxes of the current template;
	// outdated are the ready ones of older templates, oldest first.
	var ready, pending, allocated, fresh, freshPending int
	var outdated []int
	for i, sb := range obs.Sandboxes {
		switch sb.State {
		case StatePending:
			pending++
			if sb.Generation == obs.Generation {
				freshPending++
			}
		case StateReady:
			switch {
			case obs.Closing:
				retire(i, reasonClosing)
			case p.dead(sb):
				retire(i, reasonDead)
			default:
				ready++
				if sb.Generation == obs.Generation {
					fresh++
				} else {
					outdated = append(outdated, i)
				}
			}
		case StateAllocated:
			reason, at := expiry(s, sb)
			switch {
			case obs.Closing:
				retire(i, reasonClosing)
			case p.dead(sb):
				retire(i, reasonDead)
			case !at.IsZero() && !at.After(now):
				retire(i, reason)
			default:
				allocated++
				if !at.IsZero() {
					later(at)
				}
			}
		}
	}

	// A template update rolls: ready sandboxes of an older template keep serving until
	// sandboxes of the current one take their place, so that the update costs no cold
	// start; at most ReadySessionInstances - fresh of them are kept.
	if !obs.Closing {
		keep := min(len(outdated), max(0, s.ReadySessionInstances-fresh))
		for _, i := range outdated[keep:] {
			retire(i, reasonUpdated)
			ready--
		}
	}

	// Surplus ready sandboxes, once demand has been quiet for SurplusGrace. The newest go
	// first; any ready sandbox would do.
	if surplus := ready - s.ReadySessionInstances; !obs.Closing && obs.Waiting == 0 && surplus > 0 {
		if at := obs.LastDemand.Add(p.SurplusGrace); at.After(now) {
			later(at)
		} else {
			for i := len(obs.Sandboxes) - 1; i >= 0 && surplus > 0; i-- {
				if obs.Sandboxes[i].State == StateReady && !retired[i] {
					retire(i, reasonSurplus)
					ready--
					surplus--
				}
			}
		}
	}

	if !obs.Closing {
		want := s.ReadySessionInstances + obs.Waiting - fresh - freshPending
		room := s.MaxConcurrentSessions + s.ReadySessionInstances - (ready + pending + allocated)
		slots := p.CreateParallelism - fl.Creates
		if n := min(want, room, slots); n > 0 {
			at := obs.CreateAfter
			if d := obs.LastDemand.Add(p.RefillDelay); p.RefillDelay > 0 && obs.Waiting == 0 && ready > 0 && d.After(at) {
				at = d
			}
			if at.After(now) {
				later(at)
			} else {
				for range n {
					acts = append(acts, action{Kind: actCreate})
				}
			}
		}
	}

	// A sandbox is destroyed once no health check of it is in flight (a probe has a short
	// timeout), so that every call in flight names a sandbox the state still has.
	slots := p.DestroyParallelism - fl.Destroys
	for i, sb := range obs.Sandboxes {
		if (sb.State != StateDeleting && !retired[i]) || sb.Destroying || sb.Probing {
			continue
		}
		if sb.DestroyAfter.After(now) {
			later(sb.DestroyAfter)
			continue
		}
		if slots > 0 {
			acts = append(acts, action{Kind: actDestroy, ID: sb.ID})
			slots--
		}
	}

	if p.HealthInterval > 0 && !obs.Closing {
		slots := p.ProbeParallelism - fl.Probes
		for i, sb := range obs.Sandboxes {
			if (sb.State != StateReady && sb.State != StateAllocated) || retired[i] || sb.Probing {
				continue
			}
			if sb.NextProbe.After(now) {
				later(sb.NextProbe)
				continue
			}
			if slots > 0 {
				acts = append(acts, action{Kind: actProbe, ID: sb.ID})
				slots--
			}
		}
	}

	if !wake.IsZero() {
		acts = append(acts, action{Kind: actWake, At: wake})
	}
	return acts
}

func (p policy) dead(sb sbView) bool {
	return p.DeadAfter > 0 && sb.ProbeFailures >= p.DeadAfter
}

// expiry returns when an allocated session expires and why; a zero time means never (a
// lease is held and there is no maximum lifetime, or the lifecycle has no cooldown).
func expiry(s Spec, sb sbView) (reason string, at time.Time) {
	if s.MaxAlivePeriod > 0 {
		reason, at = reasonMaxAlive, sb.AllocatedAt.Add(s.MaxAlivePeriod)
	}
	if s.LifecycleType != LifecycleOnContainerExit && sb.Leases == 0 {
		if c := sb.LastAccess.Add(s.CooldownPeriod); at.IsZero() || c.Before(at) {
			reason, at = reasonCooldown, c
		}
	}
	return reason, at
}
