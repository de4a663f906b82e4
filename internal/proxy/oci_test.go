package proxy

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/probe"
	"github.com/sessiond/sessiond/internal/sandbox"
	"github.com/sessiond/sessiond/internal/sandbox/oci"
	"github.com/sessiond/sessiond/internal/sandbox/sandboxtest"
)

// TestRealSandbox runs a container's HTTP server (python3 -m http.server from the test
// image, on the sandbox's loopback) in real runc and runsc sandboxes without network, and
// reaches it only through the agent: a startup probe waits for it, requests and a file
// come back through the proxy, and a liveness probe notices when it stops.
func TestRealSandbox(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real sandboxes")
	}
	img := sandboxtest.TestImage(t)
	for _, name := range oci.Names() {
		t.Run(name, func(t *testing.T) {
			base, err := os.MkdirTemp("/tmp", "spx-")
			if err != nil {
				t.Fatal(err)
			}
			os.Chmod(base, 0o711)
			state := filepath.Join(base, name)
			cgroupParent := "sessiond-test-" + strings.TrimPrefix(filepath.Base(base), "spx-")
			rt, err := oci.New(oci.Config{Name: name, StateDir: state, AgentBinary: agentBin, CgroupParent: cgroupParent})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				parents, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", cgroupParent))
				parents = append(parents, filepath.Join("/sys/fs/cgroup", cgroupParent))
				for _, p := range parents {
					os.Remove(p)
				}
				os.RemoveAll(base)
			})
			if c := rt.Capabilities(); !c.Available {
				sandboxtest.SkipOrFail(t, "%s unavailable: %s", name, c.Reason)
			}
			const port = 8080
			ctx, cancel := context.WithTimeout(context.Background(), sandboxtest.Timeout(2*time.Minute))
			defer cancel()
			info, err := rt.Create(ctx, sandbox.Spec{RootFS: img.RootFS, Image: img.Name, Env: img.Config.Env,
				Command: []string{"python3", "-m", "http.server", strconv.Itoa(port), "--bind", "127.0.0.1"}})
			if err != nil {
				t.Fatalf("Create: %v", err)
			}
			t.Cleanup(func() {
				if err := rt.Destroy(context.Background(), info.ID); err != nil {
					t.Errorf("Destroy: %v", err)
				}
			})
			ag := rt.Agent(info.ID)

			start := time.Now()
			hg := &probe.HTTPGet{Path: "/", Port: port}
			if err := probe.WaitStartup(ctx, ag, probe.Probe{Type: probe.Startup, PeriodSeconds: 1, FailureThreshold: 10, HTTPGet: hg}); err != nil {
				logs, _ := ag.Logs(ctx, 4096)
				t.Fatalf("startup probe: %v\nconsole: %s", err, logs)
			}
			t.Logf("%s: the server answered its startup probe %v after Create", name, time.Since(start))

			if _, err := ag.Upload(ctx, "hello.txt", strings.NewReader("hello from the sandbox"), -1); err != nil {
				t.Fatal(err)
			}
			f := newFront(t, newProxy(t, Config{}), port, to(ag))
			resp, err := client(t).Get(f.URL + poolPrefix + "/hello.txt?identifier=sess-1")
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || string(b) != "hello from the sandbox" {
				t.Errorf("GET /hello.txt through the proxy: %s %q", resp.Status, b)
			}
			if status, _ := get(t, f, "/missing?identifier=sess-1"); status != http.StatusNotFound {
				t.Errorf("GET /missing: %d, want the container's 404", status)
			}
			if status, _ := get(t, newFront(t, newProxy(t, Config{}), port+1, to(ag)), "/"); status != http.StatusServiceUnavailable {
				t.Errorf("a port nothing listens on: %d, want 503", status)
			}

			// Liveness: the server stops; Watch reports it.
			h, err := ag.Health(ctx)
			if err != nil || h.Main == nil || !h.Main.Running {
				t.Fatalf("health %+v, %v", h, err)
			}
			dead := make(chan error, 1)
			wctx, wcancel := context.WithCancel(ctx)
			done := make(chan struct{})
			go func() {
				defer close(done)
				probe.Watch(wctx, ag, probe.Probe{Type: probe.Liveness, PeriodSeconds: 1, FailureThreshold: 2, HTTPGet: hg}, func(err error) { dead <- err })
			}()
			defer func() { wcancel(); <-done }()
			if res, err := ag.Exec(ctx, agentapi.ExecRequest{Shell: "kill " + strconv.Itoa(h.Main.PID)}); err != nil || res.ExitCode != 0 {
				t.Fatalf("kill: %+v, %v", res, err)
			}
			select {
			case err := <-dead:
				if !errkind.Is(err, errkind.Unavailable) {
					t.Errorf("onDead(%v)", err)
				}
			case <-time.After(sandboxtest.Timeout(30 * time.Second)):
				t.Fatal("the liveness probe did not notice the server stopped")
			}
		})
	}
}
