package metrics_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/api"
	"github.com/sessiond/sessiond/internal/events"
	"github.com/sessiond/sessiond/internal/metrics"
	"github.com/sessiond/sessiond/internal/pool"
	"github.com/sessiond/sessiond/internal/pool/pooltest"
	"github.com/sessiond/sessiond/internal/sandbox"
	"github.com/sessiond/sessiond/internal/sandbox/sandboxtest"
)

// agentBin is the sessiond-agent built for this test binary.
var agentBin string

func TestMain(m *testing.M) {
	// Every goroutine the pool, the API and the metrics start must have ended.
	sandboxtest.MainWithAgent(m, &agentBin, nil)
}

// apiPool is a pool.Manager as the API sees a pool.
type apiPool struct{ *pool.Manager }

func (apiPool) Metadata(context.Context) (pool.Metadata, error) { return pool.Metadata{}, nil }

type apiPools map[string]apiPool

func (p apiPools) Pool(name string) (api.Pool, bool) {
	ap, ok := p[name]
	return ap, ok
}

// rig is a Shell pool over sandboxtest.Fake (real agents on the host) with a fake clock,
// observed by a Metrics and an events.Log, behind the real API server.
type rig struct {
	m      *pool.Manager
	clock  *pooltest.Clock
	srv    *httptest.Server
	events *events.Log
}

const (
	poolName = "shell-metrics"
	cooldown = 10 * time.Second
)

func newRig(t *testing.T, maxSessions int) *rig {
	t.Helper()
	state, err := os.MkdirTemp("/tmp", "smx-")
	if err != nil {
		t.Fatal(err)
	}
	// The agent runs commands as an unprivileged user, which must reach the data directories.
	os.Chmod(state, 0o755)
	rt := &sandboxtest.Fake{AgentBinary: agentBin, StateDir: state}
	r := &rig{clock: pooltest.NewClock(time.Time{}), events: events.New(0)}
	var pools apiPools
	mx := metrics.New(metrics.Options{Pools: func() map[string]pool.Counts {
		out := map[string]pool.Counts{}
		for name, p := range pools {
			out[name] = p.Counts()
		}
		return out
	}})
	spec := pool.Spec{Name: poolName, ContainerType: pool.Shell, MaxConcurrentSessions: maxSessions, ReadySessionInstances: 1,
		LifecycleType: "Timed", CooldownPeriod: cooldown, ExecutionTimeoutCap: pool.DefaultExecutionTimeoutCap}
	r.m, err = pool.New(spec, pool.Options{Runtime: rt, RootFS: "/", Clock: r.clock, HealthInterval: -1,
		Observer: pool.Observers(mx, r.events),
		Prepare: func(ctx context.Context, _ sandbox.Info, ag *agentapi.Client) error {
			_, err := ag.Health(ctx)
			return err
		}})
	if err != nil {
		t.Fatal(err)
	}
	pools = apiPools{poolName: {r.m}}
	r.srv = httptest.NewServer(api.New(api.Config{Pools: pools, Metrics: mx, Events: r.events}))
	t.Cleanup(func() {
		r.srv.Close()
		http.DefaultClient.CloseIdleConnections()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := r.m.Close(ctx); err != nil {
			t.Errorf("closing the pool: %v", err)
		}
		os.RemoveAll(state)
	})
	if err := r.m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return r
}

// request sends a request to the API and returns the status and body.
func (r *rig) request(t *testing.T, method, target, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, r.srv.URL+target, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

// execute runs a shell command in identifier's session through POST executions.
func (r *rig) execute(t *testing.T, identifier, command string, timeout int) (int, []byte) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"shellCommand": command, "timeoutInSeconds": timeout})
	return r.request(t, "POST", "/pools/"+poolName+"/executions?api-version=2025-10-02-preview&identifier="+identifier, string(body))
}

// scrape reads GET /metrics and parses it.
type scrape struct {
	text string
	fams map[string]*dto.MetricFamily
}

func (r *rig) scrape(t *testing.T) scrape {
	t.Helper()
	status, b := r.request(t, "GET", "/metrics", "")
	if status != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", status, b)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(b)))
	if err != nil {
		t.Fatalf("parsing /metrics: %v\n%s", err, b)
	}
	return scrape{text: string(b), fams: fams}
}

// value returns the value of the series of name with labels (a counter's or gauge's
// value, a histogram's sample count), and whether it exists.
func (s scrape) value(name string, labels ...string) (float64, bool) {
	fam := s.fams[name]
	if fam == nil {
		return 0, false
	}
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
	for _, m := range fam.Metric {
		got := map[string]string{}
		for _, l := range m.Label {
			got[l.GetName()] = l.GetValue()
		}
		match := len(got) == len(want)
		for k, v := range want {
			match = match && got[k] == v
		}
		if !match {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		}
	}
	return 0, false
}

// series counts the series of the sessiond_ metrics.
func (s scrape) series() int {
	n := 0
	for name, fam := range s.fams {
		if strings.HasPrefix(name, "sessiond_") {
			n += len(fam.Metric)
		}
	}
	return n
}

// waitScrape scrapes until cond holds of a scrape.
func (r *rig) waitScrape(t *testing.T, what string, cond func(scrape) bool) scrape {
	t.Helper()
	deadline := time.Now().Add(sandboxtest.Timeout(20 * time.Second))
	for {
		s := r.scrape(t)
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; last scrape:\n%s", what, grep(s.text, "sessiond_"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func grep(text, prefix string) string {
	var out []string
	for line := range strings.SplitSeq(text, "\n") {
		if strings.HasPrefix(line, prefix) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

func gauge(s scrape, name string) float64 {
	v, _ := s.value(name, "pool", poolName)
	return v
}

// TestMetricsFollowSessions drives a pool through the API and reads /metrics: the gauges
// follow allocation, refill and cooldown, executions are timed by outcome, evictions and
// starts are counted, and the events log tells the same story.
func TestMetricsFollowSessions(t *testing.T) {
	r := newRig(t, 5)
	s := r.waitScrape(t, "the ready queue to fill", func(s scrape) bool {
		return gauge(s, "sessiond_pool_ready_sessions") == 1 && gauge(s, "sessiond_pool_pending_sessions") == 0
	})
	if v := gauge(s, "sessiond_pool_allocated_sessions"); v != 0 {
		t.Errorf("allocated = %v before any request", v)
	}
	for _, phase := range []string{"create", "prepare"} {
		if n, _ := s.value("sessiond_sandbox_start_duration_seconds", "pool", poolName, "phase", phase); n != 1 {
			t.Errorf("start phase %s observed %v times, want 1", phase, n)
		}
	}
	if v, ok := s.value("sessiond_evictions_total", "pool", poolName, "reason", "cooldown"); !ok || v != 0 {
		t.Errorf("cooldown evictions = %v (present %v), want a series at 0", v, ok)
	}
	if !strings.Contains(s.text, "# HELP sessiond_pool_ready_sessions") || !strings.Contains(s.text, "PoolReadyPodCount") ||
		!strings.Contains(s.text, "go_goroutines") || !strings.Contains(s.text, "process_") {
		t.Errorf("missing HELP naming Azure's metric, or the Go and process collectors:\n%s", s.text)
	}

	// The first execution binds a ready sandbox (warm) and is timed.
	if status, b := r.execute(t, "metrics-1", "echo hello", 30); status != http.StatusOK || !strings.Contains(string(b), `"status":"0"`) {
		t.Fatalf("execute: %d %s", status, b)
	}
	s = r.scrape(t)
	if v := gauge(s, "sessiond_pool_allocated_sessions"); v != 1 {
		t.Errorf("allocated = %v after the first execution, want 1", v)
	}
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"sessiond_allocation_duration_seconds", []string{"pool", poolName, "start", "warm"}, 1},
		{"sessiond_execution_duration_seconds", []string{"pool", poolName, "api", "current", "outcome", "Succeeded"}, 1},
		{"sessiond_http_requests_total", []string{"op", "CodeExecution_Execute", "code", "200"}, 1},
		{"sessiond_http_request_duration_seconds", []string{"op", "CodeExecution_Execute"}, 1},
	} {
		if v, _ := s.value(c.name, c.labels...); v != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, v, c.want)
		}
	}
	// The ready queue refills.
	r.waitScrape(t, "the ready queue to refill", func(s scrape) bool {
		return gauge(s, "sessiond_pool_ready_sessions") == 1 && gauge(s, "sessiond_pool_pending_sessions") == 0
	})

	// Outcomes: a failing command, a timed-out one, and the legacy generation.
	r.execute(t, "metrics-1", "exit 3", 30)
	r.execute(t, "metrics-1", "sleep 30", 1)
	if status, b := r.request(t, "POST", "/pools/"+poolName+"/code/execute?api-version=2024-02-02-preview&identifier=metrics-1",
		`{"properties":{"code":"true"}}`); status != http.StatusOK {
		t.Fatalf("code/execute: %d %s", status, b)
	}
	s = r.scrape(t)
	for api, outcomes := range map[string][]string{"current": {"Succeeded", "Failed", "Timeout"}, "legacy": {"Succeeded"}} {
		for _, o := range outcomes {
			if v, _ := s.value("sessiond_execution_duration_seconds", "pool", poolName, "api", api, "outcome", o); v != 1 {
				t.Errorf("executions api=%s outcome=%s: %v, want 1", api, o, v)
			}
		}
	}

	// Cooldown expiry evicts the session; the ready queue stays full.
	r.m.Sessions() // the release of the last lease has been handled: the cooldown runs
	r.clock.Advance(cooldown)
	s = r.waitScrape(t, "the session to be evicted", func(s scrape) bool {
		v, _ := s.value("sessiond_evictions_total", "pool", poolName, "reason", "cooldown")
		return v == 1 && gauge(s, "sessiond_pool_allocated_sessions") == 0 && gauge(s, "sessiond_pool_deleting_sandboxes") == 0
	})
	if v := gauge(s, "sessiond_pool_ready_sessions"); v != 1 {
		t.Errorf("ready = %v after the eviction, want 1", v)
	}
	for _, reason := range []string{"max-alive", "dead", "deleted", "surplus"} {
		if v, _ := s.value("sessiond_evictions_total", "pool", poolName, "reason", reason); v != 0 {
			t.Errorf("evictions for %s = %v, want 0", reason, v)
		}
	}

	// The events log has the session's life, in order.
	status, b := r.request(t, "GET", "/v1/pools/"+poolName+"/events?category=Session", "")
	var list struct{ Value []events.Event }
	if err := json.Unmarshal(b, &list); status != http.StatusOK || err != nil {
		t.Fatalf("events: %d %v %s", status, err, b)
	}
	var got []string
	for _, e := range list.Value {
		got = append(got, string(e.Kind)+" "+e.Identifier+" "+e.Reason)
	}
	if want := []string{"SessionAllocated metrics-1 ", "SessionEnded metrics-1 cooldown"}; strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("session events = %q, want %q", got, want)
	}
}

// TestLabelCardinality: a thousand identifiers add no series, and none appears in a label.
func TestLabelCardinality(t *testing.T) {
	r := newRig(t, 1)
	r.waitScrape(t, "the ready queue to fill", func(s scrape) bool { return gauge(s, "sessiond_pool_ready_sessions") == 1 })
	if status, b := r.execute(t, "ident-holder", "true", 30); status != http.StatusOK {
		t.Fatalf("execute: %d %s", status, b)
	}
	// One request of each kind first, so that their series exist.
	send := func(i int) {
		id := fmt.Sprintf("ident-%04d", i)
		if status, b := r.execute(t, id, "true", 30); status != http.StatusTooManyRequests {
			t.Fatalf("execute over the cap: %d %s", status, b)
		}
		if status, _ := r.request(t, "GET", "/pools/"+poolName+"/session?api-version=2025-10-02-preview&identifier="+id, ""); status != http.StatusBadRequest {
			t.Fatalf("get session: %d", status)
		}
	}
	send(0)
	before := r.scrape(t)
	for i := 1; i < 1000; i++ {
		send(i)
	}
	after := r.scrape(t)
	if b, a := before.series(), after.series(); a != b {
		t.Errorf("%d sessiond_ series before a thousand identifiers, %d after:\n%s", b, a, grep(after.text, "sessiond_"))
	}
	if strings.Contains(after.text, "ident-") {
		t.Errorf("an identifier appears in /metrics:\n%s", grep(after.text, "sessiond_"))
	}
	if v, _ := after.value("sessiond_http_requests_total", "op", "CodeExecution_Execute", "code", "429"); v != 1000 {
		t.Errorf("429s counted: %v, want 1000", v)
	}
}
