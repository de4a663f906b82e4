package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/api"
	"github.com/sessiond/sessiond/internal/auth"
	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/events"
	"github.com/sessiond/sessiond/internal/pool"
	"github.com/sessiond/sessiond/internal/sandbox"
	"github.com/sessiond/sessiond/internal/sandbox/sandboxtest"
)

// TestLogFormat: with -log-format json every line the API logs is a JSON object with the
// request's fields; text stays key=value; anything else is a usage error.
func TestLogFormat(t *testing.T) {
	var buf bytes.Buffer
	log, err := newLogger(&buf, logFormatJSON, slog.LevelInfo)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api.New(api.Config{Pools: logsPools{}, Log: log}))
	defer srv.Close()
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	for _, target := range []string{"/healthz", "/pools/nope/executions?api-version=2025-10-02-preview&identifier=abcd", "/no/such/path"} {
		req, _ := http.NewRequest("GET", srv.URL+target, nil)
		req.Header.Set("traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	lines := 0
	sc := bufio.NewScanner(&buf)
	for sc.Scan() {
		lines++
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %d is not JSON: %v: %s", lines, err, sc.Text())
		}
		for _, k := range []string{"time", "level", "msg", "op", "status", "duration"} {
			if _, ok := m[k]; !ok {
				t.Errorf("line %d lacks %s: %s", lines, k, sc.Text())
			}
		}
		if m["msg"] != "request" || m["trace_id"] != traceID {
			t.Errorf("line %d: msg %v, trace_id %v; want the request line with the caller's trace ID", lines, m["msg"], m["trace_id"])
		}
	}
	if lines != 3 {
		t.Errorf("%d log lines for 3 requests", lines)
	}

	buf.Reset()
	log, _ = newLogger(&buf, logFormatText, slog.LevelInfo)
	log.Info("hello", "k", "v")
	if got := buf.String(); !strings.Contains(got, "msg=hello k=v") {
		t.Errorf("text log = %q", got)
	}
	err = run(context.Background(), []string{"-log-format", "xml", "version"}, io.Discard, io.Discard)
	var ue usageError
	if !errors.As(err, &ue) {
		t.Errorf("-log-format xml: %v, want a usage error", err)
	}
	var out bytes.Buffer
	if err := run(context.Background(), []string{"-log-format", "json", "version"}, &out, io.Discard); err != nil || !strings.Contains(out.String(), "sessiond") {
		t.Errorf("-log-format json version: %v %q", err, out.String())
	}
}

// logsPool is a pool as the API sees it; its one session, if it has one, is a real agent
// (sandboxtest.Fake) whose main process prints numbered lines.
type logsPool struct {
	spec  pool.Spec
	lease func() *pool.Lease // nil: no session
}

func (p *logsPool) Spec() pool.Spec { return p.spec }
func (p *logsPool) Acquire(ctx context.Context, identifier string) (*pool.Lease, error) {
	return nil, errkind.New(errkind.Unavailable, "no sandboxes")
}

func (p *logsPool) Get(ctx context.Context, identifier string) (*pool.Lease, error) {
	if p.lease == nil || identifier != "console-1" {
		return nil, errkind.New(errkind.NotFound, "no session %q", identifier)
	}
	return p.lease(), nil
}

func (p *logsPool) Delete(ctx context.Context, identifier string) error {
	return errkind.New(errkind.NotFound, "no session %q", identifier)
}
func (p *logsPool) Sessions() []pool.SessionInfo                        { return nil }
func (p *logsPool) Metadata(ctx context.Context) (pool.Metadata, error) { return pool.Metadata{}, nil }

type logsPools map[string]*logsPool

func (p logsPools) Pool(name string) (api.Pool, bool) {
	cp, ok := p[name]
	if !ok {
		return nil, false
	}
	return cp, true
}

// consoleSession starts a real agent whose main process prints lines 1..n, and returns a
// lease factory for it.
func consoleSession(t *testing.T, n int) func() *pool.Lease {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a real agent")
	}
	dir, err := os.MkdirTemp("/tmp", "sdl-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir) })
	agent, err := sandboxtest.BuildAgent(dir)
	if err != nil {
		t.Fatal(err)
	}
	rt := &sandboxtest.Fake{AgentBinary: agent, StateDir: dir + "/state"}
	script := fmt.Sprintf(`i=1; while [ $i -le %d ]; do echo "console line $i"; i=$((i+1)); done; exec sleep 600`, n)
	ctx, cancel := context.WithTimeout(context.Background(), sandboxtest.Timeout(30*time.Second))
	defer cancel()
	info, err := rt.Create(ctx, sandbox.Spec{ID: "console", Image: "host", RootFS: "/", Command: []string{"/bin/sh", "-c", script},
		StartTimeout: sandboxtest.Timeout(30 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Destroy(context.Background(), info.ID) })
	return func() *pool.Lease {
		return pool.NewLease(pool.SessionInfo{Identifier: "console-1", SandboxID: info.ID, State: pool.StateAllocated}, false, rt.Agent(info.ID), nil)
	}
}

// TestLogsAndEventsCommands runs sessiond logs and sessiond events against a real API
// server with authentication on.
func TestLogsAndEventsCommands(t *testing.T) {
	key, hash, err := auth.NewAPIKey()
	if err != nil {
		t.Fatal(err)
	}
	authn, err := auth.New(auth.Config{APIKeys: []auth.APIKeyConfig{{Name: "ops", Hash: hash, Roles: []string{"Reader"}}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	evs := events.New(0)
	at := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	for i, tr := range []pool.Transition{
		{SandboxID: "sb-1", From: pool.StatePending, To: pool.StateReady},
		{SandboxID: "sb-1", Identifier: "console-1", From: pool.StateReady, To: pool.StateAllocated},
		{SandboxID: "sb-2", From: pool.StatePending, To: pool.StateDestroyed, Reason: pool.ReasonCreateFailed, Err: errors.New("image\nmissing")},
	} {
		tr.At = at.Add(time.Duration(i) * time.Second)
		evs.Transition("web", tr)
	}
	spec := pool.Spec{Name: "web", ContainerType: pool.CustomContainer, MaxConcurrentSessions: 2, CooldownPeriod: time.Minute}
	pools := logsPools{"web": {spec: spec, lease: consoleSession(t, 20)}}
	srv := httptest.NewServer(api.New(api.Config{Pools: pools, Auth: authn, Events: evs}))
	defer srv.Close()
	cli := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := run(context.Background(), args, &out, io.Discard)
		return out.String(), err
	}
	t.Setenv("SESSIOND_ENDPOINT", srv.URL)
	t.Setenv("SESSIOND_TOKEN", key)

	out, err := cli("events", "-pool", "web")
	if err != nil {
		t.Fatal(err)
	}
	rows := strings.Split(strings.TrimSpace(out), "\n")
	if len(rows) != 4 || !strings.HasPrefix(rows[0], "TIME") || !strings.Contains(rows[1], "SandboxReady") ||
		!strings.Contains(rows[2], "SessionAllocated") || !strings.Contains(rows[2], "console-1") ||
		!strings.Contains(rows[3], "SandboxCreateFailed") || !strings.Contains(rows[3], "image missing") {
		t.Errorf("events table:\n%s", out)
	}

	out, err = cli("events", "-pool", "web", "-category", "Pool", "-tail", "1", "-output", "json")
	var list struct{ Value []events.Event }
	if err != nil || json.Unmarshal([]byte(out), &list) != nil || len(list.Value) != 1 || list.Value[0].Kind != events.SandboxCreateFailed {
		t.Errorf("events -output json: %v\n%s", err, out)
	}

	// Without -identifier, logs prints the session lifecycle.
	out, err = cli("logs", "-pool", "web")
	if err != nil || strings.Count(out, "\n") != 2 || !strings.Contains(out, "SessionAllocated") {
		t.Errorf("logs -pool web: %v\n%s", err, out)
	}

	// A session's console; the agent may still be printing.
	want := "console line 18\nconsole line 19\nconsole line 20\n"
	deadline := time.Now().Add(sandboxtest.Timeout(20 * time.Second))
	for {
		out, err = cli("logs", "-pool", "web", "-identifier", "console-1", "-tail", "3")
		if err == nil && out == want || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil || out != want {
		t.Errorf("logs -identifier console-1 -tail 3: %v\n%q, want %q", err, out, want)
	}
	out, err = cli("logs", "-pool", "web", "-identifier", "console-1", "-output", "json")
	var console struct {
		Identifier string
		Lines      []string
	}
	if err != nil || json.Unmarshal([]byte(out), &console) != nil || console.Identifier != "console-1" || len(console.Lines) != 20 {
		t.Errorf("logs -output json: %v\n%s", err, out)
	}

	for _, tc := range []struct {
		args  []string
		want  string
		usage bool
	}{
		{[]string{"events", "-pool", "nope"}, "SessionPoolNotFound", false},
		{[]string{"logs", "-pool", "web", "-identifier", "nobody-1"}, "No session with identifier 'nobody-1'", false},
		{[]string{"events", "-pool", "web", "-token", "wrong"}, "Unauthorized", false},
		{[]string{"events", "-pool", "web", "-category", "Other"}, "category", false},
		{[]string{"events"}, "-pool is required", true},
		{[]string{"events", "-pool", "web", "-output", "yaml"}, "-output", true},
		{[]string{"logs", "-pool", "web", "-endpoint", "ftp://x"}, "-endpoint", true},
		{[]string{"logs", "-pool", "web", "extra"}, "unexpected arguments", true},
	} {
		_, err := cli(tc.args...)
		var ue usageError
		if err == nil || !strings.Contains(err.Error(), tc.want) || errors.As(err, &ue) != tc.usage {
			t.Errorf("%q: %v, want an error with %q (usage %v)", tc.args, err, tc.want, tc.usage)
		}
	}
}

// TestServeMetrics: the -metrics-listen server answers GET /metrics without credentials,
// nothing else, and stops when its context ends.
func TestServeMetrics(t *testing.T) {
	obs := newObservability()
	obs.metrics.Request("Health", 200, time.Millisecond)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- serveMetrics(ctx, ln, obs.metrics.Handler()) }()
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + ln.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if status, body := get("/metrics"); status != 200 || !strings.Contains(body, `sessiond_http_requests_total{code="200",op="Health"} 1`) {
		t.Errorf("GET /metrics: %d\n%s", status, body)
	}
	if status, _ := get("/v1/pools/x/events"); status != http.StatusNotFound {
		t.Errorf("GET /v1/pools/x/events on the metrics address: %d", status)
	}
	http.DefaultClient.CloseIdleConnections()
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Errorf("serveMetrics: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serveMetrics did not return after its context ended")
	}
}
