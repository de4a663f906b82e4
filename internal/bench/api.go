package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// APIClient drives a running sessiond (or any Azure-compatible pool endpoint) the way a
// client would: code executions through the new-generation API.
type APIClient struct {
	// Endpoint is the pool management endpoint, e.g. http://127.0.0.1:8080/pools/default.
	Endpoint string
	// APIVersion is sent with every request.
	APIVersion string
	HTTP       *http.Client
}

// NewAPIClient returns a client for endpoint.
func NewAPIClient(endpoint string) *APIClient {
	return &APIClient{
		Endpoint:   strings.TrimSuffix(endpoint, "/"),
		APIVersion: "2025-10-02-preview",
		HTTP:       &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256, MaxConnsPerHost: 0}},
	}
}

// NewIdentifier returns a fresh random session identifier with the given prefix.
func NewIdentifier(prefix string) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// Execute runs code in the session identifier and returns the round-trip time. It fails
// unless the execution succeeded with the expected result (when want is not "").
func (c *APIClient) Execute(ctx context.Context, identifier, code, want string) (time.Duration, error) {
	body, _ := json.Marshal(map[string]any{"code": code, "codeInputType": "Inline", "executionType": "Synchronous", "timeoutInSeconds": 60})
	u := c.Endpoint + "/executions?" + url.Values{"api-version": {c.APIVersion}, "identifier": {identifier}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	t0 := time.Now()
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return 0, fmt.Errorf("executing: %w", err)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	d := time.Since(t0)
	if err != nil {
		return 0, fmt.Errorf("executing: %w", err)
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusAccepted {
		return 0, fmt.Errorf("executing: %s: %s", resp.Status, b)
	}
	var ex struct {
		Status string `json:"status"`
		Result struct {
			Stderr          string          `json:"stderr"`
			ExecutionResult json.RawMessage `json:"executionResult"`
		} `json:"result"`
	}
	if err := json.Unmarshal(b, &ex); err != nil {
		return 0, fmt.Errorf("decoding execution: %w", err)
	}
	if ex.Status != "Succeeded" {
		return 0, fmt.Errorf("execution %s: %s", ex.Status, ex.Result.Stderr)
	}
	if want != "" && strings.TrimSpace(string(ex.Result.ExecutionResult)) != want {
		return 0, fmt.Errorf("execution result %s, want %s", ex.Result.ExecutionResult, want)
	}
	return d, nil
}

// DeleteSession ends a session.
func (c *APIClient) DeleteSession(ctx context.Context, identifier string) error {
	u := c.Endpoint + "/session?" + url.Values{"api-version": {c.APIVersion}, "identifier": {identifier}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, u, nil)
	if err != nil {
		return err
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("deleting session: %w", err)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("deleting session: %s", resp.Status)
	}
	return nil
}

// APIConfig configures the API benchmark.
type APIConfig struct {
	// Warm is how many first executions on new identifiers are timed against a warm pool;
	// they are sent in rounds of WarmBatch (at most the pool's ready sessions), with
	// WarmRefill between rounds for the pool to refill.
	Warm       int
	WarmBatch  int
	WarmRefill time.Duration
	// Second, if set, times one more execution on each warm round's identifiers once the
	// pool has refilled (WarmRefill later, then the round is deleted and the pool waited
	// for again): the same sandboxes after as long an idle, no longer fresh from their
	// warm-up. It tells a fresh sandbox's cost from the cost of its idleness.
	Second bool
	// Paired, if set, times an execution on a reference session (an existing one, used
	// by the previous pair moments before) right before each warm first execution: the
	// two see the machine in the same state, and the p50 of the differences is the new
	// session's overhead without the drift between separate phases. It takes one more
	// session, made before the first round.
	Paired bool
	// Existing is how many executions are timed on one existing session, back to back,
	// after WarmRefill for the pool to replace what was taken.
	Existing int
	// Paused is how many more are timed on that session, each after it sat idle for Pause:
	// a sandbox taken from the ready queue has always been idle, and waking an idle
	// sandbox costs time of its own (much more under gVisor than under runc).
	Paused int
	Pause  time.Duration
	// Burst is how many new identifiers execute at once (0: skipped).
	Burst int
	// Throughput: Sessions sessions execute in a loop for ThroughputFor.
	Sessions      int
	ThroughputFor time.Duration
	// Hold is how many sessions are allocated and kept idle to measure their memory
	// (0: skipped); memory is read from this host's /proc/meminfo.
	Hold int
}

// APIResult is what the API benchmark measured.
type APIResult struct {
	Endpoint      string  `json:"endpoint"`
	FirstExecWarm Summary `json:"firstExecutionWarmPool"`
	// SecondExec: the second executions of APIConfig.Second; OverheadSecondP50 is
	// FirstExecWarm.P50 - SecondExec.P50.
	SecondExec        Summary       `json:"secondExecutionAfterRefill"`
	OverheadSecondP50 time.Duration `json:"firstOverSecondP50"`
	// PairedRef: the reference executions of APIConfig.Paired; PairedOverhead sums up
	// each first execution minus the reference execution just before it.
	PairedRef      Summary `json:"pairedReference"`
	PairedOverhead Summary `json:"pairedOverhead"`
	ExistingExec   Summary `json:"executionExistingSession"`
	// OverheadP50 is FirstExecWarm.P50 - ExistingExec.P50: what binding a new session costs
	// over a session that is executing back to back.
	OverheadP50 time.Duration `json:"newSessionOverheadP50"`
	// PausedExec: executions on the existing session after Pause idle; OverheadIdleP50 is
	// FirstExecWarm.P50 - PausedExec.P50, the cost of the binding itself.
	Pause           time.Duration `json:"pause"`
	PausedExec      Summary       `json:"executionExistingSessionAfterPause"`
	OverheadIdleP50 time.Duration `json:"newSessionOverheadOverPausedP50"`
	Burst           Summary       `json:"burst"`
	// BurstWall is the time until the last of the burst finished.
	BurstWall     time.Duration `json:"burstWall"`
	BurstFailures int           `json:"burstFailures"`
	ExecsPerSec   float64       `json:"executionsPerSecond"`
	Held          int           `json:"heldSessions"`
	// HeldBytesEach is the host memory (MemAvailable drop) per held idle session.
	HeldBytesEach int64 `json:"heldBytesEach"`
}

// API runs the API benchmark against c. It deletes the sessions it creates.
func API(ctx context.Context, c *APIClient, cfg APIConfig, progress io.Writer) (res APIResult, err error) {
	res.Endpoint = c.Endpoint
	var cleanup []string
	defer func() {
		for _, id := range cleanup {
			_ = c.DeleteSession(context.WithoutCancel(ctx), id)
		}
	}()
	logf := func(format string, args ...any) {
		if progress != nil {
			fmt.Fprintf(progress, format+"\n", args...)
		}
	}

	var warm, second, refs, diffs []time.Duration
	ref := ""
	if cfg.Paired && cfg.Warm > 0 {
		ref = NewIdentifier("bench-reference-")
		cleanup = append(cleanup, ref)
		if _, err := c.Execute(ctx, ref, "1+1", "2"); err != nil {
			return res, fmt.Errorf("reference session: %w", err)
		}
		if err := sleep(ctx, cfg.WarmRefill); err != nil { // for the pool to replace it
			return res, err
		}
	}
	for len(warm) < cfg.Warm {
		n := min(cfg.WarmBatch, cfg.Warm-len(warm))
		var round []string
		for i := 0; i < n; i++ {
			id := NewIdentifier("bench-warm-")
			round = append(round, id)
			cleanup = append(cleanup, id) // until the round is deleted below
			var dRef time.Duration
			if ref != "" {
				r, err := c.Execute(ctx, ref, "1+1", "2")
				if err != nil {
					return res, fmt.Errorf("reference execution: %w", err)
				}
				dRef = r
			}
			d, err := c.Execute(ctx, id, "1+1", "2")
			if err != nil {
				return res, fmt.Errorf("first execution: %w", err)
			}
			warm = append(warm, d)
			if ref != "" {
				refs, diffs = append(refs, dRef), append(diffs, d-dRef)
			}
		}
		if cfg.Second {
			if err := sleep(ctx, cfg.WarmRefill); err != nil {
				return res, err
			}
			for _, id := range round {
				d, err := c.Execute(ctx, id, "1+1", "2")
				if err != nil {
					return res, fmt.Errorf("second execution: %w", err)
				}
				second = append(second, d)
			}
		}
		// Sessions are deleted after the round, not between its requests, so that no
		// sandbox teardown runs under the next measurement.
		for _, id := range round {
			if err := c.DeleteSession(ctx, id); err != nil {
				return res, err
			}
		}
		cleanup = cleanup[:len(cleanup)-len(round)] // the round's, appended last
		logf("warm first executions: %d/%d", len(warm), cfg.Warm)
		if len(warm) < cfg.Warm {
			if err := sleep(ctx, cfg.WarmRefill); err != nil {
				return res, err
			}
		}
	}
	res.FirstExecWarm = Summarize(warm)
	if len(second) > 0 {
		res.SecondExec = Summarize(second)
		res.OverheadSecondP50 = res.FirstExecWarm.P50 - res.SecondExec.P50
	}
	if ref != "" {
		res.PairedRef, res.PairedOverhead = Summarize(refs), Summarize(diffs)
		if err := c.DeleteSession(ctx, ref); err != nil { // the phases below run as without it
			return res, err
		}
		cleanup = slices.DeleteFunc(cleanup, func(id string) bool { return id == ref })
	}

	if cfg.Existing > 0 {
		id := NewIdentifier("bench-existing-")
		cleanup = append(cleanup, id)
		if _, err := c.Execute(ctx, id, "1+1", "2"); err != nil {
			return res, err
		}
		// The pool replaces the sandboxes the warm rounds and this session took: the
		// executions below are timed once that is done, on an otherwise idle machine.
		if err := sleep(ctx, cfg.WarmRefill); err != nil {
			return res, err
		}
		var ds []time.Duration
		for i := 0; i < cfg.Existing; i++ {
			d, err := c.Execute(ctx, id, "1+1", "2")
			if err != nil {
				return res, fmt.Errorf("execution on an existing session: %w", err)
			}
			ds = append(ds, d)
		}
		res.ExistingExec = Summarize(ds)
		logf("existing-session executions: %d", cfg.Existing)
		ds = ds[:0]
		for i := 0; i < cfg.Paused; i++ {
			if err := sleep(ctx, cfg.Pause); err != nil {
				return res, err
			}
			d, err := c.Execute(ctx, id, "1+1", "2")
			if err != nil {
				return res, fmt.Errorf("execution on an existing session after a pause: %w", err)
			}
			ds = append(ds, d)
		}
		if cfg.Paused > 0 {
			res.Pause, res.PausedExec = cfg.Pause, Summarize(ds)
			logf("existing-session executions after %v idle: %d", cfg.Pause, cfg.Paused)
		}
	}
	if res.FirstExecWarm.N > 0 && res.ExistingExec.N > 0 {
		res.OverheadP50 = res.FirstExecWarm.P50 - res.ExistingExec.P50
	}
	if res.FirstExecWarm.N > 0 && res.PausedExec.N > 0 {
		res.OverheadIdleP50 = res.FirstExecWarm.P50 - res.PausedExec.P50
	}

	if cfg.Burst > 0 {
		if err := sleep(ctx, cfg.WarmRefill); err != nil {
			return res, err
		}
		ids := make([]string, cfg.Burst)
		ds := make([]time.Duration, cfg.Burst)
		errs := make([]error, cfg.Burst)
		var wg sync.WaitGroup
		t0 := time.Now()
		for i := range ids {
			ids[i] = NewIdentifier("bench-burst-")
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				ds[i], errs[i] = c.Execute(ctx, ids[i], "1+1", "2")
			}(i)
		}
		wg.Wait()
		res.BurstWall = time.Since(t0)
		var ok []time.Duration
		for i, err := range errs {
			if err != nil {
				res.BurstFailures++
				logf("burst failure: %v", err)
				continue
			}
			ok = append(ok, ds[i])
		}
		res.Burst = Summarize(ok)
		for _, id := range ids {
			_ = c.DeleteSession(ctx, id)
		}
		logf("burst of %d: %v wall, %d failures", cfg.Burst, res.BurstWall, res.BurstFailures)
	}

	if cfg.Sessions > 0 && cfg.ThroughputFor > 0 {
		ids := make([]string, cfg.Sessions)
		for i := range ids {
			ids[i] = NewIdentifier("bench-tput-")
			cleanup = append(cleanup, ids[i])
			if _, err := c.Execute(ctx, ids[i], "1+1", "2"); err != nil {
				return res, err
			}
		}
		var mu sync.Mutex
		count := 0
		var firstErr error
		tctx, cancel := context.WithTimeout(ctx, cfg.ThroughputFor)
		var wg sync.WaitGroup
		t0 := time.Now()
		for _, id := range ids {
			wg.Add(1)
			go func(id string) {
				defer wg.Done()
				for tctx.Err() == nil {
					_, err := c.Execute(tctx, id, "1+1", "2")
					mu.Lock()
					if err == nil {
						count++
					} else if tctx.Err() == nil && firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}(id)
		}
		wg.Wait()
		cancel()
		if firstErr != nil {
			return res, fmt.Errorf("throughput: %w", firstErr)
		}
		res.ExecsPerSec = float64(count) / time.Since(t0).Seconds()
		logf("throughput across %d sessions: %.0f executions/s", cfg.Sessions, res.ExecsPerSec)
	}

	if cfg.Hold > 0 {
		if err := sleep(ctx, cfg.WarmRefill); err != nil {
			return res, err
		}
		before, err := memAvailable()
		if err != nil {
			return res, err
		}
		for i := 0; i < cfg.Hold; i++ {
			id := NewIdentifier("bench-hold-")
			cleanup = append(cleanup, id)
			if _, err := c.Execute(ctx, id, "x = 1", ""); err != nil {
				return res, fmt.Errorf("holding session %d: %w", i, err)
			}
		}
		// Let the ready queue refill to its size, so that the drop counts held sessions only
		// (the refill replaces what was taken: net, the pool holds Hold more sandboxes).
		if err := sleep(ctx, cfg.WarmRefill); err != nil {
			return res, err
		}
		after, err := memAvailable()
		if err != nil {
			return res, err
		}
		res.Held = cfg.Hold
		res.HeldBytesEach = (before - after) / int64(cfg.Hold)
		logf("held %d idle sessions: %.1f MiB each", cfg.Hold, float64(res.HeldBytesEach)/(1<<20))
	}
	return res, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// memAvailable reads MemAvailable from /proc/meminfo in bytes.
func memAvailable() (int64, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemAvailable:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no MemAvailable in /proc/meminfo")
}

// WriteAPITable writes an API result as a text table.
func WriteAPITable(w io.Writer, r APIResult) {
	fmt.Fprintf(w, "endpoint %s\n", r.Endpoint)
	fmt.Fprintf(w, "%-34s %6s %8s %8s %8s %8s\n", "metric", "n", "p50 ms", "p95 ms", "p99 ms", "max ms")
	for _, row := range []struct {
		name string
		s    Summary
	}{{"first execution, new id, warm pool", r.FirstExecWarm}, {"reference just before each first", r.PairedRef},
		{"paired: first minus reference", r.PairedOverhead}, {"second, same ids, after the refill", r.SecondExec},
		{"execution, existing session", r.ExistingExec},
		{fmt.Sprintf("existing session after %v idle", r.Pause), r.PausedExec}, {"burst, per request", r.Burst}} {
		if row.s.N > 0 {
			fmt.Fprintf(w, "%-34s %6d %8s %8s %8s %8s\n", row.name, row.s.N, ms(row.s.P50), ms(row.s.P95), ms(row.s.P99), ms(row.s.Max))
		}
	}
	if r.PairedOverhead.N > 0 {
		fmt.Fprintf(w, "new-session overhead over the paired reference (p50 of differences): %s ms\n", ms(r.PairedOverhead.P50))
	}
	if r.SecondExec.N > 0 {
		fmt.Fprintf(w, "first execution over the second on the same sandboxes (p50 difference): %s ms\n", ms(r.OverheadSecondP50))
	}
	if r.FirstExecWarm.N > 0 && r.ExistingExec.N > 0 {
		fmt.Fprintf(w, "new-session overhead (p50 difference): %s ms\n", ms(r.OverheadP50))
	}
	if r.FirstExecWarm.N > 0 && r.PausedExec.N > 0 {
		fmt.Fprintf(w, "new-session overhead over a session idle for %v (p50 difference): %s ms\n", r.Pause, ms(r.OverheadIdleP50))
	}
	if r.Burst.N > 0 || r.BurstFailures > 0 {
		fmt.Fprintf(w, "burst of %d: all done in %s ms, %d failures\n", r.Burst.N+r.BurstFailures, ms(r.BurstWall), r.BurstFailures)
	}
	if r.ExecsPerSec > 0 {
		fmt.Fprintf(w, "throughput: %.0f executions/s\n", r.ExecsPerSec)
	}
	if r.Held > 0 {
		fmt.Fprintf(w, "held %d idle sessions: %.1f MiB of host memory each\n", r.Held, float64(r.HeldBytesEach)/(1<<20))
	}
}
