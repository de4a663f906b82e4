package jupyter

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// ipykernelPython returns a python3 that can import ipykernel, or skips the test (fails
// it when SESSIOND_TEST_REQUIRE=1).
func ipykernelPython(t testing.TB) string {
	t.Helper()
	for _, p := range []string{"/usr/bin/python3", "python3"} {
		path, err := exec.LookPath(p)
		if err != nil {
			continue
		}
		if exec.Command(path, "-c", "import ipykernel").Run() == nil {
			return path
		}
	}
	msg := "no python3 with ipykernel (Debian: apt-get install python3-ipykernel)"
	if os.Getenv("SESSIOND_TEST_REQUIRE") == "1" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// startRealKernel starts ipykernel and returns a ready client; cleanup stops both.
// A kernel that exits before answering (another process took one of its ports between
// FreePorts and its bind) is started again on fresh ports, as the agent does.
func startRealKernel(t *testing.T) *Client {
	t.Helper()
	for attempt := 1; ; attempt++ {
		c, err := tryRealKernel(t, nil)
		if err == nil {
			return c
		}
		if attempt == 3 {
			t.Fatal(err)
		}
		t.Logf("attempt %d: %v; retrying", attempt, err)
	}
}

// tryRealKernel starts ipykernel on info, or on fresh TCP ports if info is nil.
func tryRealKernel(t *testing.T, info *ConnectionInfo) (*Client, error) {
	py := ipykernelPython(t)
	if info == nil {
		ports, err := FreePorts()
		if err != nil {
			return nil, err
		}
		ci, err := NewConnectionInfo(ports)
		if err != nil {
			return nil, err
		}
		info = &ci
	}
	cf := filepath.Join(t.TempDir(), "kernel.json")
	if err := info.WriteFile(cf, false, 0, 0); err != nil {
		return nil, err
	}
	cmd := exec.Command(py, "-m", "ipykernel_launcher", "-f", cf)
	cmd.Env = append(os.Environ(), "PYDEVD_DISABLE_FILE_VALIDATION=1", "MPLBACKEND=module://matplotlib_inline.backend_inline")
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	stop := func() { cmd.Process.Kill(); <-exited }
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	go func() {
		select {
		case <-exited:
			cancel()
		case <-ctx.Done():
		}
	}()
	c, err := Dial(ctx, *info, Options{})
	if err != nil {
		stop()
		return nil, fmt.Errorf("dialling the kernel: %w", err)
	}
	if _, err := c.WaitReady(ctx); err != nil {
		c.Close()
		stop()
		return nil, fmt.Errorf("waiting for the kernel: %w", err)
	}
	t.Cleanup(stop)
	t.Cleanup(func() { c.Close() })
	return c, nil
}

// TestRealKernelIPC runs ipykernel on unix sockets (transport ipc), as the agent does.
func TestRealKernelIPC(t *testing.T) {
	t.Parallel()
	dir, err := os.MkdirTemp("", "kipc-") // short: socket paths are bounded
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	info, err := NewIPCConnectionInfo(filepath.Join(dir, "k"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := tryRealKernel(t, &info)
	if err != nil {
		t.Fatal(err)
	}
	ex, err := c.Execute(ExecuteRequest{Code: "6*7"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-ex.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("execution never finished")
	}
	if r, err := ex.Reply(); err != nil || r.Status != "ok" {
		t.Fatalf("reply = %+v, %v", r, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "k-1")); err != nil {
		t.Errorf("the shell socket is not at prefix-1: %v", err)
	}
}

func TestRealKernel(t *testing.T) {
	t.Parallel()
	c := startRealKernel(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ki, err := c.KernelInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ki.Implementation != "ipython" || ki.LanguageInfo.Name != "python" || ki.ImplementationVersion == "" {
		t.Errorf("kernel info = %+v", ki)
	}
	if err := c.Heartbeat(ctx); err != nil {
		t.Errorf("Heartbeat: %v", err)
	}
	var mu sync.Mutex
	var got []string
	ex, err := c.Execute(ExecuteRequest{Code: "print('hi'); 1+1", StoreHistory: true, UserExpressions: map[string]string{"x": "40+2"}}, func(m *Message) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, m.Header.MsgType)
		if m.Header.MsgType == "stream" {
			s, _, err := ParseStream(m)
			if err != nil || s.Name != "stdout" || s.Text != "hi\n" {
				t.Errorf("stream = %+v, %v", s, err)
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-ex.Done():
	case <-ctx.Done():
		t.Fatal("execution never finished")
	}
	r, err := ex.Reply()
	if err != nil {
		t.Fatal(err)
	}
	if r.Status != "ok" || string(r.UserExpressions["x"].Data["text/plain"]) != `"42"` {
		t.Errorf("reply = %+v", r)
	}
	mu.Lock()
	if strings.Join(got, ",") != "execute_input,stream,execute_result" {
		t.Errorf("iopub messages %v", got)
	}
	mu.Unlock()
	if err := c.Shutdown(ctx, false); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if c.Dropped() != 0 {
		t.Errorf("%d messages dropped", c.Dropped())
	}
}
