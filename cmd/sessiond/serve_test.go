package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/api"
	"github.com/sessiond/sessiond/internal/controlplane"
	"github.com/sessiond/sessiond/internal/pool"
	"github.com/sessiond/sessiond/internal/sandbox/oci"
	"github.com/sessiond/sessiond/internal/sandbox/sandboxtest"
)

// TestServeEndToEnd runs the control plane as `sessiond serve` wires it (real pools on real
// runc and runsc sandboxes with real kernels, behind the real API) and drives it the way
// clients do: both API generations, state per identifier, files, metadata, the cap's 429,
// cooldown expiry, a Shell pool, and nothing left behind after shutdown.
func TestServeEndToEnd(t *testing.T) {
	// cooldown is long enough for the steps before the expiry check to run on a busy
	// 2-core machine under gVisor, and short enough to wait for.
	const cooldown = 8 * time.Second
	const maxAlive = 5 * time.Second
	if testing.Short() {
		t.Skip("starts real sandboxes")
	}
	img := sandboxtest.TestImage(t)
	agentDir, err := os.MkdirTemp("", "sessiond-agent-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(agentDir)
	agent, err := sandboxtest.BuildAgent(agentDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("SESSIOND_AGENT", agent)
	for _, rtName := range oci.Names() {
		t.Run(rtName, func(t *testing.T) {
			// A data directory of the test's own (short: sandbox socket paths live below
			// it), sharing the image store where make test built the test image.
			data, err := os.MkdirTemp("/tmp", "sde-")
			if err != nil {
				t.Fatal(err)
			}
			os.Chmod(data, 0o711)
			defer os.RemoveAll(data)
			storeDir := filepath.Dir(filepath.Dir(img.RootFS)) // <store>/rootfs/<id>
			if err := os.Symlink(storeDir, filepath.Join(data, "images")); err != nil {
				t.Fatal(err)
			}
			g := &globals{DataDir: data, Stdout: io.Discard, Stderr: io.Discard, Log: slog.New(slog.DiscardHandler)}
			if rt, err := openRuntime(g, rtName); err != nil || !rt.Capabilities().Available {
				sandboxtest.SkipOrFail(t, "%s unavailable: %v", rtName, err)
			}
			specs := []pool.Spec{{
				Name: "py-" + rtName, ContainerType: pool.PythonLTS, MaxConcurrentSessions: 3, ReadySessionInstances: 3,
				LifecycleType: "Timed", CooldownPeriod: cooldown, Runtime: rtName, Image: img.Name,
				WarmupCode: pool.DefaultWarmupCode, ExecutionTimeoutCap: 30 * time.Second,
			}, {
				// Max-alive: a session in use all along still ends maxAlivePeriod after it
				// was allocated.
				Name: "ma-" + rtName, ContainerType: pool.PythonLTS, MaxConcurrentSessions: 2, ReadySessionInstances: 1,
				LifecycleType: "Timed", CooldownPeriod: time.Minute, MaxAlivePeriod: maxAlive, Runtime: rtName,
				Image: img.Name, WarmupCode: "None", ExecutionTimeoutCap: 30 * time.Second,
			}, {
				Name: "sh-" + rtName, ContainerType: pool.Shell, MaxConcurrentSessions: 2, ReadySessionInstances: 1,
				LifecycleType: "Timed", CooldownPeriod: time.Minute, Runtime: rtName, Image: img.Name,
				ExecutionTimeoutCap: 30 * time.Second,
			}}
			ctx := context.Background()
			cp, err := newControlPlane(ctx, g, specs, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			srv := httptest.NewServer(api.New(api.Config{Pools: cp}))
			defer srv.Close()
			closed := false
			defer func() {
				if !closed {
					cp.Close(context.Background())
				}
			}()
			py := srv.URL + "/subscriptions/local/resourceGroups/local/sessionPools/py-" + rtName
			sh := srv.URL + "/pools/sh-" + rtName
			waitReady(t, cp, "py-"+rtName, 3) // alice, bob and carol below never wait for a start

			// LangChain's legacy execute on a new identifier.
			var legacy struct {
				Properties struct {
					Status          string
					Stdout, Stderr  string
					Result          json.RawMessage
					ExecutionResult json.RawMessage
				}
			}
			t0 := time.Now()
			do(t, "POST", py+"/code/execute?api-version=2024-02-02-preview&identifier=alice-1",
				`{"properties":{"codeInputType":"inline","executionType":"synchronous","code":"x = 6*7\nprint('hi')\nx"}}`, 200, &legacy)
			t.Logf("first execution on a new identifier: %v", time.Since(t0))
			if p := legacy.Properties; p.Status != "Success" || string(p.Result) != "42" || string(p.ExecutionResult) != "42" || p.Stdout != "hi\n" {
				t.Errorf("legacy execute = %+v", p)
			}
			// The new generation reaches the same session; another identifier does not.
			var ex struct {
				Status string
				Result struct {
					Stdout, Stderr  string
					ExecutionResult json.RawMessage
				}
			}
			do(t, "POST", py+"/executions?api-version=2025-10-02-preview&identifier=alice-1", `{"code":"x + 1"}`, 200, &ex)
			if ex.Status != "Succeeded" || string(ex.Result.ExecutionResult) != "43" {
				t.Errorf("state across generations: %+v", ex)
			}
			do(t, "POST", py+"/executions?api-version=2025-10-02-preview&identifier=bob-22", `{"code":"x"}`, 200, &ex)
			if ex.Status != "Failed" || !strings.Contains(ex.Result.Stderr, "NameError") {
				t.Errorf("another identifier sees the first one's state: %+v", ex)
			}
			// The warm-up froze what its imports left: a full collection walks little.
			do(t, "POST", py+"/executions?api-version=2025-10-02-preview&identifier=bob-22",
				`{"code":"import gc\nlen(gc.get_objects()) * 4 < gc.get_freeze_count()"}`, 200, &ex)
			if string(ex.Result.ExecutionResult) != "true" {
				t.Errorf("objects left to the collector after the warm-up: %+v", ex)
			}

			// Files: upload, list, download.
			var body bytes.Buffer
			mw := multipart.NewWriter(&body)
			fw, _ := mw.CreateFormFile("file", "data.csv")
			fw.Write([]byte("a,b\n1,2\n"))
			mw.Close()
			req, _ := http.NewRequest("POST", py+"/files?api-version=2025-10-02-preview&identifier=alice-1", &body)
			req.Header.Set("Content-Type", mw.FormDataContentType())
			resp, err := http.DefaultClient.Do(req)
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("upload: %v %v", err, resp)
			}
			resp.Body.Close()
			do(t, "POST", py+"/executions?api-version=2025-10-02-preview&identifier=alice-1",
				`{"code":"import pandas as pd\nint(pd.read_csv('/mnt/data/data.csv')['b'].sum())"}`, 200, &ex)
			if string(ex.Result.ExecutionResult) != "2" {
				t.Errorf("reading the uploaded file: %+v", ex)
			}
			resp, err = http.Get(py + "/files/data.csv/content?api-version=2025-10-02-preview&identifier=alice-1")
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(got) != "a,b\n1,2\n" {
				t.Errorf("download = %q", got)
			}
			var list struct{ Value []struct{ Name string } }
			do(t, "GET", py+"/files?api-version=2025-10-02-preview&identifier=bob-22", "", 200, &list)
			if len(list.Value) != 0 {
				t.Errorf("another session lists %+v", list.Value)
			}

			var md struct {
				Runtimes             []struct{ Name, Version string }
				PreInstalledPackages []struct{ Name, Version string }
			}
			do(t, "GET", py+"/metadata?api-version=2025-02-02-preview", "", 200, &md)
			if len(md.Runtimes) == 0 || md.Runtimes[0].Name != "python" || !hasPackage(md.PreInstalledPackages, "numpy") {
				t.Errorf("metadata = %+v", md)
			}

			// The cap: two sessions exist, a third fits, a fourth gets 429. The third may wait
			// for a cold start longer than the cooldown on a loaded machine, so the first two
			// are kept alive by a request each just before the fourth.
			do(t, "POST", py+"/executions?api-version=2025-10-02-preview&identifier=carol-3", `{"code":"1"}`, 200, nil)
			do(t, "GET", py+"/session?api-version=2025-02-02-preview&identifier=alice-1", "", 200, nil)
			do(t, "GET", py+"/session?api-version=2025-02-02-preview&identifier=bob-22", "", 200, nil)
			resp, err = http.Post(py+"/executions?api-version=2025-10-02-preview&identifier=dave-44", "application/json", strings.NewReader(`{"code":"1"}`))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" || resp.Header.Get("x-ms-error-code") == "" {
				t.Errorf("above the cap: %s %v", resp.Status, resp.Header)
			}

			// Cooldown: idle sessions are destroyed; the identifier then gets a fresh one.
			time.Sleep(cooldown + 2*time.Second)
			resp, err = http.Get(py + "/session?api-version=2025-02-02-preview&identifier=alice-1")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode == 200 {
				t.Errorf("session alive after its cooldown")
			}
			do(t, "POST", py+"/executions?api-version=2025-10-02-preview&identifier=alice-1", `{"code":"'x' in globals()"}`, 200, &ex)
			if string(ex.Result.ExecutionResult) != "false" {
				t.Errorf("expired identifier kept its state: %+v", ex)
			}

			// Max-alive, with a request every second keeping the session from idling.
			ma := srv.URL + "/pools/ma-" + rtName
			waitReady(t, cp, "ma-"+rtName, 1)
			do(t, "POST", ma+"/executions?api-version=2025-10-02-preview&identifier=long-lived", `{"code":"y = 1"}`, 200, &ex)
			start := time.Now()
			for time.Since(start) < maxAlive+3*time.Second {
				time.Sleep(time.Second)
				do(t, "POST", ma+"/executions?api-version=2025-10-02-preview&identifier=long-lived", `{"code":"'y' in globals()"}`, 200, &ex)
				if string(ex.Result.ExecutionResult) == "false" {
					break
				}
			}
			if string(ex.Result.ExecutionResult) != "false" {
				t.Errorf("a session in constant use outlived maxAlivePeriod %v", maxAlive)
			} else if d := time.Since(start); d < maxAlive-time.Second {
				t.Errorf("session ended after %v, before maxAlivePeriod %v", d, maxAlive)
			}

			// A Shell pool.
			var shx struct {
				Status string
				Result struct{ Stdout string }
			}
			do(t, "POST", sh+"/executions?api-version=2025-10-02-preview&identifier=shell-1",
				`{"shellCommand":"cd /mnt/data && echo hello > f && cat f && id -u && exit 3"}`, 200, &shx)
			if shx.Status != "3" || shx.Result.Stdout != "hello\n1000\n" {
				t.Errorf("shell = %+v", shx)
			}

			closed = true
			if err := cp.Close(context.Background()); err != nil {
				t.Errorf("Close: %v", err)
			}
			rt, _ := openRuntime(g, rtName)
			if infos, _ := rt.List(context.Background()); len(infos) > 0 {
				t.Errorf("sandboxes left after Close: %+v", infos)
			}
		})
	}
}

// do sends a request and decodes a JSON answer of the wanted status into out.
func do(t *testing.T, method, url, body string, want int, out any) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("%s %s: %s %s", method, url, resp.Status, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: decoding %s: %v", method, url, b, err)
		}
	}
}

func hasPackage(ps []struct{ Name, Version string }, name string) bool {
	for _, p := range ps {
		if p.Name == name {
			return true
		}
	}
	return false
}

// waitReady waits until the pool has n ready sandboxes.
func waitReady(t *testing.T, cp *controlplane.ControlPlane, name string, n int) {
	t.Helper()
	deadline := time.Now().Add(sandboxtest.Timeout(3 * time.Minute))
	p, _ := cp.Get(name)
	for p.Counts().Ready < n {
		if time.Now().After(deadline) {
			t.Fatalf("pool %s: %d ready after 3 minutes, want %d (last error: %v)", name, p.Counts().Ready, n, p.LastError())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
