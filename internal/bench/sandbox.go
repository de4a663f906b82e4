package bench

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/sandbox"
)

// SandboxConfig configures the sandbox benchmark.
type SandboxConfig struct {
	// Spec is the template of every sandbox created (ID is left empty).
	Spec sandbox.Spec
	// Creates is how many sandboxes are created and destroyed one after another.
	Creates int
	// Execs is how many `true` executions are timed in one sandbox.
	Execs int
	// Idle is how many sandboxes are held at once to measure idle memory.
	Idle int
}

// SandboxResult is what the sandbox benchmark measured for one runtime.
type SandboxResult struct {
	Runtime string  `json:"runtime"`
	Create  Summary `json:"createToHealthy"`
	Destroy Summary `json:"destroy"`
	ExecRT  Summary `json:"execTrue"`
	// IdlePSS is the mean proportional set size of an idle sandbox's host processes.
	IdlePSSBytes int64 `json:"idlePssBytes"`
	// IdleCgroupBytes is the mean memory charged to an idle sandbox's cgroup.
	IdleCgroupBytes int64 `json:"idleCgroupBytes"`
}

// Sandbox measures create-to-healthy, destroy and exec round-trip latency and idle memory
// of rt. It destroys everything it created, also on error.
func Sandbox(ctx context.Context, rt sandbox.Runtime, cfg SandboxConfig) (res SandboxResult, err error) {
	res.Runtime = rt.Name()
	var created []string
	defer func() {
		for _, id := range created {
			if derr := rt.Destroy(context.WithoutCancel(ctx), id); derr != nil && err == nil {
				err = derr
			}
		}
	}()
	var creates, destroys []time.Duration
	for i := 0; i < cfg.Creates; i++ {
		t0 := time.Now()
		info, err := rt.Create(ctx, cfg.Spec)
		if err != nil {
			return res, fmt.Errorf("create %d: %w", i, err)
		}
		creates = append(creates, time.Since(t0))
		t0 = time.Now()
		if err := rt.Destroy(ctx, info.ID); err != nil {
			return res, fmt.Errorf("destroy %d: %w", i, err)
		}
		destroys = append(destroys, time.Since(t0))
	}
	res.Create, res.Destroy = Summarize(creates), Summarize(destroys)

	if cfg.Execs > 0 {
		info, err := rt.Create(ctx, cfg.Spec)
		if err != nil {
			return res, fmt.Errorf("create for exec: %w", err)
		}
		created = append(created, info.ID)
		ag := rt.Agent(info.ID)
		req := agentapi.ExecRequest{Argv: []string{"true"}}
		// Warm the connection and the page cache.
		for i := 0; i < 3; i++ {
			if _, err := ag.Exec(ctx, req); err != nil {
				return res, fmt.Errorf("exec warm-up: %w", err)
			}
		}
		var execs []time.Duration
		for i := 0; i < cfg.Execs; i++ {
			t0 := time.Now()
			r, err := ag.Exec(ctx, req)
			if err != nil {
				return res, fmt.Errorf("exec %d: %w", i, err)
			}
			if r.ExitCode != 0 {
				return res, fmt.Errorf("exec %d: true exited %d: %s", i, r.ExitCode, r.Stderr)
			}
			execs = append(execs, time.Since(t0))
		}
		res.ExecRT = Summarize(execs)
	}

	if cfg.Idle > 0 {
		var ids []string
		for i := 0; i < cfg.Idle; i++ {
			info, err := rt.Create(ctx, cfg.Spec)
			if err != nil {
				return res, fmt.Errorf("create idle %d: %w", i, err)
			}
			created = append(created, info.ID)
			ids = append(ids, info.ID)
		}
		time.Sleep(time.Second) // let start-up work settle
		var pss, mem int64
		for _, id := range ids {
			st, err := rt.Stats(ctx, id)
			if err != nil {
				return res, fmt.Errorf("stats: %w", err)
			}
			pss += st.PSSBytes
			mem += st.MemoryBytes
		}
		res.IdlePSSBytes = pss / int64(len(ids))
		res.IdleCgroupBytes = mem / int64(len(ids))
	}
	return res, nil
}

// WriteSandboxTable writes results as a text table.
func WriteSandboxTable(w io.Writer, rs []SandboxResult) {
	fmt.Fprintf(w, "%-8s %-22s %8s %8s %8s %8s %8s\n", "runtime", "metric", "n", "p50 ms", "p95 ms", "p99 ms", "max ms")
	for _, r := range rs {
		for _, row := range []struct {
			name string
			s    Summary
		}{{"create-to-healthy", r.Create}, {"destroy", r.Destroy}, {"exec true round trip", r.ExecRT}} {
			if row.s.N == 0 {
				continue
			}
			fmt.Fprintf(w, "%-8s %-22s %8d %8s %8s %8s %8s\n", r.Runtime, row.name, row.s.N, ms(row.s.P50), ms(row.s.P95), ms(row.s.P99), ms(row.s.Max))
		}
		if r.IdlePSSBytes > 0 {
			fmt.Fprintf(w, "%-8s %-22s %8s %.1f MiB PSS, %.1f MiB cgroup\n", r.Runtime, "idle memory / sandbox", "",
				float64(r.IdlePSSBytes)/(1<<20), float64(r.IdleCgroupBytes)/(1<<20))
		}
	}
}
