package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/controlplane/controlplanetest"
	"github.com/sessiond/sessiond/internal/sandbox"
	"github.com/sessiond/sessiond/internal/sandbox/sandboxtest"
)

// TestMain lets a test run this binary as `sessiond` (a server process it can SIGKILL):
// with SESSIOND_TEST_MAIN set, the arguments after "--" are sessiond's. It removes the
// agent that controlplanetest built, if any, after the tests.
func TestMain(m *testing.M) {
	if os.Getenv("SESSIOND_TEST_MAIN") == "1" {
		i := slices.Index(os.Args, "--")
		os.Args = append([]string{"sessiond"}, os.Args[i+1:]...)
		main()
		os.Exit(0)
	}
	code := m.Run()
	if d := controlplanetest.AgentDir(); d != "" {
		os.RemoveAll(d)
	}
	os.Exit(code)
}

// serverProc is `sessiond serve` in a process of its own.
type serverProc struct {
	cmd  *exec.Cmd
	base string // http://127.0.0.1:PORT/pools/<pool>
	out  *lockedWriter
	done chan error
}

func startServer(t *testing.T, data, cfgFile, pool string) *serverProc {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	out := &lockedWriter{w: &bytes.Buffer{}}
	cmd := exec.Command(os.Args[0], "-test.run=^$", "--", "-data-dir", data, "serve", "-listen", addr, "-config", cfgFile, "-shutdown-timeout", "30s")
	cmd.Env = append(os.Environ(), "SESSIOND_TEST_MAIN=1")
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &serverProc{cmd: cmd, base: "http://" + addr + "/pools/" + pool, out: out, done: make(chan error, 1)}
	go func() { s.done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-s.done
		if t.Failed() {
			t.Logf("server output:\n%s", s.output())
		}
	})
	deadline := time.Now().Add(sandboxtest.Timeout(time.Minute))
	for {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			return s
		}
		select {
		case err := <-s.done:
			s.done <- err
			t.Fatalf("server exited: %v\n%s", err, s.output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("server not answering: %v\n%s", err, s.output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *serverProc) output() string { return s.out.String() }

type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.String()
}

// execute runs code in identifier's session through the legacy API and returns its
// result and stdout.
func (s *serverProc) execute(ctx context.Context, identifier, code string) (result, stdout string, err error) {
	body, _ := json.Marshal(map[string]any{"properties": map[string]any{"codeInputType": "inline", "executionType": "synchronous", "code": code}})
	req, _ := http.NewRequestWithContext(ctx, "POST", s.base+"/code/execute?api-version=2024-02-02-preview&identifier="+identifier, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return "", "", fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	var r struct {
		Properties struct {
			Status string          `json:"status"`
			Stdout string          `json:"stdout"`
			Stderr string          `json:"stderr"`
			Result json.RawMessage `json:"result"`
		} `json:"properties"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return "", "", err
	}
	if r.Properties.Status != "Success" {
		return "", "", fmt.Errorf("execution %s: %s", r.Properties.Status, r.Properties.Stderr)
	}
	return strings.Trim(string(r.Properties.Result), `"`), r.Properties.Stdout, nil
}

// sessions returns the pool's sessions: identifier → sandbox ID and expiry.
func (s *serverProc) sessions(t *testing.T) map[string][2]string {
	t.Helper()
	resp, err := http.Get(s.base + "/listSessions?api-version=2025-02-02-preview")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r struct {
		Sessions []struct{ Identifier, ExpireAt, Etag string } `json:"sessions"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatal(err)
	}
	out := map[string][2]string{}
	for _, x := range r.Sessions {
		out[x.Identifier] = [2]string{x.Etag, x.ExpireAt}
	}
	return out
}

// TestRestart kills sessiond with SIGKILL while sessions execute, starts it again on the
// same data directory, and checks that every allocated session answers with its variables
// and files, that expiry runs on from the stored times, and that no sandbox or mount is
// left over; then that SIGTERM lets an execution in flight finish and leaves the sessions
// for the next start.
func TestRestart(t *testing.T) {
	env := newRealEnv(t)
	img, data := env.img, env.g.DataDir
	rt := env.runtime(t, "runc")
	// Whatever happens, nothing survives the test.
	defer func() {
		ctx := context.Background()
		infos, _ := rt.List(ctx)
		for _, i := range infos {
			rt.Destroy(ctx, i.ID)
		}
	}()
	cfg := filepath.Join(data, "pools.yaml")
	os.WriteFile(cfg, []byte(`pools:
- name: restart
  properties:
    containerType: PythonLTS
    scaleConfiguration: {maxConcurrentSessions: 4, readySessionInstances: 1}
    dynamicPoolConfiguration:
      lifecycleConfiguration: {lifecycleType: Timed, cooldownPeriodInSeconds: 600}
  sessiond: {runtime: runc, image: `+img.Name+`, warmupCode: "None"}
`), 0o644)
	ctx, cancel := context.WithTimeout(context.Background(), sandboxtest.Timeout(4*time.Minute))
	defer cancel()

	a := startServer(t, data, cfg, "restart")
	for _, step := range []struct{ id, code string }{
		{"alice", "x = 41\nopen('/mnt/data/keep.txt', 'w').write('kept by alice')"},
		{"robert", "y = 'robert'"},
	} {
		if _, _, err := a.execute(ctx, step.id, step.code); err != nil {
			t.Fatalf("%s: %v", step.id, err)
		}
	}
	// An asynchronous execution that finishes while no server runs: it lives in the
	// session's agent, so the next server finds it.
	asyncReq, _ := http.NewRequestWithContext(ctx, "POST", a.base+"/executions?api-version=2025-10-02-preview&identifier=alice",
		strings.NewReader(`{"codeInputType": "Inline", "executionType": "Asynchronous", "code": "import time\ntime.sleep(1)\n'async done'"}`))
	asyncReq.Header.Set("Content-Type", "application/json")
	asyncReq.Header.Set("operation-id", "restart-op-1")
	if resp, err := http.DefaultClient.Do(asyncReq); err != nil || resp.StatusCode != 200 {
		t.Fatalf("asynchronous execution: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	before := a.sessions(t)
	var spare []string // ready sandboxes: not sessions, so the next start destroys them
	for len(spare) == 0 && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
		infos, _ := rt.List(ctx)
		for _, i := range infos {
			if i.ID != before["alice"][0] && i.ID != before["robert"][0] {
				spare = append(spare, i.ID)
			}
		}
	}

	// Load on robert while the server is killed.
	var wg sync.WaitGroup
	var ok atomic.Int32
	lctx, lcancel := context.WithCancel(ctx)
	for range 2 {
		wg.Go(func() {
			for lctx.Err() == nil {
				if _, _, err := a.execute(lctx, "robert", "y"); err == nil {
					ok.Add(1)
				}
			}
		})
	}
	for ok.Load() < 5 {
		time.Sleep(10 * time.Millisecond)
	}
	a.cmd.Process.Signal(syscall.SIGKILL)
	<-a.done
	a.done <- nil
	lcancel()
	wg.Wait()

	b := startServer(t, data, cfg, "restart")
	after := b.sessions(t)
	if after["alice"][0] != before["alice"][0] || after["robert"][0] != before["robert"][0] {
		t.Fatalf("sessions after the restart %v, want alice and robert on their sandboxes %v", after, before)
	}
	if after["alice"][1] != before["alice"][1] {
		t.Errorf("alice expires at %s after the restart, %s before: the cooldown must run on from the stored time", after["alice"][1], before["alice"][1])
	}
	if res, _, err := b.execute(ctx, "alice", "x + 1"); err != nil || res != "42" {
		t.Errorf("alice's variable after the restart: %q, %v", res, err)
	}
	if _, out, err := b.execute(ctx, "alice", "print(open('/mnt/data/keep.txt').read())"); err != nil || strings.TrimSpace(out) != "kept by alice" {
		t.Errorf("alice's file after the restart: %q, %v", out, err)
	}
	if res, _, err := b.execute(ctx, "alice", "'after the async one'"); err != nil || res != "after the async one" {
		t.Errorf("alice after the async execution: %q, %v", res, err)
	}
	if resp, err := http.Get(b.base + "/executions/restart-op-1?api-version=2025-10-02-preview&identifier=alice"); err != nil {
		t.Error(err)
	} else {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), `"status":"Succeeded"`) || !strings.Contains(string(body), "async done") {
			t.Errorf("the asynchronous execution after the restart: %d %s", resp.StatusCode, body)
		}
	}
	if res, _, err := b.execute(ctx, "robert", "y"); err != nil || res != "robert" {
		t.Errorf("robert's variable after the restart: %q, %v", res, err)
	}
	infos, _ := rt.List(ctx)
	mounts, _ := os.ReadFile("/proc/self/mounts")
	for _, id := range spare {
		if slices.ContainsFunc(infos, func(i sandbox.Info) bool { return i.ID == id }) {
			t.Errorf("sandbox %s, ready when the server was killed, survived the restart", id)
		}
		if bytes.Contains(mounts, []byte(id)) {
			t.Errorf("a mount of sandbox %s survived the restart", id)
		}
	}

	// SIGTERM: the execution in flight finishes; the sessions stay for the next start.
	type result struct {
		res string
		err error
	}
	resc := make(chan result, 1)
	go func() {
		res, _, err := b.execute(ctx, "alice", "import time\ntime.sleep(2)\nx")
		resc <- result{res, err}
	}()
	time.Sleep(500 * time.Millisecond)
	b.cmd.Process.Signal(syscall.SIGTERM)
	if r := <-resc; r.err != nil || r.res != "41" {
		t.Errorf("execution in flight at SIGTERM: %q, %v; want it to finish", r.res, r.err)
	}
	select {
	case err := <-b.done:
		b.done <- err
		if err != nil {
			t.Errorf("server exit after SIGTERM: %v", err)
		}
	case <-time.After(sandboxtest.Timeout(time.Minute)):
		t.Fatal("server did not exit after SIGTERM")
	}
	c := startServer(t, data, cfg, "restart")
	if res, _, err := c.execute(ctx, "alice", "x"); err != nil || res != "41" {
		t.Errorf("alice after a SIGTERM restart: %q, %v", res, err)
	}
}
