package agent

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/loopback"
)

// TestMain fails the run if any test left a goroutine of the agent or of net/http
// behind, or left the process a child subreaper.
func TestMain(m *testing.M) {
	code := m.Run()
	if preloadDir != "" {
		os.RemoveAll(preloadDir)
	}
	if code == 0 {
		if err := checkLeaks(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

func checkLeaks() error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		leaked := leakedGoroutines()
		if len(leaked) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("leaked goroutines:\n\n%s", strings.Join(leaked, "\n\n"))
		}
		time.Sleep(20 * time.Millisecond)
	}
	var sub int32
	if err := unix.Prctl(unix.PR_GET_CHILD_SUBREAPER, uintptr(unsafe.Pointer(&sub)), 0, 0, 0); err != nil {
		return fmt.Errorf("reading the subreaper flag: %w", err)
	}
	if sub != 0 {
		return errors.New("the process is still a child subreaper after every agent stopped")
	}
	return nil
}

func leakedGoroutines() []string {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var leaked []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "agent.TestMain") || strings.Contains(g, "agent.leakedGoroutines") {
			continue
		}
		if strings.Contains(g, "sessiond/internal/agent.") || strings.Contains(g, "net/http.") {
			leaked = append(leaked, g)
		}
	}
	return leaked
}

// testAgent is an agent served in-process on a real unix socket.
type testAgent struct {
	*Agent
	client  *agentapi.Client
	base    string // temp dir holding data/ and the socket
	dataDir string
	stop    func() error // stops Serve and returns its error; idempotent
}

// newAgent returns an unstarted agent whose data dir is <base>/data and whose socket is
// in <base>/s, base being a fresh world-readable temp dir (so that uid 1000 can enter it).
func newAgent(t testing.TB, configure func(*Config)) (*Agent, string) {
	t.Helper()
	base := tempDir(t)
	cfg := Config{
		Socket:    filepath.Join(base, "s", agentapi.SocketName),
		DataDir:   filepath.Join(base, "data"),
		StopGrace: 2 * time.Second,
		Log:       slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	if configure != nil {
		configure(&cfg)
	}
	return New(cfg), base
}

// tempDir is a short (socket paths are limited to 107 bytes), world-traversable temp dir.
func tempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "agent")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// serve starts a and waits until it answers; the test's cleanup stops it and fails the
// test if Serve fails or does not return.
func serve(t testing.TB, a *Agent, base string) *testAgent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- a.Serve(ctx) }()
	c := agentapi.NewClient(a.cfg.Socket)
	var once sync.Once
	var serveErr error
	stop := func() error {
		once.Do(func() {
			c.Close()
			cancel()
			select {
			case serveErr = <-errc:
			case <-time.After(20 * time.Second):
				serveErr = errors.New("Serve did not return within 20s of its context ending")
			}
		})
		return serveErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	deadline := time.Now().Add(5 * time.Second)
	for {
		hctx, hcancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.Health(hctx)
		hcancel()
		if err == nil {
			break
		}
		select {
		case err := <-errc:
			t.Fatalf("Serve returned early: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent never answered: %v", err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	return &testAgent{Agent: a, client: c, base: base, dataDir: a.cfg.DataDir, stop: stop}
}

func startAgent(t testing.TB, configure func(*Config)) *testAgent {
	t.Helper()
	a, base := newAgent(t, configure)
	return serve(t, a, base)
}

// unixHTTPClient is a plain HTTP client for the agent's socket, for requests that
// agentapi.Client cannot make.
func unixHTTPClient(socket string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}
}

// waitLogs waits until the main process's log contains want.
func waitLogs(t testing.TB, ta *testAgent, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := ta.client.Logs(ctxFor(t, 5*time.Second), 0)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, []byte(want)) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("logs %q never contained %q", b, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func isRoot() bool { return os.Geteuid() == 0 }

func ctxFor(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// procState returns the state letter of pid from /proc ('Z' for a zombie), or 0 if pid
// does not exist.
func procState(pid int) byte {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return 0
	}
	return b[i+2]
}

// waitGone fails the test unless pid has vanished (died and been reaped) within d.
func waitGone(t testing.TB, pid int, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		st := procState(pid)
		if st == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("process %d still exists (state %c) after %v", pid, st, d)
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// pids parses the decimal numbers on each line of s.
func pids(t testing.TB, s string) []int {
	t.Helper()
	var out []int
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		n, err := strconv.Atoi(strings.TrimSpace(sc.Text()))
		if err != nil {
			t.Fatalf("output line %q is not a pid", sc.Text())
		}
		out = append(out, n)
	}
	return out
}

func TestHealth(t *testing.T) {
	t.Parallel()
	ta := startAgent(t, nil)
	h, err := ta.client.Health(ctxFor(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if h.Version != agentapi.Version || h.PID != os.Getpid() || h.UptimeMS < 0 || h.Main != nil {
		t.Errorf("Health = %+v, want version %s, pid %d, no main", h, agentapi.Version, os.Getpid())
	}
}

func TestUnknownEndpoint(t *testing.T) {
	t.Parallel()
	ta := startAgent(t, nil)
	hc := unixHTTPClient(ta.cfg.Socket)
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("http://agent/v1/nope")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("GET /v1/nope: status %d, want 404", resp.StatusCode)
	}
}

func TestSocket(t *testing.T) {
	t.Parallel()
	t.Run("stale socket replaced, mode 0600", func(t *testing.T) {
		t.Parallel()
		a, base := newAgent(t, nil)
		os.MkdirAll(filepath.Dir(a.cfg.Socket), 0o700)
		ln, err := net.Listen("unix", a.cfg.Socket)
		if err != nil {
			t.Fatal(err)
		}
		ln.(*net.UnixListener).SetUnlinkOnClose(false)
		ln.Close() // leaves a socket file nobody listens on
		ta := serve(t, a, base)
		fi, err := os.Stat(ta.cfg.Socket)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != 0o600 {
			t.Errorf("socket mode %v, want 0600", got)
		}
		if err := ta.stop(); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(ta.cfg.Socket); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket left behind after Serve returned: %v", err)
		}
	})
	t.Run("non-socket in the way", func(t *testing.T) {
		t.Parallel()
		a, _ := newAgent(t, nil)
		os.MkdirAll(filepath.Dir(a.cfg.Socket), 0o700)
		if err := os.WriteFile(a.cfg.Socket, []byte("keep"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := a.Serve(ctxFor(t, 5*time.Second)); err == nil {
			t.Fatal("Serve succeeded with a regular file at the socket path")
		}
		if b, _ := os.ReadFile(a.cfg.Socket); string(b) != "keep" {
			t.Errorf("the file at the socket path was changed to %q", b)
		}
	})
}

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"relative data dir", Config{DataDir: "data"}},
		{"unclean data dir", Config{DataDir: "/mnt/data/"}},
		{"root data dir", Config{DataDir: "/"}},
		{"relative home", Config{Home: "home"}},
		{"empty command", Config{Command: []string{""}}},
		{"negative grace", Config{StopGrace: -1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Socket = filepath.Join(t.TempDir(), "agent.sock")
			if err := New(tc.cfg).Serve(context.Background()); err == nil {
				t.Errorf("Serve accepted %+v", tc.cfg)
			}
		})
	}
}

func TestNewDefaults(t *testing.T) {
	t.Parallel()
	a := New(Config{})
	c := a.cfg
	if c.Socket != agentapi.SocketDir+"/"+agentapi.SocketName || c.DataDir != agentapi.DataDir ||
		c.UID != agentapi.UserUID || c.GID != agentapi.UserGID || c.Home != "/home/user" ||
		c.WorkDir != agentapi.DataDir || c.StopGrace != defaultStopGrace {
		t.Errorf("New(Config{}).cfg = %+v", c)
	}
}

// TestSignals sends real signals to the test process, so it must not run in parallel with
// other agents: each agent in the process receives them.
func TestSignals(t *testing.T) {
	ta := startAgent(t, func(c *Config) {
		c.Command = []string{"sh", "-c", `trap 'echo got-usr1' USR1; trap 'echo got-hup' HUP; echo ready; while :; do sleep 0.02; done`}
	})
	waitLogs(t, ta, "ready\n")
	syscall.Kill(os.Getpid(), syscall.SIGUSR1)
	waitLogs(t, ta, "got-usr1\n")
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	waitLogs(t, ta, "got-hup\n")

	h, err := ta.client.Health(ctxFor(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if h.Main == nil || !h.Main.Running {
		t.Fatalf("main = %+v, want running", h.Main)
	}
	start := time.Now()
	syscall.Kill(os.Getpid(), syscall.SIGTERM)
	if err := ta.stop(); err != nil {
		t.Fatalf("Serve after SIGTERM: %v", err)
	}
	// The main shell dies of SIGTERM at once; the grace period is not needed.
	if d := time.Since(start); d > ta.cfg.StopGrace {
		t.Errorf("shutdown on SIGTERM took %v", d)
	}
	waitGone(t, h.Main.PID, 2*time.Second)
}

func TestShutdownKillsStubbornMain(t *testing.T) {
	t.Parallel()
	ta := startAgent(t, func(c *Config) {
		c.StopGrace = 200 * time.Millisecond
		c.Command = []string{"sh", "-c", `trap '' TERM; echo ready; while :; do sleep 0.02; done`}
	})
	waitLogs(t, ta, "ready\n")
	h, err := ta.client.Health(ctxFor(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := ta.stop(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("shutdown took %v with a 200ms grace", d)
	}
	waitGone(t, h.Main.PID, 2*time.Second)
}

// TestShutdownKillsRunningExec checks that an exec outliving the grace period is killed
// and its handler waited for.
func TestShutdownKillsRunningExec(t *testing.T) {
	t.Parallel()
	ta := startAgent(t, func(c *Config) { c.StopGrace = 200 * time.Millisecond })
	pidFile := filepath.Join(ta.dataDir, "pid")
	done := make(chan error, 1)
	go func() {
		_, err := ta.client.Exec(context.Background(), agentapi.ExecRequest{Shell: "echo $$ > pid.tmp; mv pid.tmp pid; exec sleep 100"})
		done <- err
	}()
	pid := waitPids(t, pidFile)[0]
	start := time.Now()
	if err := ta.stop(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("shutdown took %v with a 200ms grace", d)
	}
	if err := <-done; err == nil {
		t.Error("exec succeeded although the agent shut down under it")
	}
	waitGone(t, pid, 2*time.Second)
}

// waitPids waits for the file at path, which a test command writes atomically (with mv),
// and returns the pids it lists, one a line.
func waitPids(t testing.TB, path string) []int {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := os.ReadFile(path)
		if err == nil {
			return pids(t, string(b))
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid file %s never written", path)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestLoopbackUp(t *testing.T) {
	if !isRoot() {
		t.Skip("needs root to create a network namespace")
	}
	// Not parallel: the thread this test leaves in a new network namespace ends with it,
	// and children forked from that thread earlier get their Pdeathsig (SIGKILL) then.
	errc := make(chan error, 1)
	go func() {
		// The thread enters a new network namespace and is never unlocked, so the
		// runtime discards it when this goroutine ends.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		up, err := loUp()
		if err != nil || up {
			errc <- fmt.Errorf("before: lo up=%v err=%v, want down", up, err)
			return
		}
		if err := loopback.Up(); err != nil {
			errc <- err
			return
		}
		if err := loopback.Up(); err != nil { // idempotent
			errc <- err
			return
		}
		if up, err := loUp(); err != nil || !up {
			errc <- fmt.Errorf("after: lo up=%v err=%v, want up", up, err)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func loUp() (bool, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return false, err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return false, err
	}
	return ifr.Uint16()&unix.IFF_UP != 0, nil
}
