package pool

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/sandbox"
	"github.com/sessiond/sessiond/internal/store"
)

// This file is the owner goroutine's side of the Manager: its loop, the requests it
// answers, the reconcile step, and the workers that make the runtime calls.

// run is the owner goroutine: it alone touches the state. After each request, event or
// timer it reconciles and issues the resulting runtime calls.
func (m *Manager) run() {
	defer close(m.done)
	quit := m.quit
	m.step()
	for !m.st.done() {
		select {
		case f := <-m.reqs:
			if !f() {
				continue
			}
		case ev := <-m.events:
			m.handle(ev)
		case <-m.wake:
		case <-quit:
			quit = nil
			m.st.close()
			m.cancel()
		}
		m.step()
	}
	if m.stopTimer != nil {
		m.stopTimer()
	}
	for id, rs := range m.waiters {
		for _, r := range rs {
			r <- acquireResult{err: m.errClosed()}
		}
		delete(m.waiters, id)
	}
	for id, ds := range m.deleters {
		for _, d := range ds {
			d <- m.errClosed()
		}
		delete(m.deleters, id)
	}
	m.closeErr = errors.Join(m.closeErrs...)
	m.log.Debug("session pool stopped")
}

func (m *Manager) onAcquire(identifier string, create bool, reply chan acquireResult) (changed bool) {
	now := m.clock.Now()
	b, isNew, wait, err := m.st.acquire(identifier, create, now)
	switch {
	case err != nil:
		reply <- acquireResult{err: err}
		return false
	case wait:
		m.waiters[identifier] = append(m.waiters[identifier], reply)
		return true
	case isNew:
		reply <- acquireResult{lease: m.lease(b, isNew)}
		return true
	}
	reply <- acquireResult{lease: m.lease(b, false)}
	m.touched(b, now)
	m.record(b)
	return false
}

// record tells the recorder of b's session as it is now.
func (m *Manager) record(b *box) {
	if m.recorder == nil {
		return
	}
	si := m.st.info(b)
	err := m.recorder.PutSession(store.Session{Pool: m.spec.Name, Identifier: si.Identifier, SandboxID: si.SandboxID,
		Runtime: m.rt.Name(), State: string(si.State), CreatedAt: si.CreatedAt, LastRequestAt: si.LastAccessedAt, ExpiresAt: si.ExpiresAt})
	if err != nil {
		m.log.Warn("recording session", "session", si.Identifier, "err", err)
	}
}

// forget tells the recorder that identifier's session has ended.
func (m *Manager) forget(identifier string) {
	if m.recorder == nil {
		return
	}
	if err := m.recorder.DeleteSession(m.spec.Name, identifier); err != nil {
		m.log.Warn("forgetting session", "session", identifier, "err", err)
	}
}

// touched re-arms the timer after a request touched b's session, without a reconcile.
// A touch changes nothing reconcile decides from but b's expiry: it only postpones it, or
// starts it when the last lease is released. So the timer is moved earlier if b now
// expires before it fires; a timer that fires early only costs a reconcile. This keeps
// requests for existing sessions at O(1) rather than O(sandboxes).
func (m *Manager) touched(b *box, now time.Time) {
	if _, at := expiry(m.pol.Spec, b.sbView); !at.IsZero() && (m.wakeAt.IsZero() || at.Before(m.wakeAt)) {
		m.arm(at, now)
	}
}

func (m *Manager) withdraw(identifier string, reply chan acquireResult) {
	rs := m.waiters[identifier]
	i := slices.Index(rs, reply)
	if i < 0 {
		return // already answered
	}
	if rs = slices.Delete(rs, i, i+1); len(rs) == 0 {
		delete(m.waiters, identifier)
	} else {
		m.waiters[identifier] = rs
	}
	m.st.withdraw(identifier)
}

func (m *Manager) lease(b *box, isNew bool) *Lease {
	id := b.ID
	return NewLease(m.st.info(b), isNew, m.rt.Agent(id), func() {
		_ = m.do(context.Background(), func() bool {
			now := m.clock.Now()
			if b := m.st.release(id, now); b != nil {
				m.touched(b, now)
				m.record(b)
			}
			return false
		})
	})
}

func (m *Manager) handle(ev event) {
	now := m.clock.Now()
	switch ev.kind {
	case evCreated:
		m.st.created(ev.id, ev.err, now)
	case evDestroyed:
		m.st.destroyed(ev.id, ev.err, now)
	case evProbed:
		if ee := (*ExitedError)(nil); errors.As(ev.err, &ee) {
			m.st.probed(ev.id, nil, now)
			m.died(ev.id, ev.err)
			return
		}
		if ev.err != nil {
			m.log.Debug("sandbox health check failed", "sandbox", ev.id, "err", ev.err)
		}
		m.st.probed(ev.id, ev.err, now)
	case evDied:
		m.died(ev.id, ev.err)
	}
}

// step reconciles, issues the resulting runtime calls, re-arms the timer, and answers the
// requests the last event resolved.
func (m *Manager) step() {
	now := m.clock.Now()
	obs := m.st.observe(m.buf)
	m.buf = obs.Sandboxes
	var wake time.Time
	for _, a := range reconcile(m.pol, obs, m.st.fl, now) {
		switch a.Kind {
		case actWake:
			wake = a.At
		case actRetire:
			m.st.apply(a, "", now)
		case actCreate:
			id, t := m.newID(), m.tmpl
			m.st.apply(a, id, now)
			m.spawn(func() event { return m.create(id, t) })
		case actDestroy:
			m.st.apply(a, "", now)
			m.spawn(func() event { return m.destroy(a.ID) })
		case actProbe:
			m.st.apply(a, "", now)
			m.spawn(func() event { return m.probe(a.ID) })
		}
	}
	m.arm(wake, now)
	m.flush()
	m.snap.Store(&snapshot{counts: m.st.counts(), lastErr: m.st.lastErr})
}

// arm sets the timer to wake the owner at at (never, if zero).
func (m *Manager) arm(at, now time.Time) {
	if at.Equal(m.wakeAt) {
		return
	}
	if m.stopTimer != nil {
		m.stopTimer()
		m.stopTimer = nil
	}
	m.wakeAt = at
	if at.IsZero() {
		return
	}
	m.stopTimer = m.clock.AfterFunc(at.Sub(now), func() {
		select {
		case m.wake <- struct{}{}:
		default:
		}
	})
}

// flush answers the requests resolved by the last event and logs the state changes.
func (m *Manager) flush() {
	st := m.st
	for _, identifier := range st.bound {
		b := st.byIdent[identifier]
		if b != nil && m.promoter != nil {
			// Full CPU weight from the moment the sandbox serves a session: a sysfs write
			// of a few microseconds, on the owner goroutine.
			if err := m.promoter.Promote(b.ID); err != nil {
				m.log.Warn("promoting sandbox", "sandbox", b.ID, "err", err)
			}
		}
		for i, r := range m.waiters[identifier] {
			if b == nil { // cannot happen: a binding is never undone in the same step
				r <- acquireResult{err: errkind.Wrap(errkind.Internal, fmt.Errorf("session %q lost its sandbox", identifier))}
				continue
			}
			r <- acquireResult{lease: m.lease(b, i == 0), cold: true}
		}
		delete(m.waiters, identifier)
	}
	for _, f := range st.failed {
		for _, r := range m.waiters[f.identifier] {
			r <- acquireResult{err: f.err}
		}
		delete(m.waiters, f.identifier)
	}
	for _, g := range st.gone {
		for _, d := range m.deleters[g.id] {
			d <- g.err
		}
		delete(m.deleters, g.id)
	}
	for _, t := range st.log {
		m.logTransition(t)
		m.observer.Transition(m.spec.Name, t.export())
		m.watchTransition(t)
		switch {
		case t.To == StateAllocated && t.From != StateAllocated:
			if b := st.byID[t.ID]; b != nil && b.State == StateAllocated {
				m.record(b)
			}
		case t.From == StateAllocated && t.To != StateAllocated:
			m.forget(t.Identifier)
		}
		if st.closing && t.From == StateDeleting && t.To == StateDestroyed && t.Err != nil {
			m.closeErrs = append(m.closeErrs, t.Err) // destroy given up
		}
	}
	st.bound, st.failed, st.gone, st.log = st.bound[:0], st.failed[:0], st.gone[:0], st.log[:0]
}

// logTransition logs one state change.
func (m *Manager) logTransition(t transition) {
	attrs := []any{"sandbox", t.ID, "from", t.From, "to", t.To}
	if t.Identifier != "" {
		attrs = append(attrs, "session", t.Identifier)
	}
	if t.Reason != "" {
		attrs = append(attrs, "reason", t.Reason)
	}
	switch {
	case t.Err != nil && m.st.closing && t.From == StatePending:
		m.log.Debug("create abandoned at shutdown", append(attrs, "err", t.Err)...)
	case t.Err != nil:
		m.log.Warn("sandbox operation failed", append(attrs, "err", t.Err)...)
	case t.Reason == reasonDead:
		m.log.Warn("sandbox died", attrs...)
	default:
		m.log.Debug("sandbox state", attrs...)
	}
}

// spawn runs a runtime call in a worker goroutine that reports its result as an event.
// The owner does not exit while a call is in flight, so the send always completes.
func (m *Manager) spawn(call func() event) {
	m.workers.Add(1)
	go func() {
		defer m.workers.Done()
		m.events <- call()
	}()
}

// create makes sandbox id from template t.
func (m *Manager) create(id string, t *template) event {
	spec := sandbox.Spec{ID: id, Image: t.image, RootFS: t.rootFS, Kernel: t.kernel, Env: t.env, Limits: t.limits,
		Command: t.command, WorkingDir: t.workDir, User: t.user,
		Labels: map[string]string{LabelPool: m.spec.Name}, Background: m.promoter != nil, Network: t.network}
	// Phases are timed by the wall clock, not m.clock: they measure work, not policy.
	start := time.Now()
	info, err := m.rt.Create(m.life, spec)
	m.observer.Phase(m.spec.Name, PhaseCreate, time.Since(start), err)
	if err == nil && t.prepare != nil {
		ctx, cancel := context.WithTimeout(m.life, prepareTimeout)
		start = time.Now()
		perr := t.prepare(ctx, info, m.rt.Agent(id))
		m.observer.Phase(m.spec.Name, PhasePrepare, time.Since(start), perr)
		cancel()
		if perr != nil {
			err = fmt.Errorf("preparing sandbox %s: %w", id, perr)
			if derr := m.rt.Destroy(context.WithoutCancel(m.life), id); derr != nil {
				m.log.Error("destroying a sandbox that failed to prepare", "sandbox", id, "err", derr)
			}
		}
	}
	return event{kind: evCreated, id: id, err: err}
}

func (m *Manager) destroy(id string) event {
	// Destroy finishes its cleanup even if the manager is closing.
	return event{kind: evDestroyed, id: id, err: m.rt.Destroy(context.WithoutCancel(m.life), id)}
}

func (m *Manager) probe(id string) event {
	ctx, cancel := context.WithTimeout(m.life, probeTimeout)
	defer cancel()
	h, err := m.rt.Agent(id).Health(ctx)
	if err == nil {
		err = exited(h) // a sandbox whose container exited is dead at once
	}
	return event{kind: evProbed, id: id, err: err}
}
