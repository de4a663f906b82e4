package agent

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
)

// BenchmarkExecute1Plus1 times the round trip of `1+1` through the agent API (HTTP on
// the unix socket, queue, Jupyter protocol, result conversion) against a real ipykernel.
// Compare it with BenchmarkJupyterClientBaseline: the target is a ratio of at most 1.3.
func BenchmarkExecute1Plus1(b *testing.B) {
	ta := startKernelAgent(b)
	for range 20 { // warm up, as the baseline does
		run(b, ta, agentapi.ExecuteRequest{Code: "1+1"})
	}
	b.ResetTimer()
	for b.Loop() {
		if ex := run(b, ta, agentapi.ExecuteRequest{Code: "1+1"}); string(ex.Result) != "2" {
			b.Fatalf("execution = %+v", ex)
		}
	}
}

// baselineScript starts a fresh ipykernel with Python's jupyter_client, warms it up,
// then times N executions of `1+1` (each up to its reply and idle status, as
// execute_interactive waits) and prints each duration in nanoseconds, one a line.
const baselineScript = `
import os, sys, time
from jupyter_client.manager import start_new_kernel
os.environ["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
n = int(sys.argv[1])
km, kc = start_new_kernel(kernel_name="python3")
try:
    for _ in range(20):
        kc.execute_interactive("1+1", output_hook=lambda m: None, timeout=30)
    out = []
    for _ in range(n):
        t = time.perf_counter_ns()
        r = kc.execute_interactive("1+1", output_hook=lambda m: None, timeout=30)
        out.append(time.perf_counter_ns() - t)
        assert r["content"]["status"] == "ok"
    print("\n".join(map(str, out)), flush=True)
finally:
    kc.stop_channels()
    km.shutdown_kernel(now=True)
`

// BenchmarkJupyterClientBaseline reports the mean time of the same round trip made by
// Python's jupyter_client straight to ipykernel (no agent), measured inside Python.
func BenchmarkJupyterClientBaseline(b *testing.B) {
	py := kernelPython(b, "jupyter_client")
	script := filepath.Join(b.TempDir(), "baseline.py")
	if err := os.WriteFile(script, []byte(baselineScript), 0o644); err != nil {
		b.Fatal(err)
	}
	n := max(b.N, 1)
	cmd := exec.Command(py, script, strconv.Itoa(n))
	cmd.Env = append(os.Environ(), "PYDEVD_DISABLE_FILE_VALIDATION=1")
	out, err := cmd.Output()
	if err != nil {
		b.Fatalf("baseline script: %v", err)
	}
	var total time.Duration
	lines := strings.Fields(string(out))
	if len(lines) != n {
		b.Fatalf("baseline script printed %d durations, want %d", len(lines), n)
	}
	for _, l := range lines {
		ns, err := strconv.ParseInt(l, 10, 64)
		if err != nil {
			b.Fatalf("baseline script printed %q", l)
		}
		total += time.Duration(ns)
	}
	b.ReportMetric(float64(total.Nanoseconds())/float64(n), "ns/op")
}
