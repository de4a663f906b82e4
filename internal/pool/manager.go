package pool

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/sandbox"
	"github.com/sessiond/sessiond/internal/store"
)

// LabelPool is the sandbox label naming the pool a sandbox belongs to. Start destroys the
// sandboxes an earlier process left with its pool's name.
const LabelPool = "pool"

// Defaults of Options.
const (
	// DefaultRefillParallelism suits a 2-core machine: two sandbox starts at once keep
	// both cores busy without starving the sessions in use.
	DefaultRefillParallelism = 2
	// DefaultHealthInterval is how often each live sandbox's agent is health-checked: one
	// small HTTP request over a unix socket per sandbox per interval.
	DefaultHealthInterval = 5 * time.Second
)

// Health checks and destroys.
const (
	probeTimeout     = 2 * time.Second
	probeRetry       = time.Second
	probeDeadAfter   = 2
	probeParallelism = 4
	surplusGrace     = 30 * time.Second
	// prepareTimeout bounds Options.Prepare, so that a warm-up that hangs cannot hold a
	// create slot forever. Importing numpy, pandas and matplotlib under gVisor on a
	// loaded 2-core machine takes tens of seconds.
	prepareTimeout = 2 * time.Minute
)

// Options configure a Manager.
type Options struct {
	// Runtime creates the pool's sandboxes. Required.
	Runtime sandbox.Runtime
	// RootFS is the resolved image root filesystem, for sandbox.Spec.RootFS. Required.
	RootFS string
	// Clock is the source of time; nil means the wall clock.
	Clock Clock
	Log   *slog.Logger
	// Prepare runs on every new sandbox before it joins the ready queue (the control plane
	// passes the kernel warm-up here); nil does nothing. An error fails that sandbox: it is
	// destroyed, and creates back off.
	Prepare func(ctx context.Context, info sandbox.Info, agent *agentapi.Client) error
	// Kernel is the Jupyter kernel the agent starts in every sandbox (sandbox.Spec.Kernel:
	// "python3" for code-interpreter pools); "" starts none.
	Kernel string
	// Env is added to every sandbox's environment (the image's configured environment).
	Env []string
	// Command, WorkingDir and User are every sandbox's main process (sandbox.Spec): a
	// custom container's, whose exit, seen by the health checks, ends its session.
	Command    []string
	WorkingDir string
	User       *sandbox.User
	// Watch, if set, runs for each allocated session from its binding until it ends, in
	// a goroutine the pool owns, whose ctx ends with the session (or the pool). An error
	// it returns before then ends the session, as a dead sandbox: the custom containers'
	// liveness probes.
	Watch func(ctx context.Context, s SessionInfo, agent *agentapi.Client) error
	// RefillParallelism bounds concurrent sandbox creates (DefaultRefillParallelism if 0).
	RefillParallelism int
	// RefillDelay postpones replacing a ready sandbox that a new identifier took while
	// ready ones remain, so that the request that took it is not slowed down by the start
	// of its replacement (on a small machine a start takes the CPU for a second or two).
	// 0: refill at once. Cold starts for waiting requests are never delayed.
	RefillDelay time.Duration
	// HealthInterval is how often each live sandbox's agent is health-checked
	// (DefaultHealthInterval if 0; negative disables health checks).
	HealthInterval time.Duration
	// Recorder, if set, is told of every session's binding, use and end, behind the hot
	// path (store.Async implements it): the record a restarted process adopts sessions
	// from. Its errors are logged; they never fail a request.
	Recorder Recorder
	// Recovered are the sessions an earlier process recorded for this pool. Start adopts
	// those whose sandbox still runs and answers, and destroys the pool's other sandboxes.
	Recovered []store.Session
	// Observer, if set, is told of every state change, start phase and allocation, for
	// metrics and events (see Observer; Observers combines several).
	Observer Observer
}

// Recorder keeps the record of a pool's sessions (store.Async implements it). Its calls
// come from the pool's owner goroutine and must not wait for a disk.
type Recorder interface {
	PutSession(store.Session) error
	DeleteSession(pool, identifier string) error
}

// Manager runs one pool: it keeps ReadySessionInstances sandboxes ready, binds them to
// session identifiers on first use, enforces MaxConcurrentSessions, and destroys sessions
// after their cooldown or maximum lifetime, on Delete, or when their sandbox dies.
//
// All of the pool's state is owned by one goroutine (run), started by Start. Requests reach
// it over a channel and are answered from memory; runtime calls (create, destroy, health
// checks) run in worker goroutines, bounded by the counts reconcile keeps, and report back
// as events. The methods are safe for concurrent use.
type Manager struct {
	// spec is the spec the manager was made with. Its Name, ContainerType and Runtime
	// never change; cur is the current spec (Update), pol.Spec the owner's copy of it.
	spec Spec
	cur  atomic.Pointer[Spec]
	pol  policy
	rt   sandbox.Runtime
	// promoter is rt's optional Promoter: sandboxes warm up with a low CPU weight and get
	// the full weight when bound to a session.
	promoter sandbox.Promoter
	// tmpl is what new sandboxes are made from. Owned by the run goroutine, which hands
	// each create the template current when it was issued; Update replaces it.
	tmpl      *template
	watch     func(ctx context.Context, s SessionInfo, agent *agentapi.Client) error
	clock     Clock
	log       *slog.Logger
	newID     func() string
	recorder  Recorder
	recovered []store.Session
	observer  Observer // never nil

	reqs   chan func() bool // run on the owner goroutine; true: reconcile after it
	events chan event       // results of runtime calls
	wake   chan struct{}    // the timer fired; capacity 1
	quit   chan struct{}    // closed by Close
	done   chan struct{}    // closed when the owner has exited, or by Close before Start
	// life is the manager's lifetime; runtime calls run under it, and closing cancels
	// it so that creates in flight stop early.
	life    context.Context
	cancel  context.CancelFunc
	started atomic.Bool
	workers sync.WaitGroup
	snap    atomic.Pointer[snapshot]

	// lifeMu serializes Start and Close.
	lifeMu sync.Mutex
	// phase is where the manager is in its life. Guarded by lifeMu.
	phase int

	// Owned by the run goroutine (until done is closed; then read-only).

	st *state
	// waiters are the requests waiting for a cold start, by identifier, in arrival order.
	waiters map[string][]chan acquireResult
	// deleters are Delete calls waiting for a destroy, by sandbox ID.
	deleters map[string][]chan error
	// watching stops the Watch of each allocated session, by sandbox ID.
	watching  map[string]context.CancelFunc
	buf       []sbView
	stopTimer func() bool
	wakeAt    time.Time
	closeErrs []error
	closeErr  error
}

const (
	phaseNew = iota
	phaseRunning
	phaseClosed
)

type snapshot struct {
	counts  Counts
	lastErr error
}

type acquireResult struct {
	lease *Lease
	err   error
	// cold: the identifier waited for a sandbox to start.
	cold bool
}

type eventKind int

const (
	evCreated eventKind = iota + 1
	evDestroyed
	evProbed
	// evDied: Options.Watch reported the session's container dead.
	evDied
)

// event is the result of a runtime call made by a worker.
type event struct {
	kind eventKind
	id   string
	err  error
}

// New returns a manager for the pool spec. It validates spec and opts and has no side
// effects; Start starts the pool.
func New(spec Spec, opts Options) (*Manager, error) {
	spec, err := spec.Validate()
	if err != nil {
		return nil, err
	}
	if opts.Runtime == nil {
		return nil, errkind.New(errkind.Invalid, "session pool %s: no sandbox runtime", spec.Name)
	}
	if opts.RootFS == "" {
		return nil, errkind.New(errkind.Invalid, "session pool %s: no image root filesystem", spec.Name)
	}
	if opts.RefillParallelism < 0 {
		return nil, errkind.New(errkind.Invalid, "session pool %s: refill parallelism %d: want 1 or more", spec.Name, opts.RefillParallelism)
	}
	if opts.RefillParallelism == 0 {
		opts.RefillParallelism = DefaultRefillParallelism
	}
	switch {
	case opts.HealthInterval == 0:
		opts.HealthInterval = DefaultHealthInterval
	case opts.HealthInterval < 0:
		opts.HealthInterval = 0
	}
	if opts.Clock == nil {
		opts.Clock = realClock{}
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	pol := policy{
		Spec:               spec,
		CreateParallelism:  opts.RefillParallelism,
		DestroyParallelism: max(2, opts.RefillParallelism),
		ProbeParallelism:   probeParallelism,
		HealthInterval:     opts.HealthInterval,
		ProbeRetry:         min(probeRetry, max(opts.HealthInterval, time.Millisecond)),
		DeadAfter:          probeDeadAfter,
		SurplusGrace:       surplusGrace,
		RefillDelay:        opts.RefillDelay,
	}
	life, cancel := context.WithCancel(context.Background())
	m := &Manager{
		spec: spec, pol: pol, rt: opts.Runtime, promoter: promoterOf(opts.Runtime), clock: opts.Clock,
		tmpl: &template{image: spec.Image, rootFS: opts.RootFS, kernel: opts.Kernel, env: opts.Env, limits: spec.Limits,
			network: spec.Network, command: opts.Command, workDir: opts.WorkingDir, user: opts.User, prepare: opts.Prepare},
		log:   opts.Log.With("component", "pool", "pool", spec.Name),
		newID: newSandboxID, recorder: opts.Recorder, recovered: opts.Recovered,
		watch: opts.Watch, watching: map[string]context.CancelFunc{},
		reqs: make(chan func() bool), events: make(chan event, 16), wake: make(chan struct{}, 1),
		quit: make(chan struct{}), done: make(chan struct{}),
		life: life, cancel: cancel,
		st:      newState(pol),
		waiters: map[string][]chan acquireResult{}, deleters: map[string][]chan error{},
	}
	if m.observer = opts.Observer; m.observer == nil {
		m.observer = multiObserver(nil)
	}
	m.snap.Store(&snapshot{})
	m.cur.Store(&spec)
	return m, nil
}

// newSandboxID returns a fresh sandbox ID; the pool is in the sandbox's labels.
func newSandboxID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "sb-" + hex.EncodeToString(b[:])
}

// Spec returns the pool's current spec (with defaults applied).
func (m *Manager) Spec() Spec { return *m.cur.Load() }

// Start adopts the sessions of Options.Recovered whose sandboxes still run, destroys the
// other sandboxes an earlier process left labelled with this pool's name, then starts the
// owner goroutine, which fills the ready queue. It fails if the leftovers cannot be
// listed or destroyed, or if the manager was started or closed before.
func (m *Manager) Start(ctx context.Context) error {
	m.lifeMu.Lock()
	defer m.lifeMu.Unlock()
	switch m.phase {
	case phaseRunning:
		return errkind.New(errkind.Invalid, "session pool %s: already started", m.spec.Name)
	case phaseClosed:
		return m.errClosed()
	}
	if err := m.reap(ctx); err != nil {
		return fmt.Errorf("starting session pool %s: %w", m.spec.Name, err)
	}
	m.phase = phaseRunning
	m.started.Store(true)
	go m.run()
	return nil
}

// reap adopts the recovered sessions whose sandboxes answer and destroys the pool's other
// leftover sandboxes. (sandbox.Recover would destroy the other pools' sandboxes too: they
// share the runtime.) It runs before the owner goroutine starts.
func (m *Manager) reap(ctx context.Context) error {
	infos, err := m.rt.List(ctx)
	if err != nil {
		return fmt.Errorf("listing leftover sandboxes: %w", err)
	}
	live := map[string]bool{}
	for _, i := range infos {
		live[i.ID] = i.Labels[LabelPool] == m.spec.Name
	}
	adopted := map[string]bool{}
	now := m.clock.Now()
	for _, rec := range m.recovered {
		if rec.Pool != m.spec.Name || adopted[rec.SandboxID] || m.st.byIdent[rec.Identifier] != nil {
			continue
		}
		if !live[rec.SandboxID] {
			m.log.Info("recorded session has no sandbox left", "session", rec.Identifier, "sandbox", rec.SandboxID)
			m.forget(rec.Identifier)
			continue
		}
		if _, err := m.rt.Attach(ctx, rec.SandboxID); err != nil {
			m.log.Warn("cannot adopt recorded session", "session", rec.Identifier, "sandbox", rec.SandboxID, "err", err)
			m.forget(rec.Identifier)
			continue
		}
		m.st.adopt(rec.SandboxID, rec.Identifier, rec.CreatedAt, rec.LastRequestAt, now)
		adopted[rec.SandboxID] = true
	}
	m.recovered = nil
	var errs []error
	for _, i := range infos {
		if i.Labels[LabelPool] != m.spec.Name || adopted[i.ID] {
			continue
		}
		if err := m.rt.Destroy(ctx, i.ID); err != nil {
			errs = append(errs, err)
			continue
		}
		m.log.Info("destroyed leftover sandbox", "sandbox", i.ID, "state", i.State)
	}
	if len(errs) > 0 {
		return fmt.Errorf("destroying leftover sandboxes: %w", errors.Join(errs...))
	}
	return nil
}

// Close stops accepting requests (they fail with Unavailable), fails the requests waiting
// for a cold start, destroys all the pool's sandboxes (ready and allocated, and those whose
// create was in flight), and waits for the owner goroutine and the workers to end. It
// returns an error if ctx ends first (the shutdown goes on in the background) or if some
// sandbox could not be destroyed. It is idempotent and works before Start.
func (m *Manager) Close(ctx context.Context) error {
	m.lifeMu.Lock()
	switch m.phase {
	case phaseNew:
		m.phase = phaseClosed
		m.cancel()
		close(m.done)
	case phaseRunning:
		m.phase = phaseClosed
		close(m.quit)
	}
	m.lifeMu.Unlock()
	select {
	case <-m.done:
	case <-ctx.Done():
		return errkind.Wrap(errkind.Timeout, fmt.Errorf("closing session pool %s: %w", m.spec.Name, ctx.Err()))
	}
	m.workers.Wait()
	return m.closeErr
}

// Detach is Close for a restart: the allocated sessions are left running, with their
// records, for the next process to adopt (Options.Recovered); ready and starting
// sandboxes are destroyed. Requests fail with Unavailable from now on.
func (m *Manager) Detach(ctx context.Context) error {
	if m.started.Load() {
		err := m.do(ctx, func() bool {
			m.st.detach(m.clock.Now())
			m.st.close()
			return true
		})
		if err != nil && !errkind.Is(err, errkind.Unavailable) {
			return fmt.Errorf("detaching session pool %s: %w", m.spec.Name, err)
		}
	}
	return m.Close(ctx)
}

// Acquire returns a lease on identifier's session. An existing session is reused (its
// idle timer reset). An unknown identifier is bound to a ready sandbox, from memory; when
// none is ready it waits for a cold start (bounded by ctx) rather than fail. Concurrent
// first requests for one identifier get the same session. Errors: Invalid for an empty
// identifier; LimitExceeded when MaxConcurrentSessions sessions are allocated; Unavailable
// when a cold start failed or the pool is closed or not started; Timeout when ctx ends
// first.
func (m *Manager) Acquire(ctx context.Context, identifier string) (*Lease, error) {
	return m.acquire(ctx, identifier, true)
}

// Get returns a lease on identifier's existing session (its idle timer reset); NotFound if
// there is none.
func (m *Manager) Get(ctx context.Context, identifier string) (*Lease, error) {
	return m.acquire(ctx, identifier, false)
}

func (m *Manager) acquire(ctx context.Context, identifier string, create bool) (*Lease, error) {
	if identifier == "" {
		return nil, errkind.New(errkind.Invalid, "session identifier is empty")
	}
	start := time.Now()
	reply := make(chan acquireResult, 1)
	if err := m.do(ctx, func() bool { return m.onAcquire(identifier, create, reply) }); err != nil {
		return nil, err
	}
	select {
	case r := <-reply:
		if r.lease != nil && r.lease.New {
			m.observer.Allocated(m.spec.Name, time.Since(start), r.cold)
		}
		return r.lease, r.err
	case <-ctx.Done():
	}
	// The caller gave up waiting for a cold start: withdraw, and release a lease that was
	// sent meanwhile.
	_ = m.do(context.WithoutCancel(ctx), func() bool { m.withdraw(identifier, reply); return true })
	select {
	case r := <-reply:
		if r.lease != nil {
			r.lease.Release()
		}
	default:
	}
	return nil, ctxError(ctx, fmt.Sprintf("waiting for a session in session pool %s", m.spec.Name))
}

func ctxError(ctx context.Context, doing string) error {
	k := errkind.Unavailable
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		k = errkind.Timeout
	}
	return errkind.Wrap(k, fmt.Errorf("%s: %w", doing, ctx.Err()))
}

// Delete destroys identifier's session now and waits (bounded by ctx) for its sandbox to
// be destroyed. The identifier is free at once: an Acquire gets a new sandbox. NotFound if
// the identifier has no session.
func (m *Manager) Delete(ctx context.Context, identifier string) error {
	if identifier == "" {
		return errkind.New(errkind.Invalid, "session identifier is empty")
	}
	reply := make(chan error, 1)
	var err error
	if derr := m.do(ctx, func() bool {
		var id string
		if id, err = m.st.remove(identifier, m.clock.Now()); err == nil {
			m.deleters[id] = append(m.deleters[id], reply)
		}
		return err == nil
	}); derr != nil {
		return derr
	}
	if err != nil {
		return err
	}
	select {
	case err := <-reply:
		if err != nil {
			return fmt.Errorf("deleting session %q: %w", identifier, err)
		}
		return nil
	case <-ctx.Done():
		return ctxError(ctx, fmt.Sprintf("deleting session %q", identifier))
	}
}

// Sessions returns the allocated sessions, sorted by identifier (nil once closed).
func (m *Manager) Sessions() []SessionInfo {
	var out []SessionInfo
	if err := m.do(context.Background(), func() bool { out = m.st.sessions(); return false }); err != nil {
		return nil
	}
	return out
}

// Counts returns the pool's live numbers, as of the last event the owner handled.
func (m *Manager) Counts() Counts { return m.snap.Load().counts }

// LastError returns the error of the last sandbox create if it failed (nil once a create
// succeeds). While it is non-nil, Counts().CreateFailures > 0 and creates back off.
func (m *Manager) LastError() error { return m.snap.Load().lastErr }

func (m *Manager) errClosed() error {
	return errkind.New(errkind.Unavailable, "session pool %s is shutting down", m.spec.Name)
}

// do runs f on the owner goroutine and waits until it has run. f returns whether it
// changed the state in a way reconcile must see.
func (m *Manager) do(ctx context.Context, f func() bool) error {
	if !m.started.Load() {
		select {
		case <-m.done:
			return m.errClosed()
		default:
			return errkind.New(errkind.Unavailable, "session pool %s is not started", m.spec.Name)
		}
	}
	ran := make(chan struct{})
	select {
	case m.reqs <- func() bool { defer close(ran); return f() }:
	case <-m.done:
		return m.errClosed()
	case <-ctx.Done():
		return ctxError(ctx, fmt.Sprintf("reaching session pool %s", m.spec.Name))
	}
	<-ran // the owner runs every function it receives
	return nil
}

// promoterOf returns rt's Promoter ability, if it has one.
func promoterOf(rt sandbox.Runtime) sandbox.Promoter {
	p, _ := rt.(sandbox.Promoter)
	return p
}
