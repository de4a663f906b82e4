package agent

import (
	"bytes"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
)

func TestRing(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		size   int
		writes []string
		tail   int
		want   string
	}{
		{"empty", 8, nil, 0, ""},
		{"partial", 8, []string{"abc"}, 0, "abc"},
		{"partial tail", 8, []string{"abc", "de"}, 2, "de"},
		{"tail above kept", 8, []string{"abc"}, 100, "abc"},
		{"exactly full", 8, []string{"abcdefgh"}, 0, "abcdefgh"},
		{"full by pieces", 8, []string{"abcd", "efgh"}, 0, "abcdefgh"},
		{"wrapped", 8, []string{"abcdef", "ghij"}, 0, "cdefghij"},
		{"wrapped tail across the seam", 8, []string{"abcdef", "ghij"}, 5, "fghij"},
		{"wrapped tail before the seam", 8, []string{"abcdef", "ghij"}, 2, "ij"},
		{"one write larger than the ring", 8, []string{"0123456789abc"}, 0, "56789abc"},
		{"large write after wrap", 8, []string{"abc", "0123456789xyz", "Q"}, 0, "6789xyzQ"},
		{"many small writes", 4, []string{"a", "b", "c", "d", "e", "f"}, 0, "cdef"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRing(tc.size)
			for _, w := range tc.writes {
				if n, err := r.Write([]byte(w)); n != len(w) || err != nil {
					t.Fatalf("Write(%q) = %d, %v", w, n, err)
				}
			}
			if got := string(r.tail(tc.tail)); got != tc.want {
				t.Errorf("tail(%d) = %q, want %q", tc.tail, got, tc.want)
			}
		})
	}
}

func TestLogsBounded(t *testing.T) {
	t.Parallel()
	ta := startAgent(t, func(c *Config) {
		c.Command = []string{"sh", "-c", "echo first; head -c 3000000 /dev/zero | tr '\\0' x; echo; echo END"}
	})
	waitLogs(t, ta, "END\n")
	b, err := ta.client.Logs(ctxFor(t, 5*time.Second), 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != agentapi.LogBufferSize || !bytes.HasSuffix(b, []byte("xxx\nEND\n")) || bytes.Contains(b, []byte("first")) {
		t.Errorf("logs: %d bytes ending %q; want the last %d bytes", len(b), b[max(0, len(b)-16):], agentapi.LogBufferSize)
	}
	b, err = ta.client.Logs(ctxFor(t, 5*time.Second), 6)
	if err != nil || string(b) != "x\nEND\n" {
		t.Errorf("tail 6 = %q, %v", b, err)
	}
	// The main command has exited; health says how.
	deadline := time.Now().Add(5 * time.Second)
	for {
		h, err := ta.client.Health(ctxFor(t, 5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if h.Main != nil && !h.Main.Running {
			if h.Main.ExitCode == nil || *h.Main.ExitCode != 0 || h.Main.PID == 0 || h.Main.Signal != "" {
				t.Errorf("main state %+v, want exited with 0", *h.Main)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("main still reported running: %+v", h.Main)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestMainState(t *testing.T) {
	t.Parallel()
	ta := startAgent(t, func(c *Config) { c.Command = []string{"sh", "-c", "pwd; id -u; exec sleep 100"} })
	h, err := ta.client.Health(ctxFor(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if h.Main == nil || !h.Main.Running || h.Main.PID <= 0 || h.Main.ExitCode != nil {
		t.Fatalf("main = %+v, want running", h.Main)
	}
	want := ta.dataDir + "\n"
	if isRoot() {
		want += "1000\n"
	}
	waitLogs(t, ta, want)
	if err := killPid(h.Main.PID); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		h, err := ta.client.Health(ctxFor(t, 5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if !h.Main.Running {
			if h.Main.ExitCode == nil || *h.Main.ExitCode != -1 || h.Main.Signal != "SIGKILL" {
				t.Errorf("main state %+v, want killed by SIGKILL", *h.Main)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("main still reported running: %+v", h.Main)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestMainNotFound(t *testing.T) {
	t.Parallel()
	ta := startAgent(t, func(c *Config) { c.Command = []string{"no-such-main-command"} })
	h, err := ta.client.Health(ctxFor(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if h.Main == nil || h.Main.Running || h.Main.ExitCode == nil || *h.Main.ExitCode != 127 {
		t.Errorf("main = %+v, want not running, exit code 127", h.Main)
	}
	b, err := ta.client.Logs(ctxFor(t, 5*time.Second), 0)
	if err != nil || !strings.Contains(string(b), "not found") {
		t.Errorf("logs = %q, %v; want the reason", b, err)
	}
}

func TestLogsWithoutMain(t *testing.T) {
	t.Parallel()
	ta := startAgent(t, nil)
	b, err := ta.client.Logs(ctxFor(t, 5*time.Second), 10)
	if err != nil || len(b) != 0 {
		t.Errorf("logs without a main command = %q, %v; want empty", b, err)
	}
}

// TestLogsConsole: GET /v1/logs reads the main command's console, else the kernel's.
func TestLogsConsole(t *testing.T) {
	t.Parallel()
	mainLogs, kernelLogs := newRing(64), newRing(64)
	mainLogs.Write([]byte("main"))
	kernelLogs.Write([]byte("kernel"))
	for _, tc := range []struct {
		name string
		a    *Agent
		want string
	}{
		{"neither", &Agent{}, ""},
		{"kernel only", &Agent{kernel: &kernelSup{logs: kernelLogs}}, "kernel"},
		{"main only", &Agent{main: &mainProc{logs: mainLogs}}, "main"},
		{"both", &Agent{main: &mainProc{logs: mainLogs}, kernel: &kernelSup{logs: kernelLogs}}, "main"},
	} {
		rec := httptest.NewRecorder()
		if err := tc.a.handleLogs(rec, httptest.NewRequest("GET", agentapi.PathLogs+"?tail=0", nil)); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := rec.Body.String(); got != tc.want {
			t.Errorf("%s: logs %q, want %q", tc.name, got, tc.want)
		}
	}
}
