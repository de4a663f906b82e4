package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sessiond/sessiond/internal/auth"
	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/events"
	"github.com/sessiond/sessiond/internal/metrics"
	"github.com/sessiond/sessiond/internal/pool"
	"github.com/sessiond/sessiond/internal/sandbox"
	"github.com/sessiond/sessiond/internal/sandbox/sandboxtest"
)

func TestParseTraceparent(t *testing.T) {
	const id = "4bf92f3577b34da6a3ce929d0e0e4736"
	for _, tc := range []struct {
		in   string
		want string
	}{
		{"00-" + id + "-00f067aa0ba902b7-01", id},
		{" 00-" + id + "-00f067aa0ba902b7-00 ", id},
		{"01-" + id + "-00f067aa0ba902b7-01-future-fields", id}, // later versions may append
		{"00-" + id + "-00f067aa0ba902b7-01-more", ""},          // version 00 has exactly four fields
		{"ff-" + id + "-00f067aa0ba902b7-01", ""},
		{"00-" + strings.ToUpper(id) + "-00f067aa0ba902b7-01", ""},
		{"00-00000000000000000000000000000000-00f067aa0ba902b7-01", ""},
		{"00-" + id + "-0000000000000000-01", ""},
		{"00-" + id + "-00f067aa0ba902b7", ""},
		{"00_" + id + "_00f067aa0ba902b7_01", ""},
		{"", ""},
	} {
		got, ok := parseTraceparent(tc.in)
		if got != tc.want || ok != (tc.want != "") {
			t.Errorf("parseTraceparent(%q) = %q, %v; want %q", tc.in, got, ok, tc.want)
		}
	}
}

// TestTraceHeaders: a caller's W3C trace ID becomes the request's (in the error envelope
// and the log line); an Azure client request ID is echoed and logged; a bad traceparent is
// ignored.
func TestTraceHeaders(t *testing.T) {
	var logs bytes.Buffer
	srv := newStubServer(t, Config{Log: slog.New(slog.NewJSONHandler(&logs, nil))}, nil)
	const id = "0af7651916cd43dd8448eb211c80319c"
	req := newRequest(t, srv, "GET", pyPath+"/session?"+v2025+"&identifier=trace-test", "", "")
	req.Header.Set("traceparent", "00-"+id+"-b7ad6b7169203331-01")
	req.Header.Set("x-ms-client-request-id", "client-req-42")
	r := do(t, req)
	if r.err.TraceID != id {
		t.Errorf("traceId = %q, want the traceparent's %q", r.err.TraceID, id)
	}
	if got := r.header.Get("x-ms-client-request-id"); got != "client-req-42" {
		t.Errorf("x-ms-client-request-id echoed as %q", got)
	}
	var line map[string]any
	if err := json.Unmarshal(bytes.TrimSpace(logs.Bytes()), &line); err != nil {
		t.Fatalf("log line: %v: %s", err, logs.String())
	}
	if line["trace_id"] != id || line["client_request_id"] != "client-req-42" {
		t.Errorf("log line = %v, want trace_id %s and client_request_id", line, id)
	}

	req = newRequest(t, srv, "GET", pyPath+"/session?"+v2025+"&identifier=trace-test", "", "")
	req.Header.Set("traceparent", "00-"+strings.Repeat("0", 32)+"-b7ad6b7169203331-01")
	req.Header.Set("x-ms-client-request-id", "bad-\u00e9-id")
	r = do(t, req)
	if r.err.TraceID == strings.Repeat("0", 32) || r.header.Get("x-ms-client-request-id") != "" {
		t.Errorf("an invalid traceparent or request ID was used: traceId %q, echoed %q", r.err.TraceID, r.header.Get("x-ms-client-request-id"))
	}
}

func TestPoolEvents(t *testing.T) {
	log := events.New(3)
	srv := newStubServer(t, Config{Events: log}, nil)
	at := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	for i, tr := range []pool.Transition{
		{SandboxID: "sb-1", From: pool.StatePending, To: pool.StateReady},
		{SandboxID: "sb-1", Identifier: "alice-1", From: pool.StateReady, To: pool.StateAllocated},
		{SandboxID: "sb-2", From: pool.StatePending, To: pool.StateReady},
		{SandboxID: "sb-1", Identifier: "alice-1", From: pool.StateAllocated, To: pool.StateDeleting, Reason: pool.ReasonCooldown},
	} {
		tr.At = at.Add(time.Duration(i) * time.Second)
		log.Transition("custom", tr)
	}
	log.Transition("python", pool.Transition{At: at, SandboxID: "sb-9", From: pool.StatePending, To: pool.StateReady})

	get := func(query string) (int, []events.Event) {
		t.Helper()
		r := send(t, srv, "GET", "/v1/pools/custom/events"+query, "", "")
		var body struct{ Value []events.Event }
		if r.status == http.StatusOK {
			if err := json.Unmarshal(r.body, &body); err != nil || body.Value == nil {
				t.Fatalf("events%s: %v: %s", query, err, r.body)
			}
		}
		return r.status, body.Value
	}
	kinds := func(evs []events.Event) []string {
		var out []string
		for _, e := range evs {
			out = append(out, fmt.Sprintf("%d %s %s %s", e.Seq, e.Kind, e.Identifier, e.Reason))
		}
		return out
	}
	// A ring of 3 keeps the last three, oldest first (a custom-container pool is served).
	_, evs := get("")
	if diff := cmp.Diff([]string{"2 SessionAllocated alice-1 ", "3 SandboxReady  ", "4 SessionEnded alice-1 cooldown"}, kinds(evs)); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	if evs[2].Time != at.Add(3*time.Second) || evs[2].Pool != "custom" || evs[2].Category != events.Session || evs[2].SandboxID != "sb-1" {
		t.Errorf("last event = %+v", evs[2])
	}
	for query, want := range map[string][]string{
		"?tail=1":                    {"4 SessionEnded alice-1 cooldown"},
		"?after=3":                   {"4 SessionEnded alice-1 cooldown"},
		"?category=pool":             {"3 SandboxReady  "},
		"?identifier=alice-1&tail=5": {"2 SessionAllocated alice-1 ", "4 SessionEnded alice-1 cooldown"},
		"?identifier=nobody-else":    nil,
	} {
		if _, evs := get(query); !cmp.Equal(kinds(evs), want) {
			t.Errorf("events%s = %v, want %v", query, kinds(evs), want)
		}
	}
	for _, query := range []string{"?tail=0", "?tail=x", "?after=-1", "?category=Other", "?identifier=a"} {
		if status, _ := get(query); status != http.StatusBadRequest {
			t.Errorf("events%s: status %d, want 400", query, status)
		}
	}
	if r := send(t, srv, "GET", "/v1/pools/nope/events", "", ""); r.status != http.StatusNotFound || r.err.Code != codePoolNotFound {
		t.Errorf("unknown pool: %d %s", r.status, r.err.Code)
	}
	// Without an event log the route does not exist.
	srv = newStubServer(t, Config{}, nil)
	if r := send(t, srv, "GET", "/v1/pools/custom/events", "", ""); r.status != http.StatusNotFound {
		t.Errorf("events without a log: %d", r.status)
	}
}

func TestLastLines(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		want []string
		more bool
	}{
		{"", 5, []string{}, false},
		{"\n", 5, []string{}, false},
		{"a\nb\nc\n", 2, []string{"b", "c"}, true},
		{"a\nb\nc", 3, []string{"a", "b", "c"}, false},
		{"a\r\nb\n", 1, []string{"b"}, true},
		{"a\n\nb\n", 2, []string{"", "b"}, true},
		{"x\xffy\n", 1, []string{"x\uFFFDy"}, false},
	} {
		got, more := lastLines([]byte(tc.in), tc.n)
		if !cmp.Equal(got, tc.want) || more != tc.more {
			t.Errorf("lastLines(%q, %d) = %q, %v; want %q, %v", tc.in, tc.n, got, more, tc.want, tc.more)
		}
	}
}

// consolePool is a custom-container pool of one session, "console-1", whose sandbox (a
// real agent, sandboxtest.Fake) runs a main process that prints numbered lines.
type consolePool struct {
	stubPool
	lease func() *pool.Lease
}

func (p *consolePool) Get(ctx context.Context, identifier string) (*pool.Lease, error) {
	if identifier != "console-1" {
		return nil, errkind.New(errkind.NotFound, "no session %q", identifier)
	}
	return p.lease(), nil
}

func newConsolePool(t *testing.T, lines int) *consolePool {
	t.Helper()
	newTestPools(t, false) // builds the agent
	state, err := os.MkdirTemp(env.dir, "console-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(state, 0o755)
	rt := &sandboxtest.Fake{AgentBinary: env.agent, StateDir: state}
	script := fmt.Sprintf(`i=1; while [ $i -le %d ]; do echo "line $i"; i=$((i+1)); done; echo "to stderr" >&2; exec sleep 600`, lines)
	ctx, cancel := context.WithTimeout(context.Background(), sandboxtest.Timeout(30*time.Second))
	defer cancel()
	info, err := rt.Create(ctx, sandbox.Spec{ID: "console", Image: "host", RootFS: "/", Command: []string{"/bin/sh", "-c", script},
		StartTimeout: sandboxtest.Timeout(30 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		rt.Destroy(context.Background(), info.ID)
		os.RemoveAll(state)
	})
	p := &consolePool{stubPool: stubPool{spec: testSpec("console", pool.CustomContainer)}}
	p.lease = func() *pool.Lease {
		return pool.NewLease(pool.SessionInfo{Identifier: "console-1", SandboxID: info.ID, State: pool.StateAllocated}, false, rt.Agent(info.ID), nil)
	}
	return p
}

// TestSessionLogs reads a custom-container session's console through the API.
func TestSessionLogs(t *testing.T) {
	srv := httptest.NewServer(New(Config{Pools: consolePools{"console": newConsolePool(t, 150)}}))
	defer srv.Close()

	var got consoleLog
	waitFor(t, "the console to hold the last line", func() bool {
		r := send(t, srv, "GET", "/v1/pools/console/sessions/console-1/logs?tail=2", "", "")
		if r.status != http.StatusOK {
			t.Fatalf("logs: %d %s", r.status, r.body)
		}
		got = consoleLog{}
		json.Unmarshal(r.body, &got)
		return len(got.Lines) == 2 && got.Lines[1] == "to stderr"
	})
	want := consoleLog{Pool: "console", Identifier: "console-1", Lines: []string{"line 150", "to stderr"}, Truncated: true}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("logs?tail=2 (-want +got):\n%s", diff)
	}
	r := send(t, srv, "GET", "/v1/pools/console/sessions/console-1/logs", "", "")
	json.Unmarshal(r.body, &got)
	if len(got.Lines) != DefaultLogTail || got.Lines[0] != "line 52" || !got.Truncated {
		t.Errorf("default tail: %d lines from %q (truncated %v), want %d from line 52", len(got.Lines), got.Lines[0], got.Truncated, DefaultLogTail)
	}
	r = send(t, srv, "GET", "/v1/pools/console/sessions/console-1/logs?tail=1000", "", "")
	json.Unmarshal(r.body, &got)
	if len(got.Lines) != 151 || got.Truncated {
		t.Errorf("tail=1000: %d lines (truncated %v), want all 151", len(got.Lines), got.Truncated)
	}
	for target, want := range map[string]int{
		"/v1/pools/console/sessions/nobody-1/logs":                 http.StatusNotFound,
		"/v1/pools/console/sessions/a/logs":                        http.StatusBadRequest,
		"/v1/pools/console/sessions/console-1/logs?tail=0":         http.StatusBadRequest,
		"/v1/pools/console/sessions/console-1/logs?tail=100000000": http.StatusBadRequest,
		"/v1/pools/nope/sessions/console-1/logs":                   http.StatusNotFound,
	} {
		if r := send(t, srv, "GET", target, "", ""); r.status != want {
			t.Errorf("GET %s: %d, want %d", target, r.status, want)
		}
	}
}

type consolePools map[string]*consolePool

func (p consolePools) Pool(name string) (Pool, bool) {
	cp, ok := p[name]
	if !ok {
		return nil, false
	}
	return cp, true
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(sandboxtest.Timeout(20 * time.Second))
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestObserveAuth: the observability routes need the Reader role (Contributor implies
// it): on the path's pool, and on every pool for /metrics. SessionExecutor is not enough.
func TestObserveAuth(t *testing.T) {
	keys := map[string]auth.APIKeyConfig{
		"reader":         {Roles: []string{"Reader"}},
		"contributor":    {Roles: []string{"Contributor"}},
		"custom-reader":  {Roles: []string{"Reader"}, Pools: []string{"custom"}},
		"executor":       {Roles: []string{"SessionExecutor"}},
		"revoked-reader": {Roles: []string{"Reader"}, Revoked: true},
	}
	var cfg auth.Config
	secret := map[string]string{}
	for name, k := range keys {
		key, hash, err := auth.NewAPIKey()
		if err != nil {
			t.Fatal(err)
		}
		k.Name, k.Hash = name, hash
		cfg.APIKeys = append(cfg.APIKeys, k)
		secret[name] = key
	}
	authn, err := auth.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := newStubServer(t, Config{Auth: authn, Events: events.New(0), Metrics: metrics.New(metrics.Options{})}, nil)
	for _, tc := range []struct {
		key, target string
		want        int
	}{
		{"reader", "/metrics", 200},
		{"contributor", "/metrics", 200},
		{"custom-reader", "/metrics", 403},
		{"executor", "/metrics", 403},
		{"", "/metrics", 401},
		{"revoked-reader", "/metrics", 401},
		{"reader", "/v1/pools/custom/events", 200},
		{"custom-reader", "/v1/pools/custom/events", 200},
		{"custom-reader", "/v1/pools/python/events", 403},
		{"executor", "/v1/pools/custom/events", 403},
		{"", "/v1/pools/custom/events", 401},
		{"executor", "/v1/pools/custom/sessions/console-1/logs", 403},
		{"custom-reader", "/v1/pools/custom/sessions/console-1/logs", 404}, // allowed; no such session
	} {
		req := newRequest(t, srv, "GET", tc.target, "", "")
		if tc.key != "" {
			req.Header.Set("Authorization", "Bearer "+secret[tc.key])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s GET %s: %d, want %d", tc.key, tc.target, resp.StatusCode, tc.want)
		}
	}
}
