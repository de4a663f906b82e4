package pool

import (
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/sessiond/sessiond/internal/errkind"
)

// state is one pool's sessions and sandboxes: the ready queue, identifier → session, the
// identifiers waiting for a cold start, the runtime calls in flight and the create
// back-off. It is the pure core's memory: its methods are the events that change it
// (requests, results of runtime calls, actions of reconcile) and do no IO and read no
// clock, so the same code runs under the manager's owner goroutine, the property tests
// and the script tests.
//
// state is thread-unsafe: exactly one goroutine owns it.
type state struct {
	pol policy

	// boxes are the pool's sandboxes in the order their creates were issued; byID,
	// byIdent and ready index them.
	boxes   []*box
	byID    map[string]*box
	byIdent map[string]*box // Allocated boxes by identifier
	ready   []*box          // Ready boxes, oldest first: the ready queue
	waiting []*waiter       // identifiers waiting for a sandbox, oldest first

	fl          inFlight
	failures    int       // consecutive failed creates
	createAfter time.Time // back-off: no create before this
	lastErr     error     // the last create's error, nil after a success
	lastDemand  time.Time // the last time a new identifier asked for a session
	closing     bool
	// gen is the template generation new sandboxes are created from (update.go).
	gen int

	// Outboxes, drained by the owner after each event.

	// bound lists identifiers that were waiting and are now bound.
	bound []string
	// failed lists waiting identifiers whose wait failed, with the error to return.
	failed []waitFailure
	// gone lists sandboxes whose destroy finished (or was given up), for Delete.
	gone []destroyResult
	// log lists state changes; the owner logs them, and later feeds metrics and the
	// session store from them.
	log []transition
}

// box is one sandbox of the pool.
type box struct {
	sbView
	// bound is set once the sandbox is bound to an identifier; it is never bound again.
	bound bool
	// destroyAttempts counts failed destroys.
	destroyAttempts int
}

type waiter struct {
	identifier string
	// n counts the requests waiting for this identifier.
	n int
}

type waitFailure struct {
	identifier string
	err        error
}

type destroyResult struct {
	id  string
	err error
}

// transition is one change of a sandbox's state.
type transition struct {
	At         time.Time
	ID         string
	Identifier string
	From, To   State
	Reason     string
	Err        error
}

// Back-off of failed creates: base·2^(n-1), at most maxCreateBackoff.
const (
	baseCreateBackoff = time.Second
	maxCreateBackoff  = 30 * time.Second
)

// A failed destroy is retried after destroyRetry, at most maxDestroyAttempts times in
// all; after that the sandbox is forgotten (and reaped by the next Start).
const (
	destroyRetry       = 5 * time.Second
	maxDestroyAttempts = 5
)

func newState(p policy) *state {
	return &state{pol: p, byID: map[string]*box{}, byIdent: map[string]*box{}}
}

func (st *state) logf(now time.Time, b *box, from State, reason string, err error) {
	st.log = append(st.log, transition{At: now, ID: b.ID, Identifier: b.Identifier, From: from, To: b.State, Reason: reason, Err: err})
}

// acquire binds identifier to a session. An existing session is touched and returned.
// Otherwise, if create, a ready sandbox is bound (isNew); with none ready the identifier
// waits for a cold start (wait) and the caller is answered through the bound or failed
// outbox. Errors: NotFound (!create and no session), LimitExceeded (at the cap),
// Unavailable (closing).
//
// Preconditions: identifier != "".
func (st *state) acquire(identifier string, create bool, now time.Time) (b *box, isNew, wait bool, err error) {
	if st.closing {
		return nil, false, false, st.errClosed()
	}
	if b := st.byIdent[identifier]; b != nil {
		b.Leases++
		b.LastAccess = now
		return b, false, false, nil
	}
	if !create {
		return nil, false, false, errkind.New(errkind.NotFound, "session %q not found in session pool %s", identifier, st.pol.Spec.Name)
	}
	if w := st.waiterFor(identifier); w != nil {
		w.n++
		return nil, false, true, nil
	}
	if len(st.byIdent)+len(st.waiting) >= st.pol.Spec.MaxConcurrentSessions {
		return nil, false, false, errkind.New(errkind.LimitExceeded,
			"session pool %s has reached its maximum of %d concurrent sessions; retry later", st.pol.Spec.Name, st.pol.Spec.MaxConcurrentSessions)
	}
	st.lastDemand = now
	if len(st.ready) > 0 {
		b := st.popReady()
		st.bind(b, identifier, 1, now)
		return b, true, false, nil
	}
	st.waiting = append(st.waiting, &waiter{identifier: identifier, n: 1})
	return nil, false, true, nil
}

func (st *state) waiterFor(identifier string) *waiter {
	for _, w := range st.waiting {
		if w.identifier == identifier {
			return w
		}
	}
	return nil
}

// withdraw takes back one request waiting for identifier (its caller gave up). It
// reports false if none was waiting (the wait was already answered).
func (st *state) withdraw(identifier string) bool {
	for i, w := range st.waiting {
		if w.identifier == identifier {
			if w.n--; w.n == 0 {
				st.waiting = slices.Delete(st.waiting, i, i+1)
			}
			return true
		}
	}
	return false
}

// popReady takes the oldest ready sandbox of the current template, or, while an update
// rolls and none is ready yet, the oldest ready one.
func (st *state) popReady() *box {
	i := slices.IndexFunc(st.ready, func(b *box) bool { return b.Generation == st.gen })
	if i < 0 {
		i = 0
	}
	b := st.ready[i]
	st.ready = slices.Delete(st.ready, i, i+1)
	return b
}

func (st *state) bind(b *box, identifier string, leases int, now time.Time) {
	b.State, b.Identifier, b.bound = StateAllocated, identifier, true
	b.Leases, b.AllocatedAt, b.LastAccess = leases, now, now
	st.byIdent[identifier] = b
	st.logf(now, b, StateReady, "", nil)
}

// assign binds ready sandboxes to waiting identifiers, oldest first.
func (st *state) assign(now time.Time) {
	for len(st.waiting) > 0 && len(st.ready) > 0 {
		w := st.waiting[0]
		st.waiting = slices.Delete(st.waiting, 0, 1)
		st.bind(st.popReady(), w.identifier, w.n, now)
		st.bound = append(st.bound, w.identifier)
	}
}

// release ends one lease of sandbox id: the cooldown restarts from now. It returns the
// session, or nil if it is gone (its leases are then ignored).
func (st *state) release(id string, now time.Time) *box {
	b := st.byID[id]
	if b == nil || b.State != StateAllocated || b.Leases == 0 {
		return nil
	}
	b.Leases--
	b.LastAccess = now
	return b
}

// remove retires identifier's session now (Delete) and returns its sandbox ID; the
// identifier is free at once. NotFound if it has no session.
func (st *state) remove(identifier string, now time.Time) (string, error) {
	b := st.byIdent[identifier]
	if b == nil {
		return "", errkind.New(errkind.NotFound, "session %q not found in session pool %s", identifier, st.pol.Spec.Name)
	}
	st.retire(b, reasonDeleted, now)
	return b.ID, nil
}

// retire takes b out of service: unbound, out of the ready queue, Deleting.
func (st *state) retire(b *box, reason string, now time.Time) {
	from := b.State
	switch from {
	case StateAllocated:
		delete(st.byIdent, b.Identifier)
	case StateReady:
		if i := slices.Index(st.ready, b); i >= 0 {
			st.ready = slices.Delete(st.ready, i, i+1)
		}
	default:
		return
	}
	b.State = StateDeleting
	st.logf(now, b, from, reason, nil)
}

// apply carries out one action of reconcile on the state; for actCreate, id names the
// new sandbox. The caller then issues the runtime call (create, destroy, probe) or arms
// its timer (wake).
func (st *state) apply(a action, id string, now time.Time) {
	switch a.Kind {
	case actRetire:
		if b := st.byID[a.ID]; b != nil {
			st.retire(b, a.Reason, now)
		}
	case actCreate:
		// Counted in flight before the create is issued.
		b := &box{sbView: sbView{ID: id, State: StatePending, Generation: st.gen}}
		st.boxes = append(st.boxes, b)
		st.byID[id] = b
		st.fl.Creates++
		st.logf(now, b, "", "", nil)
	case actDestroy:
		if b := st.byID[a.ID]; b != nil && b.State == StateDeleting && !b.Destroying {
			b.Destroying = true
			st.fl.Destroys++
		}
	case actProbe:
		if b := st.byID[a.ID]; b != nil && !b.Probing {
			b.Probing = true
			st.fl.Probes++
		}
	}
}

// created records the end of a create (with its preparation). A failure backs off
// further creates and fails the waiting identifiers that no create in flight can serve.
func (st *state) created(id string, err error, now time.Time) {
	b := st.byID[id]
	if b == nil || b.State != StatePending {
		return
	}
	st.fl.Creates--
	if err != nil {
		st.drop(b)
		b.State = StateDestroyed
		st.logf(now, b, StatePending, reasonCreateFailed, err)
		if st.closing {
			return
		}
		st.failures++
		st.lastErr = err
		st.createAfter = now.Add(createBackoff(st.failures))
		for len(st.waiting) > st.fl.Creates {
			w := st.waiting[len(st.waiting)-1]
			st.waiting = st.waiting[:len(st.waiting)-1]
			st.failed = append(st.failed, waitFailure{w.identifier, &errkind.Error{Kind: errkind.Unavailable, Public: true,
				Msg: fmt.Sprintf("no session could be started in session pool %s; retry later", st.pol.Spec.Name), Err: err}})
		}
		return
	}
	st.failures, st.lastErr, st.createAfter = 0, nil, time.Time{}
	b.State = StateReady
	b.NextProbe = now.Add(st.pol.HealthInterval)
	st.ready = append(st.ready, b)
	st.logf(now, b, StatePending, "", nil)
	st.assign(now)
}

func createBackoff(failures int) time.Duration {
	d := baseCreateBackoff
	for i := 1; i < failures && d < maxCreateBackoff; i++ {
		d *= 2
	}
	return min(d, maxCreateBackoff)
}

// destroyed records the end of a destroy. A failed destroy is retried later, up to
// maxDestroyAttempts.
func (st *state) destroyed(id string, err error, now time.Time) {
	b := st.byID[id]
	if b == nil || !b.Destroying {
		return
	}
	b.Destroying = false
	st.fl.Destroys--
	if err != nil {
		b.destroyAttempts++
		if b.destroyAttempts < maxDestroyAttempts {
			b.DestroyAfter = now.Add(destroyRetry)
			st.logf(now, b, StateDeleting, reasonDestroyFailed, err)
			st.gone = append(st.gone, destroyResult{id, err})
			return
		}
	}
	st.drop(b)
	b.State = StateDestroyed
	st.logf(now, b, StateDeleting, "", err)
	st.gone = append(st.gone, destroyResult{id, err})
}

// probed records a health check's result. Results for sandboxes no longer in service
// are ignored.
func (st *state) probed(id string, err error, now time.Time) {
	b := st.byID[id]
	if b == nil || !b.Probing {
		return
	}
	b.Probing = false
	st.fl.Probes--
	if b.State != StateReady && b.State != StateAllocated {
		return
	}
	if err != nil {
		b.ProbeFailures++
		b.NextProbe = now.Add(st.pol.ProbeRetry)
		return
	}
	b.ProbeFailures = 0
	b.NextProbe = now.Add(st.pol.HealthInterval)
}

// drop forgets b.
func (st *state) drop(b *box) {
	delete(st.byID, b.ID)
	if i := slices.Index(st.boxes, b); i >= 0 {
		st.boxes = slices.Delete(st.boxes, i, i+1)
	}
	if i := slices.Index(st.ready, b); i >= 0 {
		st.ready = slices.Delete(st.ready, i, i+1)
	}
	if b.State == StateAllocated && st.byIdent[b.Identifier] == b {
		delete(st.byIdent, b.Identifier)
	}
}

// adopt adds sandbox id, which an earlier process bound to identifier, as an allocated
// session (recovery after a restart). Its cooldown and lifetime run on from the recorded
// times; it is health-checked at once.
//
// Preconditions: id and identifier are new to the state.
func (st *state) adopt(id, identifier string, allocatedAt, lastAccess, now time.Time) {
	b := &box{sbView: sbView{ID: id, State: StateAllocated, Identifier: identifier,
		AllocatedAt: allocatedAt, LastAccess: lastAccess, NextProbe: now}, bound: true}
	st.boxes = append(st.boxes, b)
	st.byID[id] = b
	st.byIdent[identifier] = b
	st.logf(now, b, "", reasonRecovered, nil)
}

// detach forgets the allocated sessions without destroying them, for a shutdown that
// leaves them running for the next process to adopt. Their leases end unanswered; a
// health check in flight is no longer waited for.
func (st *state) detach(now time.Time) {
	for _, b := range slices.Clone(st.boxes) {
		if b.State != StateAllocated {
			continue
		}
		if b.Probing {
			b.Probing = false
			st.fl.Probes--
		}
		st.drop(b)
		st.log = append(st.log, transition{At: now, ID: b.ID, Identifier: b.Identifier, From: StateAllocated, To: StateAllocated, Reason: reasonDetached})
	}
}

// close starts the shutdown: waiting requests fail, and from now on reconcile destroys
// everything and creates nothing.
func (st *state) close() {
	if st.closing {
		return
	}
	st.closing = true
	for _, w := range st.waiting {
		st.failed = append(st.failed, waitFailure{w.identifier, st.errClosed()})
	}
	st.waiting = nil
}

// done reports whether a closing pool has nothing left: no sandbox, no call in flight.
func (st *state) done() bool {
	return st.closing && len(st.boxes) == 0 && st.fl == (inFlight{})
}

func (st *state) errClosed() error {
	return errkind.New(errkind.Unavailable, "session pool %s is shutting down", st.pol.Spec.Name)
}

// observe returns the state as reconcile sees it, reusing buf.
func (st *state) observe(buf []sbView) observed {
	buf = buf[:0]
	for _, b := range st.boxes {
		buf = append(buf, b.sbView)
	}
	return observed{Sandboxes: buf, Waiting: len(st.waiting), CreateAfter: st.createAfter,
		LastDemand: st.lastDemand, Closing: st.closing, Generation: st.gen}
}

func (st *state) counts() Counts {
	var c Counts
	for _, b := range st.boxes {
		switch b.State {
		case StatePending:
			c.Pending++
		case StateReady:
			c.Ready++
		case StateAllocated:
			c.Allocated++
		case StateDeleting:
			c.Deleting++
		}
		if (b.State == StatePending || b.State == StateReady) && b.Generation != st.gen {
			c.Outdated++
		}
	}
	c.Waiting = len(st.waiting)
	c.CreateFailures = st.failures
	return c
}

// info describes b's session.
func (st *state) info(b *box) SessionInfo {
	v := b.sbView
	v.Leases = 0 // ExpiresAt: when it expires if no further request comes
	_, exp := expiry(st.pol.Spec, v)
	return SessionInfo{Identifier: b.Identifier, SandboxID: b.ID, State: b.State,
		CreatedAt: b.AllocatedAt, LastAccessedAt: b.LastAccess, ExpiresAt: exp}
}

// sessions lists the allocated sessions by identifier.
func (st *state) sessions() []SessionInfo {
	out := make([]SessionInfo, 0, len(st.byIdent))
	for _, b := range st.byIdent {
		out = append(out, st.info(b))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Identifier < out[j].Identifier })
	return out
}

// check verifies the state's internal consistency; tests call it after every event.
func (st *state) check() error {
	var fl inFlight
	var ready, allocated int
	if len(st.byID) != len(st.boxes) {
		return fmt.Errorf("%d boxes but %d indexed by ID", len(st.boxes), len(st.byID))
	}
	for _, b := range st.boxes {
		if st.byID[b.ID] != b {
			return fmt.Errorf("box %s not indexed by ID", b.ID)
		}
		if b.State == StatePending {
			fl.Creates++
		}
		if b.Destroying {
			fl.Destroys++
			if b.State != StateDeleting {
				return fmt.Errorf("box %s destroying in state %s", b.ID, b.State)
			}
		}
		if b.Probing {
			fl.Probes++
		}
		if b.Generation > st.gen {
			return fmt.Errorf("box %s of generation %d, after the current %d", b.ID, b.Generation, st.gen)
		}
		switch b.State {
		case StateReady:
			ready++
			if !slices.Contains(st.ready, b) || b.bound {
				return fmt.Errorf("ready box %s not in the ready queue or bound before", b.ID)
			}
		case StateAllocated:
			allocated++
			if st.byIdent[b.Identifier] != b || !b.bound {
				return fmt.Errorf("allocated box %s not indexed by its identifier %q", b.ID, b.Identifier)
			}
		}
	}
	if fl != st.fl {
		return fmt.Errorf("in flight %+v, counted %+v", st.fl, fl)
	}
	if ready != len(st.ready) || allocated != len(st.byIdent) {
		return fmt.Errorf("%d ready and %d allocated, indexes hold %d and %d", ready, allocated, len(st.ready), len(st.byIdent))
	}
	for _, w := range st.waiting {
		if st.byIdent[w.identifier] != nil || w.n < 1 {
			return fmt.Errorf("identifier %q waits while bound (or with %d requests)", w.identifier, w.n)
		}
	}
	if len(st.waiting) > 0 && len(st.ready) > 0 {
		return fmt.Errorf("%d identifiers wait while %d sandboxes are ready", len(st.waiting), len(st.ready))
	}
	return nil
}
