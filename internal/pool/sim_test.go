package pool

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/sessiond/sessiond/internal/errkind"
)

// sim drives the pure core (state + reconcile) the way the manager's owner goroutine does,
// without goroutines, runtime or clock: runtime calls stay in flight until the test
// completes them, and time moves only by advance, which stops at every wake-up reconcile
// asked for (as the manager's timer would fire). Property tests and script tests use it.
type sim struct {
	pol   policy
	st    *state
	start time.Time
	now   time.Time
	ids   int
	// ops are the runtime calls in flight, in issue order.
	ops  []simOp
	wake time.Time
	// leases are the leases held, as sandbox IDs (one entry per lease).
	leases []string
	// requests counts the requests waiting per identifier.
	requests map[string]int
	// everBound remembers every binding, to check that none ever changes.
	everBound map[string]string
	// out collects what happened, for scripts.
	out []string
	// inUse and total are allocated + waiting and ready + pending + allocated after the
	// last event: above the caps (which an update may lower) they must not grow.
	inUse, total int
	// updated is when the last update was made.
	updated time.Time
}

type simOp struct {
	kind actionKind
	id   string
}

func newSim(p policy) *sim {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	return &sim{pol: p, st: newState(p), start: start, now: start,
		requests: map[string]int{}, everBound: map[string]string{}}
}

func (s *sim) printf(format string, args ...any) { s.out = append(s.out, fmt.Sprintf(format, args...)) }

func (s *sim) take() []string {
	out := s.out
	s.out = nil
	return out
}

// step runs reconcile and applies its actions, as manager.step does, checking on the way
// that expiries happen exactly when due.
func (s *sim) step() error {
	acts := reconcile(s.pol, s.st.observe(nil), s.st.fl, s.now)
	prevWake := s.wake
	s.wake = time.Time{}
	var errs []error
	for _, a := range acts {
		switch a.Kind {
		case actWake:
			s.wake = a.At
			if !a.At.Equal(prevWake) {
				s.printf("wake at %s", s.rel(a.At))
			}
			continue
		case actRetire:
			b := s.st.byID[a.ID]
			switch a.Reason {
			case reasonCooldown:
				if exp := b.LastAccess.Add(s.pol.Spec.CooldownPeriod); !s.due(exp) || b.Leases != 0 {
					errs = append(errs, fmt.Errorf("%s retired for cooldown at %s, due at %s with %d leases", b.ID, s.rel(s.now), s.rel(exp), b.Leases))
				}
			case reasonUpdated:
				if b.State != StateReady || b.Generation == s.st.gen {
					errs = append(errs, fmt.Errorf("%s (%s, generation %d) retired as outdated in generation %d", b.ID, b.State, b.Generation, s.st.gen))
				}
			case reasonMaxAlive:
				if exp := b.AllocatedAt.Add(s.pol.Spec.MaxAlivePeriod); !s.due(exp) {
					errs = append(errs, fmt.Errorf("%s retired for max-alive at %s, due at %s", b.ID, s.rel(s.now), s.rel(exp)))
				}
			}
			s.st.apply(a, "", s.now)
			s.printf("retire %s (%s)", a.ID, a.Reason)
		case actCreate:
			// Creates in flight count: a create is issued only if the ready and pending
			// sandboxes do not already cover the ready target and the waiting identifiers.
			// Only sandboxes of the current template count (an update replaces the others).
			if c := s.st.counts(); c.Ready+c.Pending-c.Outdated >= s.pol.Spec.ReadySessionInstances+c.Waiting {
				errs = append(errs, fmt.Errorf("create issued with %d ready and %d pending (%d outdated) for a target of %d and %d waiting", c.Ready, c.Pending, c.Outdated, s.pol.Spec.ReadySessionInstances, c.Waiting))
			}
			s.ids++
			id := fmt.Sprintf("sb-%d", s.ids)
			s.st.apply(a, id, s.now)
			s.ops = append(s.ops, simOp{actCreate, id})
			s.printf("create %s", id)
		case actDestroy:
			s.st.apply(a, "", s.now)
			s.ops = append(s.ops, simOp{actDestroy, a.ID})
			s.printf("destroy %s", a.ID)
		case actProbe:
			s.st.apply(a, "", s.now)
			s.ops = append(s.ops, simOp{actProbe, a.ID})
			s.printf("probe %s", a.ID)
		}
	}
	s.drain()
	return errors.Join(errs...)
}

// drain handles the state's outboxes as manager.flush does.
func (s *sim) drain() {
	for _, identifier := range s.st.bound {
		b := s.st.byIdent[identifier]
		n := s.requests[identifier]
		delete(s.requests, identifier)
		for range n {
			s.leases = append(s.leases, b.ID)
		}
		s.printf("%s: bound to %s (%d waiting)", identifier, b.ID, n)
	}
	for _, f := range s.st.failed {
		delete(s.requests, f.identifier)
		s.printf("%s: failed: %v", f.identifier, f.err)
	}
	for _, g := range s.st.gone {
		if g.err != nil {
			s.printf("%s: destroy failed: %v", g.id, g.err)
		}
	}
	for _, t := range s.st.log {
		if t.To == StateDestroyed {
			s.printf("%s: destroyed", t.ID)
		}
	}
	s.st.bound, s.st.failed, s.st.gone, s.st.log = nil, nil, nil, nil
}

func (s *sim) rel(t time.Time) string { return t.Sub(s.start).String() }

func (s *sim) acquire(identifier string, create bool) error {
	b, isNew, wait, err := s.st.acquire(identifier, create, s.now)
	switch {
	case err != nil:
		s.printf("%s: %s: %v", identifier, errKindString(err), err)
	case wait:
		s.requests[identifier]++
		s.printf("%s: waiting", identifier)
	default:
		s.leases = append(s.leases, b.ID)
		if isNew {
			s.printf("%s: bound to %s", identifier, b.ID)
		} else {
			s.printf("%s: existing %s", identifier, b.ID)
		}
	}
	return s.step()
}

// release ends one lease on identifier's current session (or of sandbox id).
func (s *sim) release(id string) error {
	if b := s.st.byIdent[id]; b != nil {
		id = b.ID
	}
	i := slices.Index(s.leases, id)
	if i < 0 {
		return fmt.Errorf("no lease on %s", id)
	}
	s.leases = slices.Delete(s.leases, i, i+1)
	s.st.release(id, s.now)
	return s.step()
}

func (s *sim) withdraw(identifier string) error {
	if s.requests[identifier] == 0 {
		return fmt.Errorf("%s is not waiting", identifier)
	}
	if s.requests[identifier]--; s.requests[identifier] == 0 {
		delete(s.requests, identifier)
	}
	if !s.st.withdraw(identifier) {
		return fmt.Errorf("state had no request waiting for %s", identifier)
	}
	return s.step()
}

func (s *sim) remove(identifier string) error {
	id, err := s.st.remove(identifier, s.now)
	if err != nil {
		s.printf("%s: %s: %v", identifier, errKindString(err), err)
	} else {
		s.printf("%s: deleting %s", identifier, id)
	}
	return s.step()
}

// complete finishes the in-flight call on id of the given kind, with err.
func (s *sim) complete(kind actionKind, id string, err error) error {
	i := slices.Index(s.ops, simOp{kind, id})
	if i < 0 {
		return fmt.Errorf("no %v in flight for %s", kind, id)
	}
	s.ops = slices.Delete(s.ops, i, i+1)
	switch kind {
	case actCreate:
		s.st.created(id, err, s.now)
	case actDestroy:
		s.st.destroyed(id, err, s.now)
	case actProbe:
		s.st.probed(id, err, s.now)
	}
	return s.step()
}

// advance moves time by d, stopping at each wake-up on the way.
func (s *sim) advance(d time.Duration) error {
	target := s.now.Add(d)
	var errs []error
	for !s.wake.IsZero() && !s.wake.After(target) {
		s.now = s.wake
		s.printf("at %s:", s.rel(s.now))
		errs = append(errs, s.step())
	}
	if !s.now.Equal(target) {
		s.now = target
		errs = append(errs, s.step())
	}
	return errors.Join(errs...)
}

// update changes the pool's policy, as Manager.Update does; template starts a new
// template generation.
func (s *sim) update(p policy, template bool) error {
	s.pol = p
	s.st.update(p, template)
	s.updated = s.now
	return s.step()
}

// due reports whether an expiry at exp is on time now: exactly at exp, or late when an
// update shortened the period now.
func (s *sim) due(exp time.Time) bool {
	return exp.Equal(s.now) || (exp.Before(s.now) && s.now.Equal(s.updated))
}

func (s *sim) close() error {
	s.st.close()
	return s.step()
}

// check verifies the invariants of a pool, after any event.
func (s *sim) check() error {
	if err := s.st.check(); err != nil {
		return err
	}
	spec := s.pol.Spec
	c := s.st.counts()
	// An update may lower the caps below what is in use; then the numbers must not grow
	// until they are under the caps again. Without updates this is the plain bound.
	inUse, total := c.Allocated+c.Waiting, c.Ready+c.Pending+c.Allocated
	prevInUse, prevTotal := s.inUse, s.total
	s.inUse, s.total = inUse, total
	switch {
	case inUse > spec.MaxConcurrentSessions && inUse > prevInUse:
		return fmt.Errorf("%d allocated and %d waiting, above the cap of %d", c.Allocated, c.Waiting, spec.MaxConcurrentSessions)
	case total > spec.MaxConcurrentSessions+spec.ReadySessionInstances && total > prevTotal:
		return fmt.Errorf("%d ready, %d pending, %d allocated: above %d+%d", c.Ready, c.Pending, c.Allocated, spec.MaxConcurrentSessions, spec.ReadySessionInstances)
	case s.st.fl.Creates > s.pol.CreateParallelism || s.st.fl.Destroys > s.pol.DestroyParallelism || s.st.fl.Probes > s.pol.ProbeParallelism:
		return fmt.Errorf("in flight %+v above the bounds", s.st.fl)
	case len(s.ops) != s.st.fl.Creates+s.st.fl.Destroys+s.st.fl.Probes:
		return fmt.Errorf("%d calls in flight, state counts %+v", len(s.ops), s.st.fl)
	}
	seen := map[string]string{}
	for _, b := range s.st.boxes {
		if b.bound {
			if prev, ok := s.everBound[b.ID]; ok && prev != b.Identifier {
				return fmt.Errorf("sandbox %s bound to %q, earlier to %q", b.ID, b.Identifier, prev)
			}
			s.everBound[b.ID] = b.Identifier
		}
		if b.State != StateAllocated {
			continue
		}
		if other, ok := seen[b.Identifier]; ok {
			return fmt.Errorf("identifier %q maps to %s and %s", b.Identifier, other, b.ID)
		}
		seen[b.Identifier] = b.ID
		if _, at := expiry(spec, b.sbView); !s.st.closing && !at.IsZero() && !at.After(s.now) {
			return fmt.Errorf("session %s (%s) expired at %s, still allocated at %s", b.Identifier, b.ID, s.rel(at), s.rel(s.now))
		}
	}
	for id, n := range s.requests {
		if w := s.st.waiterFor(id); w == nil || w.n != n {
			return fmt.Errorf("%d requests wait for %q, state says %+v", n, id, w)
		}
	}
	return nil
}

func errKindString(err error) string {
	return strings.ReplaceAll(errkind.Of(err).String(), "_", " ")
}
