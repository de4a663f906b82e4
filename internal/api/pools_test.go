package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/pool"
	"github.com/sessiond/sessiond/internal/proxy"
	"github.com/sessiond/sessiond/internal/sandbox"
	"github.com/sessiond/sessiond/internal/sandbox/sandboxtest"
)

// testPools is a double of the API's consumer interface, not a pool: every new identifier
// gets a fresh sandboxtest.Fake sandbox (a real sessiond-agent process on the host), with
// a python3 ipykernel for code-interpreter pools. Nothing is pre-warmed, nothing expires.
type testPools map[string]*testPool

func (p testPools) Pool(name string) (Pool, bool) {
	tp, ok := p[name]
	if !ok {
		return nil, false
	}
	return tp, true
}

// testPool implements Pool over a Fake runtime. Function fields steer errors.
type testPool struct {
	spec pool.Spec
	rt   *sandboxtest.Fake
	env  []string // added to every sandbox's environment
	// acquireHook, if set, runs at the start of Acquire; an error fails it.
	acquireHook func(identifier string) error

	mu sync.Mutex
	// sessions by identifier. Guarded by mu; held across a sandbox create, which
	// serializes creates (tests send one request at a time per pool).
	sessions map[string]*testSession
	// n numbers sandboxes. Guarded by mu.
	n int
}

type testSession struct {
	info  pool.SessionInfo
	agent *agentapi.Client
}

// testEpoch is when the double says its pools were created and updated.
var testEpoch = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func (p *testPool) Spec() pool.Spec { return p.spec }

func (p *testPool) Acquire(ctx context.Context, identifier string) (*pool.Lease, error) {
	if p.acquireHook != nil {
		if err := p.acquireHook(identifier); err != nil {
			return nil, err
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if s, ok := p.sessions[identifier]; ok {
		return p.leaseLocked(s, false), nil
	}
	if p.rt == nil {
		return nil, errkind.New(errkind.Unavailable, "test pool %s has no runtime", p.spec.Name)
	}
	if len(p.sessions) >= p.spec.MaxConcurrentSessions {
		return nil, errkind.New(errkind.LimitExceeded, "session pool %s is at its maximum of %d concurrent sessions", p.spec.Name, p.spec.MaxConcurrentSessions)
	}
	p.n++
	spec := sandbox.Spec{ID: fmt.Sprintf("%s-%d", p.spec.Name, p.n), Image: "host", RootFS: "/", Env: p.env,
		StartTimeout: sandboxtest.Timeout(30 * time.Second)}
	if p.spec.ContainerType == pool.PythonLTS {
		spec.Kernel = "python3"
	}
	info, err := p.rt.Create(ctx, spec)
	if err != nil {
		return nil, fmt.Errorf("creating test sandbox: %w", err)
	}
	now := time.Now().UTC()
	s := &testSession{agent: p.rt.Agent(info.ID), info: pool.SessionInfo{Identifier: identifier, SandboxID: info.ID,
		State: pool.StateAllocated, CreatedAt: now, LastAccessedAt: now, ExpiresAt: now.Add(p.spec.CooldownPeriod)}}
	if p.sessions == nil {
		p.sessions = map[string]*testSession{}
	}
	p.sessions[identifier] = s
	return p.leaseLocked(s, true), nil
}

// leaseLocked returns a lease on s. Preconditions: p.mu is held.
func (p *testPool) leaseLocked(s *testSession, isNew bool) *pool.Lease {
	return pool.NewLease(s.info, isNew, s.agent, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		now := time.Now().UTC()
		s.info.LastAccessedAt, s.info.ExpiresAt = now, now.Add(p.spec.CooldownPeriod)
	})
}

func (p *testPool) Get(ctx context.Context, identifier string) (*pool.Lease, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.sessions[identifier]
	if !ok {
		return nil, errkind.New(errkind.NotFound, "no session %q", identifier)
	}
	return p.leaseLocked(s, false), nil
}

func (p *testPool) Delete(ctx context.Context, identifier string) error {
	p.mu.Lock()
	s, ok := p.sessions[identifier]
	delete(p.sessions, identifier)
	p.mu.Unlock()
	if !ok {
		return errkind.New(errkind.NotFound, "no session %q", identifier)
	}
	return p.rt.Destroy(ctx, s.info.SandboxID)
}

func (p *testPool) Sessions() []pool.SessionInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []pool.SessionInfo
	for _, s := range p.sessions {
		out = append(out, s.info)
	}
	return out
}

// Metadata returns fixed values: the double describes no real image.
func (p *testPool) Metadata(ctx context.Context) (pool.Metadata, error) {
	md := pool.Metadata{
		Runtimes:  []pool.NameVersion{{Name: "python", Version: "3.12.7"}},
		Packages:  []pool.NameVersion{{Name: "numpy", Version: "1.26.4"}, {Name: "pandas", Version: "2.2.2"}},
		CreatedAt: testEpoch, UpdatedAt: testEpoch,
	}
	if p.spec.ContainerType == pool.PythonLTS {
		md.Kernel = &agentapi.KernelInfo{State: "idle", Name: "ipykernel", Version: "6.29.5", Language: "python", LanguageVersion: "3.12.7"}
	}
	return md, nil
}

// close destroys the pool's sandboxes.
func (p *testPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, s := range p.sessions {
		p.rt.Destroy(context.Background(), s.info.SandboxID)
		delete(p.sessions, id)
	}
}

// testSpec returns a pool spec for tests.
func testSpec(name string, ct pool.ContainerType) pool.Spec {
	s := pool.Spec{Name: name, ContainerType: ct, MaxConcurrentSessions: 10, ReadySessionInstances: 0,
		LifecycleType: "Timed", CooldownPeriod: 5 * time.Minute, ExecutionTimeoutCap: pool.DefaultExecutionTimeoutCap}
	if ct == pool.CustomContainer {
		// A Fake sandbox shares the host's loopback: the test's container listens there.
		s.Container = &pool.ContainerSpec{Image: "echo", TargetPort: containerPort()}
	}
	return s
}

// container is the "container" of custom pools over the Fake runtime: an HTTP server on the
// host's loopback (which Fake sandboxes share) that echoes what reached it, without
// anything that varies between runs.
var container struct {
	once sync.Once
	srv  *httptest.Server
}

func containerPort() int {
	container.once.Do(func() {
		container.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(map[string]any{
				"method": r.Method, "path": r.URL.EscapedPath(), "query": r.URL.RawQuery, "body": string(body),
				"identifier": r.Header.Get(proxy.SessionIdentifierHeader), "authorization": r.Header.Get("Authorization"),
				"forwardedProto": r.Header.Get("X-Forwarded-Proto"),
			})
		}))
	})
	return container.srv.Listener.Addr().(*net.TCPAddr).Port
}

// env is what the real-sandbox tests need of the host, found once.
var env struct {
	once   sync.Once
	agent  string // the built sessiond-agent
	python string // a python3 with ipykernel, numpy and matplotlib; "" if none
	err    error
	dir    string
}

// hostPackages are the Debian packages the kernel tests need.
const hostPackages = "python3-ipykernel python3-numpy python3-matplotlib"

// setupEnv builds the agent and finds a python3 that has the kernel packages.
func setupEnv() {
	env.dir, env.err = os.MkdirTemp("", "sessiond-api-test-")
	if env.err != nil {
		return
	}
	// The agent runs user code as uid 1000 when the tests run as root; it must reach the
	// sandboxes' directories.
	os.Chmod(env.dir, 0o755)
	env.agent, env.err = sandboxtest.BuildAgent(filepath.Join(env.dir))
	if env.err != nil {
		return
	}
	// pyenv and virtualenv shims often come first in PATH and lack the Debian packages.
	for _, py := range []string{"/usr/bin/python3", "python3"} {
		if exec.Command(py, "-c", "import ipykernel, numpy, matplotlib").Run() == nil {
			env.python, _ = exec.LookPath(py)
			return
		}
	}
}

// newTestPools returns pools "python" (PythonLTS), "shell" (Shell) and "custom"
// (CustomContainer) over a Fake runtime; withKernel skips (or fails when
// SESSIOND_TEST_REQUIRE=1) if the host cannot run an ipykernel.
func newTestPools(t *testing.T, withKernel bool) testPools {
	t.Helper()
	if testing.Short() {
		t.Skip("starts real agents")
	}
	env.once.Do(setupEnv)
	if env.err != nil {
		sandboxtest.SkipOrFail(t, "test environment: %v", env.err)
	}
	if withKernel && env.python == "" {
		sandboxtest.SkipOrFail(t, "no python3 with ipykernel, numpy and matplotlib (Debian: apt-get install %s)", hostPackages)
	}
	state, err := os.MkdirTemp(env.dir, "state-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(state, 0o755)
	rt := &sandboxtest.Fake{AgentBinary: env.agent, StateDir: state}
	var penv []string
	if env.python != "" {
		penv = []string{"PATH=" + filepath.Dir(env.python) + ":/usr/local/bin:/usr/bin:/bin"}
	}
	tp := testPools{
		"python": {spec: testSpec("python", pool.PythonLTS), rt: rt, env: penv},
		"shell":  {spec: testSpec("shell", pool.Shell), rt: rt, env: penv},
		"custom": {spec: testSpec("custom", pool.CustomContainer), rt: rt},
	}
	t.Cleanup(func() {
		for _, p := range tp {
			p.close()
		}
		os.RemoveAll(state)
	})
	return tp
}

func TestMain(m *testing.M) {
	before := liveGoroutines()
	code := m.Run()
	if env.dir != "" {
		os.RemoveAll(env.dir)
	}
	if container.srv != nil {
		container.srv.Close()
	}
	if code == 0 {
		code = checkGoroutines(before)
	}
	os.Exit(code)
}

// checkGoroutines fails the run if goroutines outlive the tests (STYLE §9.2 item 11):
// every request's work, lease and agent call must end with the request.
func checkGoroutines(before int) int {
	http.DefaultClient.CloseIdleConnections()
	deadline := time.Now().Add(5 * time.Second)
	for liveGoroutines() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			fmt.Fprintf(os.Stderr, "goroutines outlived the tests (%d before):\n%s\n", before, buf[:runtime.Stack(buf, true)])
			return 1
		}
		time.Sleep(10 * time.Millisecond)
	}
	return 0
}

// liveGoroutines counts goroutines other than this one and the runtime's and testing
// package's own (the signal loop that fuzzing starts).
func liveGoroutines() int {
	buf := make([]byte, 1<<20)
	n := 0
	for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
		if !strings.Contains(g, "os/signal.") && !strings.Contains(g, "liveGoroutines") {
			n++
		}
	}
	return n
}
