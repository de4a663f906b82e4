package oci

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image/png"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/sandbox"
	"github.com/sessiond/sessiond/internal/sandbox/sandboxtest"
)

// TestCodeInterpreter drives real ipykernels in real runc and runsc sandboxes through the
// agent: the code-interpreter behaviour of issue 3 end to end below the API.
func TestCodeInterpreter(t *testing.T) {
	img := sandboxtest.TestImage(t)
	for _, name := range Names() {
		t.Run(name, func(t *testing.T) {
			state := newStateDir(t) + "/" + name
			rt := requireRuntime(t, name, state)
			ctx := context.Background()
			newSession := func(t *testing.T, mem int64) *agentapi.Client {
				info, err := rt.Create(ctx, sandbox.Spec{RootFS: img.RootFS, Image: img.Name, Kernel: "python3",
					Env: img.Config.Env, Limits: sandbox.Limits{MemoryBytes: mem}})
				if err != nil {
					t.Fatalf("Create: %v", err)
				}
				t.Cleanup(func() { rt.Destroy(context.Background(), info.ID) })
				return rt.Agent(info.ID)
			}
			exec := func(t *testing.T, ag *agentapi.Client, req agentapi.ExecuteRequest) agentapi.Execution {
				t.Helper()
				ectx, cancel := context.WithTimeout(ctx, sandboxtest.Timeout(2*time.Minute))
				defer cancel()
				res, err := ag.Execute(ectx, req)
				if err != nil {
					t.Fatalf("Execute(%q): %v", req.Code, err)
				}
				return res
			}
			code := func(t *testing.T, ag *agentapi.Client, c string) agentapi.Execution {
				t.Helper()
				return exec(t, ag, agentapi.ExecuteRequest{Code: c, TimeoutSeconds: 60})
			}
			ag := newSession(t, 1<<30)

			t.Run("Basics", func(t *testing.T) {
				if r := code(t, ag, "1+1"); r.Status != agentapi.StatusSucceeded || string(r.Result) != "2" {
					t.Errorf("1+1 = %s %s %s", r.Status, r.Result, r.Stderr)
				}
				code(t, ag, "x = 'kept'")
				if r := code(t, ag, "x"); string(r.Result) != `"kept"` {
					t.Errorf("variable across executions = %s, want \"kept\"", r.Result)
				}
				if r := code(t, ag, "print('hello')"); r.Stdout != "hello\n" || string(r.Result) != `""` {
					t.Errorf("print: stdout %q result %s", r.Stdout, r.Result)
				}
				r := code(t, ag, "{}['missing']")
				if r.Status != agentapi.StatusFailed || !strings.Contains(r.Stderr, "KeyError") || strings.Contains(r.Stderr, "\x1b[") {
					t.Errorf("exception: status %s stderr %q", r.Status, r.Stderr)
				}
				if r := code(t, ag, "import os; os.getcwd(), os.getuid()"); !strings.Contains(string(r.Result), "/mnt/data") || !strings.Contains(string(r.Result), "1000") {
					t.Errorf("cwd and uid = %s, want /mnt/data and 1000", r.Result)
				}
			})

			t.Run("Preload", func(t *testing.T) {
				// The kernel runs with the preload library (getpid from memory), which user
				// code does not see in its environment.
				r := code(t, ag, "import ctypes, os\n"+
					"mapped = any(l.rstrip().endswith(' "+agentapi.KernelPreloadPath+"') for l in open('/proc/self/maps'))\n"+
					"pid = ctypes.CDLL(None).getpid() == int(open('/proc/self/stat').read().split()[0])\n"+
					"mapped, pid, 'LD_PRELOAD' in os.environ")
				if string(r.Result) != `"(True, True, False)"` {
					t.Errorf("preload mapped, getpid right, LD_PRELOAD visible: %s %s %q", r.Status, r.Result, r.Stderr)
				}
			})

			t.Run("MatplotlibPNG", func(t *testing.T) {
				r := code(t, ag, "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.show()")
				var im struct {
					Type, Format string
					Base64Data   string `json:"base64_data"`
				}
				if err := json.Unmarshal(r.Result, &im); err != nil || im.Type != "image" || im.Format != "png" {
					t.Fatalf("plot result = %.200s (%v), stderr %q", r.Result, err, r.Stderr)
				}
				b, err := base64.StdEncoding.DecodeString(im.Base64Data)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := png.Decode(bytes.NewReader(b)); err != nil {
					t.Errorf("plot is not a PNG: %v", err)
				}
			})

			t.Run("Timeout", func(t *testing.T) {
				t0 := time.Now()
				r := exec(t, ag, agentapi.ExecuteRequest{Code: "while True: pass", TimeoutSeconds: 2})
				if d := time.Since(t0); d > sandboxtest.Timeout(10*time.Second) {
					t.Errorf("a 2 s timeout returned after %v", d)
				}
				if r.Status != agentapi.StatusFailed || !strings.Contains(r.Stderr, agentapi.TimeoutMessage) {
					t.Errorf("timeout: status %s stderr %q", r.Status, r.Stderr)
				}
				if r := code(t, ag, "2*3"); string(r.Result) != "6" {
					t.Errorf("after the timeout: %s %s %q", r.Status, r.Result, r.Stderr)
				}
			})

			t.Run("OutputTruncated", func(t *testing.T) {
				r := code(t, ag, "import sys\nfor i in range(10 * 1024):\n    sys.stdout.write('x' * 1023 + '\\n')")
				if !r.StdoutTruncated || len(r.Stdout) > agentapi.DefaultStreamLimit+4096 {
					t.Errorf("10 MB of output: %d bytes kept, truncated %v", len(r.Stdout), r.StdoutTruncated)
				}
			})

			t.Run("OutOfMemory", func(t *testing.T) {
				small := newSession(t, 256<<20)
				code(t, ag, "other = 'kept'")
				r := code(t, small, "x = bytearray(10 * 1024**3)\nx[::4096] = b'1' * len(x[::4096])")
				if r.Status != agentapi.StatusFailed || !strings.Contains(r.Stderr, agentapi.AbortedMessage) {
					t.Errorf("10 GB allocation: status %s stderr %q, want %q", r.Status, r.Stderr, agentapi.AbortedMessage)
				}
				if r := code(t, small, "1+1"); string(r.Result) != "2" {
					t.Errorf("after the 10 GB allocation: %s %s %q", r.Status, r.Result, r.Stderr)
				}
				// A bytearray of 10 GB usually fails at once with MemoryError; touching pages
				// of a large but allowed allocation is what brings the OOM killer.
				r = code(t, small, "y = bytearray(200 * 1024**2)\nfor i in range(0, len(y), 4096): y[i] = 1\nz = bytearray(200 * 1024**2)\nfor i in range(0, len(z), 4096): z[i] = 1")
				if r.Status != agentapi.StatusFailed || !strings.Contains(r.Stderr, agentapi.AbortedMessage) {
					t.Errorf("out of memory: status %s stderr %q, want %q", r.Status, r.Stderr, agentapi.AbortedMessage)
				}
				if r := code(t, small, "1+1"); string(r.Result) != "2" {
					t.Errorf("after the OOM: %s %s %q", r.Status, r.Result, r.Stderr)
				}
				// The kernel that ran out of memory was replaced, not the other session's.
				if r := code(t, ag, "other"); string(r.Result) != `"kept"` {
					t.Errorf("other session after the OOM: %s", r.Result)
				}
			})

			t.Run("SessionsIsolated", func(t *testing.T) {
				a, b := newSession(t, 512<<20), newSession(t, 512<<20)
				var wg sync.WaitGroup
				results := make([]agentapi.Execution, 2)
				for i, s := range []*agentapi.Client{a, b} {
					wg.Add(1)
					go func(i int, s *agentapi.Client) {
						defer wg.Done()
						res, err := s.Execute(ctx, agentapi.ExecuteRequest{Code: fmt.Sprintf("import time\nsecret = %d\ntime.sleep(0.5)\nsecret", i), TimeoutSeconds: 30})
						if err == nil {
							results[i] = res
						}
					}(i, s)
				}
				wg.Wait()
				if string(results[0].Result) != "0" || string(results[1].Result) != "1" {
					t.Errorf("concurrent executions = %s, %s", results[0].Result, results[1].Result)
				}
				if r := code(t, b, "open('/mnt/data/f', 'w').write('b'); 'ok'"); string(r.Result) != `"ok"` {
					t.Fatal(r.Stderr)
				}
				if r := code(t, a, "import os; os.path.exists('/mnt/data/f')"); string(r.Result) != "false" {
					t.Errorf("a file of one session is visible in another: %s", r.Result)
				}
			})
		})
	}
}
