package pool

import (
	"context"
	"errors"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/pool/pooltest"
	"github.com/sessiond/sessiond/internal/sandbox"
	"github.com/sessiond/sessiond/internal/sandbox/sandboxtest"
)

// fakePool is a Manager over sandboxtest.Fake (real agents as host processes) with a fake
// clock, and a create hook the test can steer.
type fakePool struct {
	m     *Manager
	rt    *sandboxtest.Fake
	clock *pooltest.Clock
	// creates counts Create calls.
	creates atomic.Int32
	// fail makes creates fail.
	fail atomic.Bool
	// block makes creates wait until unblock is closed.
	block   atomic.Bool
	unblock chan struct{}
}

func newFakePool(t *testing.T, spec Spec, opts Options) *fakePool {
	t.Helper()
	state, err := os.MkdirTemp("/tmp", "spf-")
	if err != nil {
		t.Fatal(err)
	}
	// The agent runs user commands as an unprivileged user, which must reach the data
	// directories.
	os.Chmod(state, 0o755)
	fp := &fakePool{clock: pooltest.NewClock(time.Time{}), unblock: make(chan struct{})}
	fp.rt = &sandboxtest.Fake{AgentBinary: agentBin, StateDir: state, CreateHook: func(ctx context.Context, _ sandbox.Spec) error {
		fp.creates.Add(1)
		if fp.block.Load() {
			select {
			case <-fp.unblock:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if fp.fail.Load() {
			return errors.New("injected create failure")
		}
		return nil
	}}
	if spec.Name == "" {
		spec.Name = "test-pool"
	}
	if spec.CooldownPeriod == 0 && spec.LifecycleType != LifecycleOnContainerExit {
		spec.CooldownPeriod = time.Minute
	}
	opts.Runtime = fp.rt
	opts.RootFS = "/"
	if opts.Clock == nil {
		opts.Clock = fp.clock
	}
	fp.m, err = New(spec, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		fp.unblockCreates()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := fp.m.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
		if infos, _ := fp.rt.List(ctx); len(infos) > 0 {
			t.Errorf("sandboxes left after Close: %v", infos)
		}
		os.RemoveAll(state)
	})
	return fp
}

func (fp *fakePool) start(t *testing.T) {
	t.Helper()
	if err := fp.m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
}

var unblockOnce sync.Mutex

func (fp *fakePool) unblockCreates() {
	unblockOnce.Lock()
	defer unblockOnce.Unlock()
	select {
	case <-fp.unblock:
	default:
		close(fp.unblock)
	}
}

// sync waits until the owner goroutine has handled everything sent to it so far (and so
// armed its timer for the current state).
func (fp *fakePool) sync() { fp.m.Sessions() }

// live returns the IDs of the sandboxes the runtime has.
func (fp *fakePool) live(t *testing.T) []string {
	t.Helper()
	infos, err := fp.rt.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, i := range infos {
		ids = append(ids, i.ID)
	}
	slices.Sort(ids)
	return ids
}

func (fp *fakePool) info(t *testing.T, id string) sandbox.Info {
	t.Helper()
	infos, _ := fp.rt.List(context.Background())
	for _, i := range infos {
		if i.ID == id {
			return i
		}
	}
	t.Fatalf("no sandbox %s", id)
	return sandbox.Info{}
}

// waitFor polls cond for up to 20 s of real time.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func (fp *fakePool) waitReady(t *testing.T, n int) {
	t.Helper()
	waitFor(t, "the ready queue to fill", func() bool { c := fp.m.Counts(); return c.Ready == n && c.Pending == 0 })
}

func acquire(t *testing.T, m *Manager, identifier string) *Lease {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	l, err := m.Acquire(ctx, identifier)
	if err != nil {
		t.Fatalf("Acquire(%q): %v", identifier, err)
	}
	return l
}

func healthy(t *testing.T, l *Lease) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := l.Agent.Health(ctx); err != nil {
		t.Fatalf("the agent of %s: %v", l.Session.SandboxID, err)
	}
}

func TestAcquireBindsAReadySandboxWithoutWaiting(t *testing.T) {
	fp := newFakePool(t, Spec{MaxConcurrentSessions: 5, ReadySessionInstances: 2}, Options{})
	fp.start(t)
	fp.waitReady(t, 2)
	// From now on every create hangs: an Acquire that waited for one would time out.
	fp.block.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	l, err := fp.m.Acquire(ctx, "alice")
	elapsed := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	t.Logf("Acquire of a new identifier with a warm queue: %v", elapsed)
	if elapsed > 200*time.Millisecond {
		t.Errorf("Acquire took %v with a sandbox ready", elapsed)
	}
	if !l.New || l.Session.Identifier != "alice" || l.Session.State != StateAllocated {
		t.Errorf("lease = %+v, want a new allocated session for alice", l.Session)
	}
	healthy(t, l)
	waitFor(t, "the refill create to be in flight", func() bool { c := fp.m.Counts(); return c.Ready == 1 && c.Pending == 1 && c.Allocated == 1 })
}

func TestColdStartWhenNoneIsReady(t *testing.T) {
	fp := newFakePool(t, Spec{MaxConcurrentSessions: 2, ReadySessionInstances: 0}, Options{})
	fp.start(t)
	l := acquire(t, fp.m, "alice")
	defer l.Release()
	if !l.New {
		t.Error("a cold-started session is not marked new")
	}
	healthy(t, l)
	if c := fp.m.Counts(); c.Allocated != 1 || c.Ready != 0 || c.Pending != 0 {
		t.Errorf("counts = %+v, want one allocated and nothing else", c)
	}
	if n := fp.creates.Load(); n != 1 {
		t.Errorf("%d creates, want 1", n)
	}
}

func TestLimitExceeded(t *testing.T) {
	fp := newFakePool(t, Spec{MaxConcurrentSessions: 2, ReadySessionInstances: 1}, Options{})
	fp.start(t)
	acquire(t, fp.m, "a").Release()
	acquire(t, fp.m, "b").Release()
	_, err := fp.m.Acquire(context.Background(), "c")
	if !errkind.Is(err, errkind.LimitExceeded) {
		t.Fatalf("third session: %v, want LimitExceeded", err)
	}
	if msg, ok := errkind.PublicMessage(err); !ok || msg == "" {
		t.Errorf("LimitExceeded has no public message: %v", err)
	}
	// Existing sessions are still served at the cap.
	acquire(t, fp.m, "a").Release()
	if err := fp.m.Delete(context.Background(), "a"); err != nil {
		t.Fatal(err)
	}
	acquire(t, fp.m, "c").Release()
}

func TestConcurrentFirstAcquireGetsOneSession(t *testing.T) {
	for _, ready := range []int{0, 1} {
		t.Run(map[int]string{0: "cold", 1: "warm"}[ready], func(t *testing.T) {
			fp := newFakePool(t, Spec{MaxConcurrentSessions: 3, ReadySessionInstances: ready}, Options{})
			fp.start(t)
			fp.waitReady(t, ready)
			before := fp.creates.Load()
			const n = 50
			leases := make([]*Lease, n)
			errs := make([]error, n)
			var wg sync.WaitGroup
			for i := range n {
				wg.Go(func() {
					ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
					defer cancel()
					leases[i], errs[i] = fp.m.Acquire(ctx, "shared")
				})
			}
			wg.Wait()
			news := 0
			for i := range n {
				if errs[i] != nil {
					t.Fatalf("Acquire %d: %v", i, errs[i])
				}
				if leases[i].Session.SandboxID != leases[0].Session.SandboxID {
					t.Errorf("Acquire %d got %s, Acquire 0 got %s", i, leases[i].Session.SandboxID, leases[0].Session.SandboxID)
				}
				if leases[i].New {
					news++
				}
				leases[i].Release()
			}
			if news != 1 {
				t.Errorf("%d leases marked new, want 1", news)
			}
			if c := fp.m.Counts(); c.Allocated != 1 {
				t.Errorf("counts = %+v, want 1 allocated", c)
			}
			if ready == 0 {
				if got := fp.creates.Load() - before; got != 1 {
					t.Errorf("%d creates for one identifier, want 1", got)
				}
			}
		})
	}
}

func TestCooldownExpiry(t *testing.T) {
	const cooldown = 10 * time.Second
	fp := newFakePool(t, Spec{MaxConcurrentSessions: 2, ReadySessionInstances: 1, CooldownPeriod: cooldown}, Options{})
	fp.start(t)
	fp.waitReady(t, 1)
	l := acquire(t, fp.m, "alice")
	old := l.Session.SandboxID
	// A held lease keeps the session alive however long it is held.
	fp.clock.Advance(3 * cooldown)
	fp.sync()
	l2, err := fp.m.Get(context.Background(), "alice")
	if err != nil {
		t.Fatalf("a session with a lease held expired: %v", err)
	}
	l2.Release()
	// The cooldown runs from the last release.
	l.Release()
	released := fp.clock.Now()
	fp.sync()
	if s := fp.m.Sessions(); len(s) != 1 || !s[0].ExpiresAt.Equal(released.Add(cooldown)) {
		t.Fatalf("sessions = %+v, want alice expiring at %v", s, released.Add(cooldown))
	}
	fp.clock.Advance(cooldown - time.Nanosecond)
	fp.sync()
	if s := fp.m.Sessions(); len(s) != 1 {
		t.Fatalf("session gone %v before its cooldown ended", time.Nanosecond)
	}
	fp.clock.Advance(time.Nanosecond)
	waitFor(t, "the session to expire", func() bool { return len(fp.m.Sessions()) == 0 })
	waitFor(t, "its sandbox to be destroyed", func() bool { return !slices.Contains(fp.live(t), old) })
	l3 := acquire(t, fp.m, "alice")
	defer l3.Release()
	if !l3.New || l3.Session.SandboxID == old {
		t.Errorf("after expiry alice got %s (new %v), want a new sandbox", l3.Session.SandboxID, l3.New)
	}
	healthy(t, l3)
}

func TestGetExtendsTheSession(t *testing.T) {
	fp := newFakePool(t, Spec{MaxConcurrentSessions: 2, ReadySessionInstances: 0, CooldownPeriod: 10 * time.Second}, Options{})
	fp.start(t)
	acquire(t, fp.m, "alice").Release()
	for range 3 {
		fp.clock.Advance(9 * time.Second)
		l, err := fp.m.Get(context.Background(), "alice")
		if err != nil {
			t.Fatalf("Get inside the cooldown: %v", err)
		}
		l.Release()
	}
	if _, err := fp.m.Get(context.Background(), "bob"); !errkind.Is(err, errkind.NotFound) {
		t.Errorf("Get of an unknown identifier: %v, want NotFound", err)
	}
	if _, err := fp.m.Acquire(context.Background(), ""); !errkind.Is(err, errkind.Invalid) {
		t.Errorf("Acquire(\"\"): %v, want Invalid", err)
	}
}

func TestMaxAlive(t *testing.T) {
	fp := newFakePool(t, Spec{MaxConcurrentSessions: 2, ReadySessionInstances: 0, CooldownPeriod: 10 * time.Minute, MaxAlivePeriod: time.Minute}, Options{})
	fp.start(t)
	l := acquire(t, fp.m, "alice")
	defer l.Release()
	fp.clock.Advance(time.Minute - time.Nanosecond)
	fp.sync()
	if len(fp.m.Sessions()) != 1 {
		t.Fatal("session gone before its maximum lifetime")
	}
	fp.clock.Advance(time.Nanosecond)
	waitFor(t, "the session to reach its maximum lifetime", func() bool { return len(fp.m.Sessions()) == 0 })
	l2 := acquire(t, fp.m, "alice")
	defer l2.Release()
	if l2.Session.SandboxID == l.Session.SandboxID {
		t.Error("the identifier got its old sandbox back")
	}
}

func TestDelete(t *testing.T) {
	fp := newFakePool(t, Spec{MaxConcurrentSessions: 2, ReadySessionInstances: 1}, Options{})
	fp.start(t)
	l := acquire(t, fp.m, "alice")
	old := l.Session.SandboxID
	if err := fp.m.Delete(context.Background(), "alice"); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(fp.live(t), old) {
		t.Error("Delete returned before the sandbox was destroyed")
	}
	l.Release() // a lease of a deleted session: no effect
	if _, err := fp.m.Get(context.Background(), "alice"); !errkind.Is(err, errkind.NotFound) {
		t.Errorf("Get after Delete: %v, want NotFound", err)
	}
	if err := fp.m.Delete(context.Background(), "alice"); !errkind.Is(err, errkind.NotFound) {
		t.Errorf("second Delete: %v, want NotFound", err)
	}
	l2 := acquire(t, fp.m, "alice")
	defer l2.Release()
	if !l2.New || l2.Session.SandboxID == old {
		t.Errorf("after Delete alice got %s (new %v), want a new sandbox", l2.Session.SandboxID, l2.New)
	}
}

func kill(t *testing.T, fp *fakePool, id string) {
	t.Helper()
	if err := syscall.Kill(-fp.info(t, id).PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
}

func TestKilledSandboxIsReplaced(t *testing.T) {
	fp := newFakePool(t, Spec{MaxConcurrentSessions: 2, ReadySessionInstances: 1}, Options{HealthInterval: 5 * time.Second})
	fp.start(t)
	fp.waitReady(t, 1)

	// A dead ready sandbox is replaced.
	readyID := fp.live(t)[0]
	kill(t, fp, readyID)
	waitFor(t, "the dead ready sandbox to be replaced", func() bool {
		fp.clock.Advance(time.Second)
		ids := fp.live(t)
		c := fp.m.Counts()
		return !slices.Contains(ids, readyID) && len(ids) == 1 && c.Ready == 1 && c.Pending == 0
	})

	// A dead session is dropped; the identifier then gets a fresh sandbox.
	l := acquire(t, fp.m, "alice")
	l.Release()
	kill(t, fp, l.Session.SandboxID)
	waitFor(t, "the dead session to be dropped", func() bool {
		fp.clock.Advance(time.Second)
		_, err := fp.m.Get(context.Background(), "alice")
		return errkind.Is(err, errkind.NotFound)
	})
	l2 := acquire(t, fp.m, "alice")
	defer l2.Release()
	if !l2.New || l2.Session.SandboxID == l.Session.SandboxID {
		t.Errorf("after its sandbox died alice got %s (new %v), want a new sandbox", l2.Session.SandboxID, l2.New)
	}
	healthy(t, l2)
}

func TestCreateFailuresBackOff(t *testing.T) {
	fp := newFakePool(t, Spec{MaxConcurrentSessions: 2, ReadySessionInstances: 1}, Options{RefillParallelism: 1})
	fp.fail.Store(true)
	fp.start(t)
	waitFor(t, "the first create to fail", func() bool { return fp.m.LastError() != nil })
	expectCreates := func(n int32) {
		t.Helper()
		time.Sleep(30 * time.Millisecond) // a create that should not happen gets a chance to
		fp.sync()
		if got := fp.creates.Load(); got != n {
			t.Fatalf("%d creates at %v, want %d", got, fp.clock.Now(), n)
		}
	}
	expectCreates(1)
	if c := fp.m.Counts(); c.CreateFailures != 1 {
		t.Errorf("counts = %+v, want one failure", c)
	}
	// Back-off: 1 s, then 2 s, then 4 s.
	for i, d := range []time.Duration{time.Second, 2 * time.Second} {
		fp.clock.Advance(d - time.Millisecond)
		expectCreates(int32(i + 1))
		fp.clock.Advance(time.Millisecond)
		waitFor(t, "the next create", func() bool { return fp.creates.Load() == int32(i+2) })
		waitFor(t, "it to fail", func() bool { return fp.m.Counts().CreateFailures == i+2 })
	}
	if err := fp.m.LastError(); err == nil || !errors.Is(err, err) {
		t.Errorf("LastError = %v", err)
	}
	fp.fail.Store(false)
	fp.clock.Advance(4 * time.Second)
	fp.waitReady(t, 1)
	if err := fp.m.LastError(); err != nil {
		t.Errorf("LastError after a success = %v, want nil", err)
	}
	if c := fp.m.Counts(); c.CreateFailures != 0 {
		t.Errorf("counts = %+v, want no failures", c)
	}
}

func TestColdStartFailureFailsTheRequest(t *testing.T) {
	fp := newFakePool(t, Spec{MaxConcurrentSessions: 2, ReadySessionInstances: 0}, Options{})
	fp.fail.Store(true)
	fp.start(t)
	_, err := fp.m.Acquire(context.Background(), "alice")
	if !errkind.Is(err, errkind.Unavailable) {
		t.Fatalf("Acquire with failing creates: %v, want Unavailable", err)
	}
	if msg, ok := errkind.PublicMessage(err); !ok || msg == "" {
		t.Errorf("no public message: %v", err)
	}
}

func TestAcquireGivingUpLeavesNoLease(t *testing.T) {
	fp := newFakePool(t, Spec{MaxConcurrentSessions: 2, ReadySessionInstances: 0}, Options{})
	fp.block.Store(true)
	fp.start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := fp.m.Acquire(ctx, "alice"); !errkind.Is(err, errkind.Timeout) {
		t.Fatalf("Acquire past its deadline: %v, want Timeout", err)
	}
	fp.unblockCreates()
	// The cold start finishes with nobody waiting: the sandbox stays ready (surplus).
	waitFor(t, "the create to finish", func() bool { c := fp.m.Counts(); return c.Pending == 0 && c.Ready == 1 })
	if s := fp.m.Sessions(); len(s) != 0 {
		t.Errorf("sessions = %+v, want none", s)
	}
	// Surplus goes once demand has been quiet for a while.
	fp.clock.Advance(surplusGrace)
	waitFor(t, "the surplus to be destroyed", func() bool { return fp.m.Counts().Ready == 0 && len(fp.live(t)) == 0 })
}

func TestPrepare(t *testing.T) {
	var calls atomic.Int32
	failPrepare := errors.New("warm-up failed")
	fp := newFakePool(t, Spec{MaxConcurrentSessions: 2, ReadySessionInstances: 1}, Options{
		Prepare: func(ctx context.Context, info sandbox.Info, agent *agentapi.Client) error {
			if calls.Add(1) == 1 {
				return failPrepare
			}
			_, err := agent.Health(ctx)
			return err
		},
	})
	fp.start(t)
	waitFor(t, "the prepare failure", func() bool { return errors.Is(fp.m.LastError(), failPrepare) })
	waitFor(t, "the failed sandbox to be destroyed", func() bool { return len(fp.live(t)) == 0 })
	fp.clock.Advance(time.Second)
	fp.waitReady(t, 1)
	if calls.Load() != 2 {
		t.Errorf("Prepare called %d times, want 2", calls.Load())
	}
}

func TestStartDestroysLeftovers(t *testing.T) {
	fp := newFakePool(t, Spec{MaxConcurrentSessions: 2, ReadySessionInstances: 0}, Options{})
	ctx := context.Background()
	mine, err := fp.rt.Create(ctx, sandbox.Spec{RootFS: "/", Labels: map[string]string{LabelPool: "test-pool"}})
	if err != nil {
		t.Fatal(err)
	}
	other, err := fp.rt.Create(ctx, sandbox.Spec{RootFS: "/", Labels: map[string]string{LabelPool: "other-pool"}})
	if err != nil {
		t.Fatal(err)
	}
	defer fp.rt.Destroy(ctx, other.ID)
	fp.start(t)
	if ids := fp.live(t); !slices.Equal(ids, []string{other.ID}) {
		t.Errorf("after Start: sandboxes %v, want only %s (the other pool's; %s was ours)", ids, other.ID, mine.ID)
	}
}

func TestCloseStopsEverything(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	fp := newFakePool(t, Spec{MaxConcurrentSessions: 4, ReadySessionInstances: 2}, Options{})
	fp.start(t)
	fp.waitReady(t, 2)
	la := acquire(t, fp.m, "a")
	lb := acquire(t, fp.m, "b")
	pids := []int{fp.info(t, la.Session.SandboxID).PID, fp.info(t, lb.Session.SandboxID).PID}
	// A create in flight during Close is abandoned and its sandbox destroyed.
	fp.block.Store(true)
	waitFor(t, "a refill create in flight", func() bool { return fp.m.Counts().Pending > 0 })

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := fp.m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if ids := fp.live(t); len(ids) != 0 {
		t.Errorf("sandboxes left after Close: %v", ids)
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("agent process %d still exists after Close (kill: %v)", pid, err)
		}
	}
	la.Release() // after Close: no effect, no hang
	if _, err := fp.m.Acquire(context.Background(), "c"); !errkind.Is(err, errkind.Unavailable) {
		t.Errorf("Acquire after Close: %v, want Unavailable", err)
	}
	if err := fp.m.Close(ctx); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := fp.m.Start(ctx); err == nil {
		t.Error("Start after Close succeeded")
	}
	lb.Release()
}

func TestCloseBeforeStart(t *testing.T) {
	fp := newFakePool(t, Spec{MaxConcurrentSessions: 1}, Options{})
	if err := fp.m.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := fp.m.Acquire(context.Background(), "a"); !errkind.Is(err, errkind.Unavailable) {
		t.Errorf("Acquire on a closed pool: %v, want Unavailable", err)
	}
}

func TestNewValidates(t *testing.T) {
	if _, err := New(Spec{Name: "x"}, Options{}); !errkind.Is(err, errkind.Invalid) {
		t.Errorf("New with a bad spec: %v, want Invalid", err)
	}
	good := Spec{Name: "good", MaxConcurrentSessions: 1, CooldownPeriod: time.Second}
	if _, err := New(good, Options{RootFS: "/"}); !errkind.Is(err, errkind.Invalid) {
		t.Errorf("New without a runtime: %v, want Invalid", err)
	}
	m, err := New(good, Options{Runtime: &sandboxtest.Fake{}, RootFS: "/"})
	if err != nil {
		t.Fatal(err)
	}
	if m.Spec().LifecycleType != LifecycleTimed {
		t.Errorf("Spec().LifecycleType = %q, want the default", m.Spec().LifecycleType)
	}
	if _, err := m.Acquire(context.Background(), "a"); !errkind.Is(err, errkind.Unavailable) {
		t.Errorf("Acquire before Start: %v, want Unavailable", err)
	}
	m.Close(context.Background())
}

func TestCloseFailsWaitingRequests(t *testing.T) {
	fp := newFakePool(t, Spec{MaxConcurrentSessions: 2, ReadySessionInstances: 0}, Options{})
	fp.block.Store(true)
	fp.start(t)
	errc := make(chan error, 1)
	go func() {
		_, err := fp.m.Acquire(context.Background(), "alice")
		errc <- err
	}()
	waitFor(t, "a request waiting for a cold start", func() bool { return fp.m.Counts().Waiting == 1 })
	if err := fp.m.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errkind.Is(err, errkind.Unavailable) {
		t.Errorf("Acquire waiting during Close: %v, want Unavailable", err)
	}
}
