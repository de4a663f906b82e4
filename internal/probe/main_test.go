package probe

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/sandbox"
	"github.com/sessiond/sessiond/internal/sandbox/sandboxtest"
)

// agentBin is the sessiond-agent built for this test binary.
var agentBin string

func TestMain(m *testing.M) {
	sandboxtest.MainWithAgent(m, &agentBin, nil)
}

// newSandbox starts a sandbox of the Fake runtime, a real agent process on the host whose
// loopback is the host's, with command as its main process (none if empty).
func newSandbox(t *testing.T, command ...string) (*agentapi.Client, sandbox.Info) {
	t.Helper()
	// The agent runs the main process as uid 1000, which must reach its data directory.
	dir, err := os.MkdirTemp("", "probe-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	state := filepath.Join(dir, "state")
	f := &sandboxtest.Fake{AgentBinary: agentBin, StateDir: state}
	info, err := f.Create(context.Background(), sandbox.Spec{RootFS: "/", Command: command})
	if err != nil {
		t.Fatalf("creating a sandbox: %v", err)
	}
	t.Cleanup(func() { f.Destroy(context.Background(), info.ID) })
	return f.Agent(info.ID), info
}

// freePort returns a loopback port nothing listens on (for a server started later).
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func portOf(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
