package bench

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/pool"
	"github.com/sessiond/sessiond/internal/sandbox"
)

// PoolConfig configures the in-process pool benchmark: refill rate, the CPU a warmed-up
// sandbox costs, and a burst of new identifiers against a full ready queue.
type PoolConfig struct {
	Runtime sandbox.Runtime
	Spec    pool.Spec // ReadySessionInstances is the fill target and the burst size
	Options pool.Options
	// Prepare is the warm-up hook (as sessiond serve installs it).
	Prepare func(context.Context, sandbox.Info, *agentapi.Client) error
}

// PoolResult is what the pool benchmark measured.
type PoolResult struct {
	Runtime string `json:"runtime"`
	Ready   int    `json:"ready"`
	// Fill is the time from an empty pool to Ready warmed-up sandboxes.
	Fill time.Duration `json:"fill"`
	// RefillPerSec is Ready / Fill.
	RefillPerSec float64 `json:"refillPerSecond"`
	// CPUPerSandbox is the mean cgroup CPU time of a ready sandbox (start plus warm-up).
	CPUPerSandbox time.Duration `json:"cpuPerSandbox"`
	// Burst: Ready new identifiers acquire and execute `1+1` at once.
	Burst         Summary       `json:"burst"`
	BurstWall     time.Duration `json:"burstWall"`
	BurstFailures int           `json:"burstFailures"`
}

// Pool runs the pool benchmark. It closes the pool (destroying its sandboxes) at the end.
func Pool(ctx context.Context, cfg PoolConfig) (res PoolResult, err error) {
	res.Runtime, res.Ready = cfg.Runtime.Name(), cfg.Spec.ReadySessionInstances
	opts := cfg.Options
	opts.Runtime = cfg.Runtime
	opts.Prepare = cfg.Prepare
	m, err := pool.New(cfg.Spec, opts)
	if err != nil {
		return res, err
	}
	t0 := time.Now()
	if err := m.Start(ctx); err != nil {
		return res, err
	}
	defer func() {
		if cerr := m.Close(context.WithoutCancel(ctx)); cerr != nil && err == nil {
			err = cerr
		}
	}()
	for m.Counts().Ready < cfg.Spec.ReadySessionInstances {
		if err := sleep(ctx, 10*time.Millisecond); err != nil {
			return res, err
		}
		if e := m.LastError(); e != nil && time.Since(t0) > 10*time.Minute {
			return res, fmt.Errorf("filling the pool: %w", e)
		}
	}
	res.Fill = time.Since(t0)
	res.RefillPerSec = float64(res.Ready) / res.Fill.Seconds()

	infos, err := cfg.Runtime.List(ctx)
	if err != nil {
		return res, err
	}
	var cpu time.Duration
	n := 0
	for _, i := range infos {
		if i.Labels[pool.LabelPool] != cfg.Spec.Name {
			continue
		}
		if st, err := cfg.Runtime.Stats(ctx, i.ID); err == nil {
			cpu += st.CPUTime
			n++
		}
	}
	if n > 0 {
		res.CPUPerSandbox = cpu / time.Duration(n)
	}

	ds := make([]time.Duration, res.Ready)
	errs := make([]error, res.Ready)
	var wg sync.WaitGroup
	t1 := time.Now()
	for i := 0; i < res.Ready; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			s := time.Now()
			l, err := m.Acquire(ctx, NewIdentifier("burst-"))
			if err != nil {
				errs[i] = err
				return
			}
			defer l.Release()
			r, err := l.Agent.Execute(ctx, agentapi.ExecuteRequest{Code: "1+1"})
			if err == nil && string(r.Result) != "2" {
				err = fmt.Errorf("result %s: %s", r.Result, r.Stderr)
			}
			errs[i], ds[i] = err, time.Since(s)
		}(i)
	}
	wg.Wait()
	res.BurstWall = time.Since(t1)
	var ok []time.Duration
	for i, e := range errs {
		if e != nil {
			res.BurstFailures++
			continue
		}
		ok = append(ok, ds[i])
	}
	res.Burst = Summarize(ok)
	return res, nil
}

// WritePoolTable writes a pool result.
func WritePoolTable(w io.Writer, r PoolResult) {
	fmt.Fprintf(w, "%s: filled %d warmed-up sandboxes in %s ms (%.2f sandboxes/s), %.2f CPU-seconds each\n",
		r.Runtime, r.Ready, ms(r.Fill), r.RefillPerSec, r.CPUPerSandbox.Seconds())
	fmt.Fprintf(w, "%s: burst of %d new identifiers (acquire + 1+1): all done in %s ms, p50 %s p95 %s p99 %s ms, %d failures\n",
		r.Runtime, r.Ready, ms(r.BurstWall), ms(r.Burst.P50), ms(r.Burst.P95), ms(r.Burst.P99), r.BurstFailures)
}
