package proxy

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/sandbox"
	"github.com/sessiond/sessiond/internal/sandbox/sandboxtest"
)

// agentBin is the sessiond-agent built for this test binary.
var agentBin string

func TestMain(m *testing.M) {
	sandboxtest.MainWithAgent(m, &agentBin, nil)
}

// fakeSandbox is a sandbox of the Fake runtime: a real agent process on the host, whose
// loopback is the host's, so servers of the test process play the container.
type fakeSandbox struct {
	rt   *sandboxtest.Fake
	info sandbox.Info
	ag   *agentapi.Client
}

func newSandbox(t *testing.T, agentArgs ...string) *fakeSandbox {
	t.Helper()
	dir, err := os.MkdirTemp("", "proxy-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755) // for the agent's uid 1000
	rt := &sandboxtest.Fake{AgentBinary: agentBin, StateDir: filepath.Join(dir, "state"), AgentArgs: agentArgs}
	info, err := rt.Create(context.Background(), sandbox.Spec{RootFS: "/"})
	if err != nil {
		t.Fatalf("creating a sandbox: %v", err)
	}
	s := &fakeSandbox{rt: rt, info: info, ag: rt.Agent(info.ID)}
	t.Cleanup(s.destroy)
	return s
}

func (s *fakeSandbox) destroy() { s.rt.Destroy(context.Background(), s.info.ID) }

// front is sessiond's side in miniature: an HTTP server that strips a pool prefix and
// forwards through a Proxy to a port of one sandbox, rendering errors as a status (by
// kind) and the public message, and keeping them for the test.
type front struct {
	*httptest.Server
	mu sync.Mutex
	// errs are the errors rendered so far. Guarded by mu.
	errs []error
}

const poolPrefix = "/pools/p1"

func newFront(t *testing.T, p *Proxy, port int, resolve func(*http.Request) (*agentapi.Client, string, error)) *front {
	t.Helper()
	f := &front{}
	h := p.Handler(port, resolve, func(w http.ResponseWriter, r *http.Request, err error) {
		f.mu.Lock()
		f.errs = append(f.errs, err)
		f.mu.Unlock()
		status := map[errkind.Kind]int{errkind.Unavailable: 503, errkind.Timeout: 504, errkind.LimitExceeded: 429, errkind.Invalid: 400}[errkind.Of(err)]
		if status == 0 {
			status = 500
		}
		msg, _ := errkind.PublicMessage(err)
		http.Error(w, msg, status)
	})
	f.Server = httptest.NewServer(http.StripPrefix(poolPrefix, h))
	t.Cleanup(f.Close)
	return f
}

// lastErr returns the last error rendered, or nil.
func (f *front) lastErr() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.errs) == 0 {
		return nil
	}
	return f.errs[len(f.errs)-1]
}

// to returns a resolve function that always picks the sandbox behind ag, for session
// "sess-1".
func to(ag *agentapi.Client) func(*http.Request) (*agentapi.Client, string, error) {
	return func(*http.Request) (*agentapi.Client, string, error) { return ag, "sess-1", nil }
}

func newProxy(t *testing.T, cfg Config) *Proxy {
	t.Helper()
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// backend starts the "container": an HTTP server on the loopback.
func backend(t *testing.T, h http.Handler) int {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().(*net.TCPAddr).Port
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// client is an HTTP client for the front whose idle connections are closed at the end.
func client(t *testing.T) *http.Client {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

func itoa(n int) string { return strconv.Itoa(n) }
