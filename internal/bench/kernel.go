package bench

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/sandbox"
)

// KernelConfig configures the code-interpreter benchmark.
type KernelConfig struct {
	// Spec is the template of the sandboxes (Kernel is set to python3).
	Spec sandbox.Spec
	// WarmupCode is what a pool runs before a sandbox is ready.
	WarmupCode string
	// Creates is how many sandboxes are timed from create to warmed-up ready.
	Creates int
	// Execs is how many `1+1` round trips are timed, through the agent and with
	// jupyter_client inside the same sandbox.
	Execs int
}

// KernelResult is what the code-interpreter benchmark measured for one runtime.
type KernelResult struct {
	Runtime string `json:"runtime"`
	// CreateToReady is create + kernel start + warm-up code, until an execution could run.
	CreateToReady Summary `json:"createToWarmReady"`
	// Agent is the `1+1` round trip through the agent API from the host.
	Agent Summary `json:"agentExecute"`
	// Baseline is the same round trip made by jupyter_client inside the same sandbox to a
	// kernel of its own: the protocol's own cost with no sessiond in the path.
	Baseline Summary `json:"jupyterClientBaseline"`
	// Ratio is Agent.P50 / Baseline.P50.
	Ratio float64 `json:"ratioP50"`
}

// baselineScript times `1+1` round trips with jupyter_client against a fresh ipykernel and
// prints one duration in nanoseconds per line.
const baselineScript = `
import sys, time
from jupyter_client.manager import start_new_kernel
km, kc = start_new_kernel(kernel_name="python3")
try:
    for _ in range(5):
        kc.execute_interactive("1+1", store_history=True, output_hook=lambda m: None)
    for _ in range(int(sys.argv[1])):
        t0 = time.perf_counter_ns()
        reply = kc.execute_interactive("1+1", store_history=True, output_hook=lambda m: None)
        print(time.perf_counter_ns() - t0)
        assert reply["content"]["status"] == "ok"
finally:
    kc.stop_channels()
    km.shutdown_kernel(now=True)
`

// Kernel measures create-to-warm-ready and the `1+1` round trip against the jupyter_client
// baseline, in sandboxes of rt.
func Kernel(ctx context.Context, rt sandbox.Runtime, cfg KernelConfig) (res KernelResult, err error) {
	res.Runtime = rt.Name()
	spec := cfg.Spec
	spec.Kernel = "python3"
	var created []string
	defer func() {
		for _, id := range created {
			if derr := rt.Destroy(context.WithoutCancel(ctx), id); derr != nil && err == nil {
				err = derr
			}
		}
	}()
	warm := cfg.WarmupCode
	if warm == "" {
		warm = "None"
	}
	var ready []time.Duration
	var last string
	for i := 0; i < cfg.Creates; i++ {
		t0 := time.Now()
		info, err := rt.Create(ctx, spec)
		if err != nil {
			return res, fmt.Errorf("create %d: %w", i, err)
		}
		created = append(created, info.ID)
		r, err := rt.Agent(info.ID).Execute(ctx, agentapi.ExecuteRequest{Code: warm, TimeoutSeconds: 120, Warmup: true})
		if err != nil || r.Status != agentapi.StatusSucceeded {
			return res, fmt.Errorf("warm-up %d: %v %s", i, err, r.Stderr)
		}
		ready = append(ready, time.Since(t0))
		// Keep the last sandbox for the round trips; destroy the others as we go.
		if last != "" {
			if err := rt.Destroy(ctx, last); err != nil {
				return res, err
			}
			created = created[1:]
		}
		last = info.ID
	}
	res.CreateToReady = Summarize(ready)
	if cfg.Execs == 0 || last == "" {
		return res, nil
	}
	ag := rt.Agent(last)
	for i := 0; i < 5; i++ {
		if _, err := ag.Execute(ctx, agentapi.ExecuteRequest{Code: "1+1"}); err != nil {
			return res, err
		}
	}
	var ds []time.Duration
	for i := 0; i < cfg.Execs; i++ {
		t0 := time.Now()
		r, err := ag.Execute(ctx, agentapi.ExecuteRequest{Code: "1+1"})
		if err != nil {
			return res, fmt.Errorf("execute %d: %w", i, err)
		}
		if string(r.Result) != "2" {
			return res, fmt.Errorf("execute %d: result %s: %s", i, r.Result, r.Stderr)
		}
		ds = append(ds, time.Since(t0))
	}
	res.Agent = Summarize(ds)

	out, err := ag.Exec(ctx, agentapi.ExecRequest{Argv: []string{"python3", "-c", baselineScript, fmt.Sprint(cfg.Execs)}, TimeoutMS: 300000})
	if err != nil {
		return res, fmt.Errorf("baseline: %w", err)
	}
	if out.ExitCode != 0 {
		return res, fmt.Errorf("baseline exited %d: %s", out.ExitCode, out.Stderr)
	}
	var base []time.Duration
	for _, l := range strings.Fields(out.Stdout) {
		var ns int64
		if _, err := fmt.Sscan(l, &ns); err == nil {
			base = append(base, time.Duration(ns))
		}
	}
	if len(base) != cfg.Execs {
		return res, fmt.Errorf("baseline printed %d durations, want %d: %s", len(base), cfg.Execs, out.Stderr)
	}
	res.Baseline = Summarize(base)
	if res.Baseline.P50 > 0 {
		res.Ratio = float64(res.Agent.P50) / float64(res.Baseline.P50)
	}
	return res, nil
}

// WriteKernelTable writes kernel results as a text table.
func WriteKernelTable(w io.Writer, rs []KernelResult) {
	fmt.Fprintf(w, "%-8s %-30s %6s %8s %8s %8s %8s\n", "runtime", "metric", "n", "p50 ms", "p95 ms", "p99 ms", "max ms")
	for _, r := range rs {
		for _, row := range []struct {
			name string
			s    Summary
		}{{"create to warm ready", r.CreateToReady}, {"1+1 via agent (host)", r.Agent}, {"1+1 jupyter_client (in sandbox)", r.Baseline}} {
			if row.s.N > 0 {
				fmt.Fprintf(w, "%-8s %-30s %6d %8s %8s %8s %8s\n", r.Runtime, row.name, row.s.N, ms(row.s.P50), ms(row.s.P95), ms(row.s.P99), ms(row.s.Max))
			}
		}
		if r.Ratio > 0 {
			fmt.Fprintf(w, "%-8s agent / jupyter_client p50 ratio: %.2f\n", r.Runtime, r.Ratio)
		}
	}
}
