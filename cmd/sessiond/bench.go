package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"

	"github.com/sessiond/sessiond/internal/bench"
)

func cmdBench(ctx context.Context, g *globals, args []string) error {
	if len(args) == 0 {
		return usagef("usage: sessiond bench sandbox [flags]")
	}
	switch args[0] {
	case "sandbox":
		return benchSandbox(ctx, g, args[1:])
	}
	return usagef("bench: unknown scenario %q (sandbox)", args[0])
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
	names := runtimeNames()
	if sf.runtime != "" {
		names = []string{sf.runtime}
	}
	var results []bench.SandboxResult
	for _, name := range names {
		sf.runtime = name
		rt, spec, err := sf.spec(ctx, g)
		if err != nil {
			return err
		}
		spec.Labels = map[string]string{"created-by": "sessiond bench"}
		res, err := bench.Sandbox(ctx, rt, bench.SandboxConfig{Spec: spec, Creates: *creates, Execs: *execs, Idle: *idle})
		if err != nil {
			return fmt.Errorf("bench %s: %w", name, err)
		}
		results = append(results, res)
	}
	if *output == "json" {
		enc := json.NewEncoder(g.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(results)
	}
	bench.WriteSandboxTable(g.Stdout, results)
	return nil
}
