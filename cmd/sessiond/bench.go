package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/sessiond/sessiond/internal/bench"
	"github.com/sessiond/sessiond/internal/controlplane"
	"github.com/sessiond/sessiond/internal/pool"
	"github.com/sessiond/sessiond/internal/sandbox"
)

func cmdBench(ctx context.Context, g *globals, args []string) error {
	if len(args) == 0 {
		return usagef("usage: sessiond bench sandbox|kernel|pool|api [flags]")
	}
	switch args[0] {
	case "sandbox":
		return benchSandbox(ctx, g, args[1:])
	case "api":
		return benchAPI(ctx, g, args[1:])
	case "kernel":
		return benchKernel(ctx, g, args[1:])
	case "pool":
		return benchPool(ctx, g, args[1:])
	}
	return usagef("bench: unknown scenario %q (sandbox, kernel, pool, api)", args[0])
}

// benchSandbox measures each runtime (or the one chosen) with bench.Sandbox.
func benchSandbox(ctx context.Context, g *globals, args []string) error {
	fs := flag.NewFlagSet("bench sandbox", flag.ContinueOnError)
	fs.SetOutput(g.Stderr)
	var sf specFlags
	sf.register(fs)
	creates := fs.Int("creates", 30, "sandboxes created and destroyed one after another")
	execs := fs.Int("execs", 500, "exec round trips of `true` timed in one sandbox")
	idle := fs.Int("idle", 10, "sandboxes held at once to measure idle memory")
	output := fs.String("o", "table", "output: table or json")
	if err := fs.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	results, err := eachRuntime(ctx, g, sf, func(rt sandbox.Runtime, spec sandbox.Spec) (bench.SandboxResult, error) {
		return bench.Sandbox(ctx, rt, bench.SandboxConfig{Spec: spec, Creates: *creates, Execs: *execs, Idle: *idle})
	})
	if err != nil {
		return err
	}
	return writeResults(g, *output, results, func(w io.Writer) { bench.WriteSandboxTable(w, results) })
}

// benchAPI measures a running server through its Azure-compatible API.
func benchAPI(ctx context.Context, g *globals, args []string) error {
	fs := flag.NewFlagSet("bench api", flag.ContinueOnError)
	fs.SetOutput(g.Stderr)
	endpoint := fs.String("endpoint", "http://127.0.0.1:8080/pools/default", "pool management endpoint")
	var cfg bench.APIConfig
	fs.IntVar(&cfg.Warm, "warm", 50, "first executions on new identifiers (warm pool)")
	fs.IntVar(&cfg.WarmBatch, "warm-batch", 5, "first executions per round; at most the pool's readySessionInstances")
	fs.DurationVar(&cfg.WarmRefill, "refill-wait", 10*time.Second, "pause for the pool to refill: between warm rounds and before the timed executions on an existing session")
	fs.BoolVar(&cfg.Paired, "paired", false, "time an execution on a reference session right before each warm first execution, and the p50 of the differences")
	fs.BoolVar(&cfg.Second, "second", false, "after each warm round and the refill, one more execution on each of its identifiers (adds a -refill-wait per round)")
	fs.IntVar(&cfg.Existing, "existing", 200, "executions on one existing session")
	fs.IntVar(&cfg.Paused, "paused", 20, "more executions on that session, each after -pause idle")
	fs.DurationVar(&cfg.Pause, "pause", time.Second, "idle time before each -paused execution")
	fs.IntVar(&cfg.Burst, "burst", 0, "new identifiers executing at once (0: skip)")
	fs.IntVar(&cfg.Sessions, "sessions", 0, "sessions executing in a loop for -for (0: skip)")
	fs.DurationVar(&cfg.ThroughputFor, "for", 10*time.Second, "how long the throughput scenario runs")
	fs.IntVar(&cfg.Hold, "hold", 0, "idle sessions to allocate and hold to measure memory (0: skip)")
	output := fs.String("o", "table", "output: table or json")
	if err := fs.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	if cfg.Paused < 0 || cfg.Pause < 0 {
		return usageError{"-paused and -pause cannot be negative"}
	}
	res, err := bench.API(ctx, bench.NewAPIClient(*endpoint), cfg, g.Stderr)
	if err != nil {
		return err
	}
	return writeResults(g, *output, res, func(w io.Writer) { bench.WriteAPITable(w, res) })
}

// benchKernel measures the code interpreter in each runtime (or the one chosen).
func benchKernel(ctx context.Context, g *globals, args []string) error {
	fs := flag.NewFlagSet("bench kernel", flag.ContinueOnError)
	fs.SetOutput(g.Stderr)
	var sf specFlags
	sf.register(fs)
	creates := fs.Int("creates", 10, "sandboxes timed from create to warmed-up ready")
	execs := fs.Int("execs", 300, "1+1 round trips timed through the agent and with jupyter_client")
	warmup := fs.String("warmup", pool.DefaultWarmupCode, "warm-up code run before a sandbox counts as ready")
	output := fs.String("o", "table", "output: table or json")
	if err := fs.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	results, err := eachRuntime(ctx, g, sf, func(rt sandbox.Runtime, spec sandbox.Spec) (bench.KernelResult, error) {
		return bench.Kernel(ctx, rt, bench.KernelConfig{Spec: spec, WarmupCode: *warmup, Creates: *creates, Execs: *execs})
	})
	if err != nil {
		return err
	}
	return writeResults(g, *output, results, func(w io.Writer) { bench.WriteKernelTable(w, results) })
}

// benchPool fills an in-process pool on a real runtime and bursts new identifiers at it.
func benchPool(ctx context.Context, g *globals, args []string) error {
	fs := flag.NewFlagSet("bench pool", flag.ContinueOnError)
	fs.SetOutput(g.Stderr)
	var sf specFlags
	sf.register(fs)
	ready := fs.Int("ready", 20, "ready sandboxes to fill, then the burst size")
	parallel := fs.Int("parallel", pool.DefaultRefillParallelism, "concurrent sandbox creates")
	warmup := fs.String("warmup", pool.DefaultWarmupCode, "warm-up code")
	output := fs.String("o", "table", "output: table or json")
	if err := fs.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	rt, spec, err := sf.spec(ctx, g)
	if err != nil {
		return err
	}
	ps := pool.Spec{Name: "bench-" + rt.Name(), ContainerType: pool.PythonLTS, MaxConcurrentSessions: *ready,
		ReadySessionInstances: *ready, LifecycleType: "Timed", CooldownPeriod: time.Hour,
		Runtime: rt.Name(), Image: spec.Image, Limits: spec.Limits, WarmupCode: *warmup,
		ExecutionTimeoutCap: pool.DefaultExecutionTimeoutCap}
	res, err := bench.Pool(ctx, bench.PoolConfig{Runtime: rt, Spec: ps,
		Options: pool.Options{RootFS: spec.RootFS, Env: spec.Env, Kernel: "python3", Log: g.Log, RefillParallelism: *parallel},
		Prepare: controlplane.WarmupHook(ps, nil)})
	if err != nil {
		return err
	}
	return writeResults(g, *output, res, func(w io.Writer) { bench.WritePoolTable(w, res) })
}

// eachRuntime runs measure on every registered runtime, or on the one sf names, with a
// sandbox spec built from sf.
func eachRuntime[R any](ctx context.Context, g *globals, sf specFlags, measure func(sandbox.Runtime, sandbox.Spec) (R, error)) ([]R, error) {
	names := runtimeNames()
	if sf.runtime != "" {
		names = []string{sf.runtime}
	}
	var results []R
	for _, name := range names {
		sf.runtime = name
		rt, spec, err := sf.spec(ctx, g)
		if err != nil {
			return nil, err
		}
		spec.Labels = map[string]string{"created-by": "sessiond bench"}
		res, err := measure(rt, spec)
		if err != nil {
			return nil, fmt.Errorf("bench %s: %w", name, err)
		}
		results = append(results, res)
	}
	return results, nil
}

// writeResults prints v as indented JSON, or as table writes it.
func writeResults(g *globals, output string, v any, table func(io.Writer)) error {
	if output == "json" {
		enc := json.NewEncoder(g.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	table(g.Stdout)
	return nil
}
