package bench_test

import (
	"context"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/api"
	"github.com/sessiond/sessiond/internal/bench"
	"github.com/sessiond/sessiond/internal/controlplane/controlplanetest"
	"github.com/sessiond/sessiond/internal/pool"
)

func TestMain(m *testing.M) { controlplanetest.VerifyTestMain(m) }

// TestAPI runs every scenario of the API benchmark, with small counts, against a real
// control plane and API with real agents and kernels (Fake sandboxes), and checks that
// each one measured what it says and that the benchmark leaves no session behind.
func TestAPI(t *testing.T) {
	// Fake sandboxes run the host's python3: Debian's, which has ipykernel (not a
	// per-user one the kernel's unprivileged user cannot reach).
	t.Setenv("PATH", "/usr/bin:"+os.Getenv("PATH"))
	e := controlplanetest.New(t, pool.Spec{Name: "bench", ContainerType: pool.PythonLTS,
		MaxConcurrentSessions: 6, ReadySessionInstances: 2, CooldownPeriod: time.Hour, WarmupCode: "x = 1"})
	srv := httptest.NewServer(api.New(api.Config{Pools: e.CP, Manage: e.CP}))
	t.Cleanup(srv.Close)
	e.WaitReady(t, "bench", 2)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := bench.NewAPIClient(srv.URL + "/pools/bench")
	res, err := bench.API(ctx, c, bench.APIConfig{Warm: 3, WarmBatch: 2, WarmRefill: 100 * time.Millisecond, Second: true, Paired: true,
		Existing: 4, Paused: 2, Pause: 50 * time.Millisecond, Burst: 2, Sessions: 2, ThroughputFor: 300 * time.Millisecond, Hold: 1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.FirstExecWarm.N != 3 || res.SecondExec.N != 3 || res.ExistingExec.N != 4 || res.PausedExec.N != 2 || res.Pause != 50*time.Millisecond ||
		res.Burst.N != 2 || res.BurstFailures != 0 || res.ExecsPerSec <= 0 || res.Held != 1 {
		t.Errorf("result %+v: counts do not match the configuration", res)
	}
	if res.OverheadP50 != res.FirstExecWarm.P50-res.ExistingExec.P50 || res.OverheadSecondP50 != res.FirstExecWarm.P50-res.SecondExec.P50 || res.OverheadIdleP50 != res.FirstExecWarm.P50-res.PausedExec.P50 {
		t.Errorf("overheads %v, %v do not follow from %+v", res.OverheadP50, res.OverheadIdleP50, res)
	}
	// Each paired difference is a first execution minus a reference one.
	if p := res.PairedOverhead; res.PairedRef.N != 3 || p.N != 3 ||
		p.Min < res.FirstExecWarm.Min-res.PairedRef.Max || p.Max > res.FirstExecWarm.Max-res.PairedRef.Min {
		t.Errorf("paired reference %+v and differences %+v do not follow from the first executions %+v", res.PairedRef, p, res.FirstExecWarm)
	}
	if res.PausedExec.P50 <= 0 || res.ExistingExec.P50 <= 0 {
		t.Errorf("result %+v: an execution took no time", res)
	}
	controlplanetest.WaitFor(t, "the benchmark's sessions to end", func() bool {
		return e.CP.Counts()["bench"].Allocated == 0
	})
}
