package agent

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/jupyter"
	"github.com/sessiond/sessiond/internal/jupyter/jupytertest"
)

// startFakeKernelAgent serves an agent whose "kernel" is a process that ignores SIGINT
// and does nothing, while a jupytertest.Kernel in the test process listens on the ports
// of the connection file the agent wrote for it. It needs no Python.
func startFakeKernelAgent(t *testing.T, maxDisplay int, execute func(*jupytertest.Exec)) *testAgent {
	t.Helper()
	a, base := newAgent(t, func(c *Config) {
		c.Kernel = KernelPython3
		c.KernelDir = filepath.Join(os.TempDir(), "sessiond-kernel-test")
	})
	a.kernelMaxDisplay = maxDisplay
	var mu sync.Mutex
	var fakes []*jupytertest.Kernel
	t.Cleanup(func() { // after the agent stopped (cleanups run last first)
		mu.Lock()
		defer mu.Unlock()
		for _, k := range fakes {
			k.Close()
		}
	})
	a.kernelArgv = func(connFile string) []string {
		info, err := jupyter.ReadConnectionFile(connFile)
		k := &jupytertest.Kernel{Execute: execute}
		if err == nil {
			err = k.Start(&info)
		}
		if err != nil {
			t.Errorf("starting the fake kernel: %v", err)
			return []string{"/bin/false"}
		}
		mu.Lock()
		fakes = append(fakes, k)
		mu.Unlock()
		return []string{"/bin/sh", "-c", "trap '' INT; exec sleep 1000"}
	}
	ta := serve(t, a, base)
	waitKernel(t, ta, func(ki agentapi.KernelInfo) bool { return ki.State == "idle" })
	return ta
}

// TestFakeKernelHostileOutput checks that forged messages never reach a result and that
// rich outputs beyond MaxDisplayBytes are dropped and flagged.
func TestFakeKernelHostileOutput(t *testing.T) {
	t.Parallel()
	const maxDisplay = 1 << 20
	big := strings.Repeat("A", 300<<10)
	ta := startFakeKernelAgent(t, maxDisplay, func(x *jupytertest.Exec) {
		forger := jupyter.NewCodec("guessed key")
		frames, _ := forger.EncodeContent([][]byte{[]byte("t")}, jupyter.NewHeader("stream", "s"), x.Parent(), jupyter.Stream{Name: "stdout", Text: "forged\n"})
		x.PublishRaw(frames)
		x.Publish("stream", jupyter.Stream{Name: "stdout", Text: "ok\n"})
		for range 5 {
			x.Display(map[string]any{"image/png": big})
		}
		x.Result(map[string]any{"text/plain": "'r'"})
		x.SetUserExpression(resultKey, map[string]any{"text/plain": "'str:cg=='"})
	})
	ex := run(t, ta, agentapi.ExecuteRequest{Code: "anything"})
	if ex.Status != agentapi.StatusSucceeded || ex.Stdout != "ok\n" || string(ex.Result) != `"r"` {
		t.Errorf("execution: status %s, stdout %q, result %s", ex.Status, ex.Stdout, ex.Result)
	}
	total := 0
	for _, o := range ex.Outputs {
		for _, v := range o.Data {
			total += len(v)
		}
	}
	if !ex.OutputsTruncated || total > maxDisplay {
		t.Errorf("outputs: %d bytes in %d outputs, truncated %v; want at most %d, truncated", total, len(ex.Outputs), ex.OutputsTruncated, maxDisplay)
	}
	var img imageResult
	if json.Unmarshal(ex.Result, &img) == nil && img.Type == "image" {
		t.Error("the result is an image although the cell had a value")
	}
}

// TestFakeKernelStuck checks the timeout path with a kernel that neither answers nor
// stops on SIGINT: it is replaced within timeout + grace, and the next execution runs
// on the new kernel.
func TestFakeKernelStuck(t *testing.T) {
	t.Parallel()
	ta := startFakeKernelAgent(t, 0, func(x *jupytertest.Exec) {
		if x.Code == "hang" {
			x.Stream("stdout", "before\n")
			<-x.Done()
			return
		}
		jupytertest.DefaultExecute(x)
	})
	start := time.Now()
	ex := run(t, ta, agentapi.ExecuteRequest{Code: "hang", TimeoutSeconds: 1})
	// The hang lasts until the test ends: the bound catches waiting for it (or for the
	// 60 s request deadline), with room for a replacement on a loaded machine (CI took
	// up to 8 s with the whole suite running).
	if d := time.Since(start); d > time.Second+interruptGrace+12*time.Second {
		t.Errorf("a 1s timeout took %v", d)
	}
	if ex.Status != agentapi.StatusFailed || ex.Stderr != agentapi.TimeoutMessage || !ex.KernelRestarted || ex.Stdout != "before\n" {
		t.Errorf("stuck execution = %+v", ex)
	}
	if ex := run(t, ta, agentapi.ExecuteRequest{Code: "print:after"}); ex.Status != agentapi.StatusSucceeded || ex.Stdout != "after" || ex.KernelRestarted {
		t.Errorf("next execution = %+v", ex)
	}
	if ki := waitKernel(t, ta, func(agentapi.KernelInfo) bool { return true }); ki.Restarts != 1 || ki.Name != "fake" {
		t.Errorf("kernel info = %+v", ki)
	}
}
