package agent

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/sandbox/sandboxtest"
)

// kernelPython returns a python3 that can import ipykernel (and the packages want
// lists), or skips the test; with SESSIOND_TEST_REQUIRE=1 it fails it instead. The
// Debian packages are python3-ipykernel, python3-matplotlib and python3-numpy.
func kernelPython(t testing.TB, want ...string) string {
	t.Helper()
	pythonOnce.Do(func() {
		for _, p := range []string{"/usr/bin/python3", "python3"} {
			if path, err := exec.LookPath(p); err == nil && exec.Command(path, "-c", "import ipykernel").Run() == nil {
				pythonPath = path
				return
			}
		}
	})
	missing := ""
	if pythonPath == "" {
		missing = "ipykernel"
	} else {
		for _, m := range want {
			// Tried three times: on a loaded machine an import can fail for want of a
			// thread (numpy starts its BLAS threads when imported).
			var out []byte
			var err error
			for range 3 {
				if out, err = exec.Command(pythonPath, "-c", "import "+m).CombinedOutput(); err == nil {
					break
				}
			}
			if err != nil {
				missing = fmt.Sprintf("%s (%v: %.500s)", m, err, out)
			}
		}
	}
	if missing != "" {
		msg := "python3 cannot import " + missing + " (Debian: apt-get install python3-ipykernel python3-matplotlib python3-numpy)"
		if os.Getenv("SESSIOND_TEST_REQUIRE") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return pythonPath
}

var (
	pythonOnce sync.Once
	pythonPath string
)

// kernelPreload builds the kernel preload library, once per test binary, into a
// directory that TestMain removes, and returns its path.
func kernelPreload(t testing.TB) string {
	t.Helper()
	preloadOnce.Do(func() {
		if preloadDir, preloadErr = os.MkdirTemp("", "sessiond-preload-"); preloadErr != nil {
			return
		}
		if preloadErr = os.Chmod(preloadDir, 0o755); preloadErr != nil { // the kernel's user loads it
			return
		}
		preloadPath = filepath.Join(preloadDir, agentapi.KernelPreloadName)
		preloadErr = sandboxtest.BuildKernelPreload(preloadPath)
	})
	if preloadErr != nil {
		t.Fatal(preloadErr)
	}
	return preloadPath
}

var (
	preloadOnce             sync.Once
	preloadDir, preloadPath string
	preloadErr              error
)

// TestKernel runs the tests against a real ipykernel, in parallel with one another but
// not with the package's other tests: kernels are CPU-hungry, and exec tests that drain
// output within 100ms of a command's exit are sensitive to a loaded machine.
func TestKernel(t *testing.T) {
	for name, f := range map[string]func(*testing.T){
		"results":         testKernelResults,
		"timeout":         testKernelTimeout,
		"killed":          testKernelKilled,
		"isolated":        testKernelsIsolated,
		"async and queue": testKernelAsyncAndQueue,
		"client gone":     testKernelClientGone,
		"interrupt races": testKernelInterruptRaces,
		"preload":         testKernelPreload,
		"preload missing": testKernelPreloadMissing,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f(t)
		})
	}
}

// startKernelAgent serves an agent with a real ipykernel, started with the kernel
// preload as in a sandbox, and waits until it is ready.
func startKernelAgent(t testing.TB, want ...string) *testAgent {
	t.Helper()
	return startKernelAgentWith(t, nil, want...)
}

// startKernelAgentWith is startKernelAgent with adjust, if not nil, called on the agent
// before it serves.
func startKernelAgentWith(t testing.TB, adjust func(*Agent), want ...string) *testAgent {
	t.Helper()
	py := kernelPython(t, want...)
	preload := kernelPreload(t)
	a, base := newAgent(t, func(c *Config) {
		c.Kernel = KernelPython3
		c.KernelPreload = preload
		c.KernelDir = filepath.Join(os.TempDir(), "sessiond-kernel-test") // shared, 0700
		c.Home = filepath.Join(os.TempDir(), "sessiond-kernel-home")
	})
	if err := os.MkdirAll(a.cfg.Home, 0o755); err != nil {
		t.Fatal(err)
	}
	if isRoot() {
		os.Chown(a.cfg.Home, agentapi.UserUID, agentapi.UserGID)
	}
	a.kernelArgv = func(connFile string) []string {
		argv := pythonKernelArgv(connFile)
		argv[0] = py // the launcher the agent uses, with the host's Debian python3
		return argv
	}
	if adjust != nil {
		adjust(a)
	}
	ta := serve(t, a, base)
	waitKernel(t, ta, func(ki agentapi.KernelInfo) bool { return ki.State == "idle" })
	return ta
}

// waitKernel polls the kernel info until ok accepts it.
func waitKernel(t testing.TB, ta *testAgent, ok func(agentapi.KernelInfo) bool) agentapi.KernelInfo {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ki, err := ta.client.KernelInfo(ctxFor(t, 5*time.Second))
		if err == nil && ok(ki) {
			return ki
		}
		if time.Now().After(deadline) {
			t.Fatalf("kernel info %+v (%v) never as expected", ki, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func run(t testing.TB, ta *testAgent, req agentapi.ExecuteRequest) agentapi.Execution {
	t.Helper()
	ex, err := ta.client.Execute(ctxFor(t, 60*time.Second), req)
	if err != nil {
		t.Fatalf("Execute(%q): %v", req.Code, err)
	}
	return ex
}

func kernelPid(ta *testAgent) int {
	ta.kernel.mu.Lock()
	defer ta.kernel.mu.Unlock()
	return ta.kernel.pid
}

func testKernelResults(t *testing.T) {
	ta := startKernelAgent(t, "numpy", "matplotlib")
	ki := waitKernel(t, ta, func(agentapi.KernelInfo) bool { return true })
	if ki.Name != "ipykernel" || ki.Version == "" || ki.Language != "python" || !strings.HasPrefix(ki.LanguageVersion, "3.") || ki.Restarts != 0 {
		t.Errorf("kernel info = %+v", ki)
	}
	for _, tc := range []struct {
		code    string
		jupyter bool
		want    string // the Result as JSON
		stdout  string
	}{
		// The launcher formatted a value before the first execution, so that the
		// formatters' lazily built state costs nothing here (the check makes no result
		// before it is evaluated).
		{code: "all('type_printers' in f._trait_values for f in get_ipython().display_formatter.formatters.values())", want: `true`},
		{code: "1+1", want: `2`},
		{code: "x = 40", want: `""`},
		{code: "x + 2", want: `42`},
		{code: "print('hello')", want: `""`, stdout: "hello\n"},
		{code: "'a'", want: `"a"`},
		{code: "'it\\'s \"q\"\\n'", want: `"it's \"q\"\n"`},
		{code: "'nan'", want: `"nan"`},
		{code: "None", want: `""`},
		{code: "True", want: `true`},
		{code: "2.5", want: `2.5`},
		{code: "2.0", want: `2.0`},
		{code: "float('nan')", want: `null`},
		{code: "float('inf')", want: `"inf"`},
		{code: "-float('inf')", want: `"-inf"`},
		{code: "10**30", want: `1000000000000000000000000000000`},
		{code: "import numpy as np; np.int64(7)", want: `7`},
		{code: "np.float64('nan')", want: `null`},
		{code: "np.bool_(False)", want: `false`},
		{code: "np.float32(0.5)", want: `0.5`},
		{code: "{'a': 1, 'b': [1, 2]}", want: `"{'a': 1, 'b': [1, 2]}"`},
		{code: "'é' * 3", want: `"ééé"`},
		{code: "3; pass", want: `""`},
		{code: "Out = None; 5", want: `5`},
		{code: "float('nan')", jupyter: true, want: `"nan"`},
		{code: "'nan'", jupyter: true, want: `"'nan'"`},
		{code: "None", jupyter: true, want: `null`},
		{code: "1+1", jupyter: true, want: `"2"`},
		// The launcher: In works without the history database, and debugpy (kept out
		// of ipykernel's start) is importable by user code.
		{code: "In[2]", want: `"1+1"`},
		{code: "import importlib.util; import sys; importlib.util.find_spec('debugpy') is not None and sys.modules.get('debugpy', 0) is not None", want: `true`},
		// jedi is kept out of the start too (not loaded), and stays importable.
		{code: "'jedi' in sys.modules or importlib.util.find_spec('jedi') is None", want: `false`},
		// The launcher calls the display formatters directly (not through the decorator).
		{code: "from IPython.core import formatters as F\n[c.__call__.__code__.co_filename for c in (F.BaseFormatter, F.PlainTextFormatter, F.IPythonDisplayFormatter, F.MimeBundleFormatter)]",
			want: `"['<string>', '<string>', '<string>', '<string>']"`},
		// The kernel's logger makes no records its handler would drop.
		{code: "import logging\nget_ipython().kernel.log.getEffectiveLevel() == logging.WARNING", want: `true`},
		// The launcher parses message dates with fromisoformat.
		{code: "from jupyter_client import jsonutil\njsonutil.parse_date.__name__", want: `"fast_parse_date"`},
		// os.getpid answers from a cache: right in the kernel and in a child forked from it.
		{code: "import os\nr, w = os.pipe()\nc = os.fork()\nif c == 0:\n    os.write(w, b'%d %d' % (os.getpid(), int(os.readlink('/proc/self'))))\n    os._exit(0)\n" +
			"os.waitpid(c, 0)\n[int(x) for x in os.read(r, 64).split()] == [c, c] and os.getpid() == int(os.readlink('/proc/self'))", want: `true`},
	} {
		ex := run(t, ta, agentapi.ExecuteRequest{Code: tc.code, JupyterFormat: tc.jupyter})
		if ex.Status != agentapi.StatusSucceeded || string(ex.Result) != tc.want || ex.Stdout != tc.stdout {
			t.Errorf("%q (jupyter %v): status %s, result %s, stdout %q, stderr %q; want result %s, stdout %q",
				tc.code, tc.jupyter, ex.Status, ex.Result, ex.Stdout, ex.Stderr, tc.want, tc.stdout)
		}
	}

	// The launcher answers the agent's result expression (a str) with its repr alone: a
	// printer the user registers for str still formats the cell's output, and does not
	// change how the agent reads the value.
	t.Run("user str printer", func(t *testing.T) {
		ex := run(t, ta, agentapi.ExecuteRequest{Code: "f = get_ipython().display_formatter.formatters['text/plain']\n" +
			"f.for_type(str, lambda o, p, cycle: p.text('custom'))\n'abc'"})
		defer run(t, ta, agentapi.ExecuteRequest{Code: "f.pop(str)"})
		if string(ex.Result) != `"abc"` || len(ex.Outputs) != 1 || string(ex.Outputs[0].Data["text/plain"]) != `"custom"` {
			t.Errorf("status %s, result %s, outputs %+v, stderr %q; want result \"abc\" and the output custom", ex.Status, ex.Result, ex.Outputs, ex.Stderr)
		}
	})

	// A formatter that fails shows its traceback, and the other formats still come
	// (IPython's catch_format_error, which the launcher calls directly).
	t.Run("failing formatter", func(t *testing.T) {
		ex := run(t, ta, agentapi.ExecuteRequest{Code: "class C:\n    def _repr_html_(self): raise ValueError('boom')\n    def __repr__(self): return 'C!'\nC()"})
		if ex.Status != agentapi.StatusSucceeded || string(ex.Result) != `"C!"` || !strings.Contains(ex.Stderr, "ValueError: boom") ||
			len(ex.Outputs) != 1 || len(ex.Outputs[0].Data) != 1 || string(ex.Outputs[0].Data["text/plain"]) != `"C!"` {
			t.Errorf("status %s, result %s, outputs %+v, stderr %q; want C! as text/plain alone and the traceback", ex.Status, ex.Result, ex.Outputs, ex.Stderr)
		}
	})

	// A warm-up that succeeds freezes what survives it, and still reports its value;
	// other executions, and a warm-up that fails, freeze nothing.
	t.Run("warm-up freezes", func(t *testing.T) {
		frozen := func() int {
			t.Helper()
			ex := run(t, ta, agentapi.ExecuteRequest{Code: "__import__('gc').get_freeze_count()"})
			n, err := strconv.Atoi(string(ex.Result))
			if err != nil {
				t.Fatalf("freeze count: result %s, stderr %q", ex.Result, ex.Stderr)
			}
			return n
		}
		n0 := frozen()
		run(t, ta, agentapi.ExecuteRequest{Code: "plain = [[] for _ in range(5000)]"})
		if n := frozen(); n != n0 {
			t.Errorf("a plain execution froze %d objects", n-n0)
		}
		if ex := run(t, ta, agentapi.ExecuteRequest{Code: "failed = [[] for _ in range(5000)]; 1/0", Warmup: true}); ex.Status != agentapi.StatusFailed {
			t.Errorf("failing warm-up: status %s", ex.Status)
		}
		if n := frozen(); n != n0 {
			t.Errorf("a failed warm-up froze %d objects", n-n0)
		}
		ex := run(t, ta, agentapi.ExecuteRequest{Code: "warm = [[] for _ in range(5000)]\nlen(warm)", Warmup: true})
		if ex.Status != agentapi.StatusSucceeded || string(ex.Result) != "5000" {
			t.Errorf("warm-up: status %s, result %s, stderr %q", ex.Status, ex.Result, ex.Stderr)
		}
		if n := frozen(); n < n0+5000 {
			t.Errorf("after a warm-up %d objects frozen, want at least 5000 more than %d", n, n0)
		}
	})

	t.Run("exception", func(t *testing.T) {
		ex := run(t, ta, agentapi.ExecuteRequest{Code: "def f():\n    return {}['k']\nf()"})
		if ex.Status != agentapi.StatusFailed || ex.Error == nil || ex.Error.Name != "KeyError" {
			t.Fatalf("execution = %+v", ex)
		}
		if !strings.Contains(ex.Stderr, "KeyError: 'k'") || strings.Contains(ex.Stderr, "\x1b") {
			t.Errorf("stderr %q: want the traceback without ANSI codes", ex.Stderr)
		}
		for _, l := range ex.Error.Traceback {
			if strings.Contains(l, "\x1b") {
				t.Errorf("traceback line %q has ANSI codes", l)
			}
		}
		if ex := run(t, ta, agentapi.ExecuteRequest{Code: "x"}); string(ex.Result) != "40" {
			t.Errorf("after an exception: result %s, stderr %q", ex.Result, ex.Stderr)
		}
	})

	t.Run("matplotlib", func(t *testing.T) {
		for _, code := range []string{
			"import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()",
			"fig, ax = plt.subplots()\nax.plot([1, 2])\nfig",
		} {
			ex := run(t, ta, agentapi.ExecuteRequest{Code: code})
			var img imageResult
			if err := json.Unmarshal(ex.Result, &img); err != nil || img.Type != "image" || img.Format != "png" {
				t.Fatalf("%q: result %.200s (%v), stderr %q", code, ex.Result, err, ex.Stderr)
			}
			b, err := base64.StdEncoding.DecodeString(img.Base64Data)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := png.Decode(bytes.NewReader(b)); err != nil {
				t.Errorf("%q: the image is not a PNG: %v", code, err)
			}
			hasPNG := false
			for _, o := range ex.Outputs {
				_, ok := o.Data["image/png"]
				hasPNG = hasPNG || ok
			}
			if !hasPNG {
				t.Errorf("%q: no image/png among the outputs", code)
			}
		}
	})

	// The launcher sends the main thread's iopub messages itself: output from other
	// threads, forked children and rich displays must keep arriving, in order.
	t.Run("output order", func(t *testing.T) {
		var want strings.Builder
		for i := range 200 {
			fmt.Fprintf(&want, "t %d\n", i)
		}
		want.WriteString("main done\n")
		for _, tc := range []struct{ name, code, stdout, stderr string }{
			{"thread", "import threading\ndef f():\n    for i in range(200): print('t', i)\nth = threading.Thread(target=f); th.start(); th.join()\nprint('main done')", want.String(), ""},
			{"fork", "import os, time\npid = os.fork()\nif pid == 0:\n    print('child', flush=True); os._exit(0)\nos.waitpid(pid, 0); time.sleep(0.5); print('parent')", "child\nparent\n", ""},
			{"interleaved", "import sys\nfor i in range(3):\n    print(i); print('e', i, file=sys.stderr)", "0\n1\n2\n", "e 0\ne 1\ne 2\n"},
			{"timed", "import time\nfor i in range(3):\n    print(i, flush=True); time.sleep(0.3)", "0\n1\n2\n", ""},
		} {
			ex := run(t, ta, agentapi.ExecuteRequest{Code: tc.code})
			if ex.Status != agentapi.StatusSucceeded || ex.Stdout != tc.stdout || ex.Stderr != tc.stderr {
				t.Errorf("%s: status %s, stdout %q, stderr %q; want %q, %q", tc.name, ex.Status, ex.Stdout, ex.Stderr, tc.stdout, tc.stderr)
			}
		}
		ex := run(t, ta, agentapi.ExecuteRequest{Code: "from IPython.display import display\nprint('before'); display(42); print('after')"})
		var got []string
		for _, o := range ex.Outputs {
			got = append(got, o.Type)
		}
		if ex.Stdout != "before\nafter\n" || len(ex.Outputs) != 1 {
			t.Errorf("display between prints: stdout %q, outputs %v", ex.Stdout, got)
		}
	})

	t.Run("big output", func(t *testing.T) {
		for _, code := range []string{
			"print('x' * 10_000_000)",
			"for i in range(200_000):\n    print('y' * 49)",
		} {
			ex := run(t, ta, agentapi.ExecuteRequest{Code: code, StreamLimit: 1 << 20})
			if ex.Status != agentapi.StatusSucceeded || len(ex.Stdout) != 1<<20 || !ex.StdoutTruncated {
				t.Errorf("%q: status %s, %d bytes of stdout, truncated %v", code, ex.Status, len(ex.Stdout), ex.StdoutTruncated)
			}
		}
	})
}

func testKernelTimeout(t *testing.T) {
	ta := startKernelAgent(t)
	// A SIGINT handler of the user's own lasts for its execution (as in ipykernel): the
	// next one is interruptible again.
	run(t, ta, agentapi.ExecuteRequest{Code: "kept = 1\nimport signal\nsignal.signal(signal.SIGINT, lambda s, f: None)"})
	for _, tc := range []struct {
		name        string
		code        string
		wantRestart bool
	}{
		{"interruptible", "while True: pass", false},
		{"ignores SIGINT", "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass", true},
	} {
		start := time.Now()
		ex := run(t, ta, agentapi.ExecuteRequest{Code: tc.code, TimeoutSeconds: 2})
		d := time.Since(start)
		if ex.Status != agentapi.StatusFailed || ex.Stderr != agentapi.TimeoutMessage || ex.KernelRestarted != tc.wantRestart {
			t.Errorf("%s: execution = %+v", tc.name, ex)
		}
		if d < 2*time.Second || d > 2*time.Second+interruptGrace+time.Second {
			t.Errorf("%s: took %v with a 2s timeout and a %v grace", tc.name, d, interruptGrace)
		}
		next := run(t, ta, agentapi.ExecuteRequest{Code: "1+1"})
		if next.Status != agentapi.StatusSucceeded || string(next.Result) != "2" {
			t.Errorf("%s: the next execution = %+v", tc.name, next)
		}
	}
}

func testKernelKilled(t *testing.T) {
	ta := startKernelAgent(t)
	run(t, ta, agentapi.ExecuteRequest{Code: "x = 1"})

	// Killed while idle: the next execution says so.
	syscall.Kill(kernelPid(ta), syscall.SIGKILL)
	waitKernel(t, ta, func(ki agentapi.KernelInfo) bool { return ki.Restarts == 1 && ki.State == "idle" })
	ex := run(t, ta, agentapi.ExecuteRequest{Code: "x"})
	if !ex.KernelRestarted || !strings.HasPrefix(ex.Stderr, restartNote) || ex.Error == nil || ex.Error.Name != "NameError" {
		t.Errorf("after a kill: execution = %+v", ex)
	}
	if ex := run(t, ta, agentapi.ExecuteRequest{Code: "1+1"}); ex.KernelRestarted || ex.Stderr != "" {
		t.Errorf("the restart was reported twice: %+v", ex)
	}

	// Killed mid-execution (as by the OOM killer): Execution aborted, fresh kernel.
	run(t, ta, agentapi.ExecuteRequest{Code: "y = 2"})
	done := make(chan agentapi.Execution, 1)
	go func() {
		ex, _ := ta.client.Execute(context.Background(), agentapi.ExecuteRequest{Code: "import time\nprint('started', flush=True)\ntime.sleep(60)"})
		done <- ex
	}()
	waitKernel(t, ta, func(ki agentapi.KernelInfo) bool { return ki.State == "busy" })
	time.Sleep(200 * time.Millisecond)
	syscall.Kill(kernelPid(ta), syscall.SIGKILL)
	select {
	case ex := <-done:
		if ex.Status != agentapi.StatusFailed || ex.Stderr != agentapi.AbortedMessage || !ex.KernelRestarted {
			t.Errorf("killed mid-execution: %+v", ex)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the execution did not end after its kernel was killed")
	}
	ex = run(t, ta, agentapi.ExecuteRequest{Code: "y"})
	if ex.KernelRestarted || ex.Error == nil || ex.Error.Name != "NameError" {
		t.Errorf("after an abort: %+v", ex)
	}
	if ki := waitKernel(t, ta, func(agentapi.KernelInfo) bool { return true }); ki.Restarts != 2 {
		t.Errorf("restarts = %d, want 2", ki.Restarts)
	}
}

// testKernelsIsolated runs two agents at once: their kernels share nothing.
func testKernelsIsolated(t *testing.T) {
	var tas [2]*testAgent
	var wg sync.WaitGroup
	for i := range tas {
		wg.Go(func() { tas[i] = startKernelAgent(t) })
	}
	wg.Wait()
	if t.Failed() || tas[0] == nil || tas[1] == nil {
		t.FailNow()
	}
	run(t, tas[0], agentapi.ExecuteRequest{Code: "secret = 'a'"})
	if ex := run(t, tas[1], agentapi.ExecuteRequest{Code: "secret"}); ex.Error == nil || ex.Error.Name != "NameError" {
		t.Errorf("the second kernel sees the first one's variable: %+v", ex)
	}
	if ex := run(t, tas[0], agentapi.ExecuteRequest{Code: "secret"}); string(ex.Result) != `"a"` {
		t.Errorf("the first kernel lost its variable: %+v", ex)
	}
}

func testKernelAsyncAndQueue(t *testing.T) {
	ta := startKernelAgent(t)
	ctx := ctxFor(t, 60*time.Second)
	// The file says the user's code runs: an interrupt that reached ipykernel before it
	// (the kernel is busy from the moment it takes the request) would cancel the
	// execution without a KeyboardInterrupt in it.
	ex, err := ta.client.Execute(ctx, agentapi.ExecuteRequest{ID: "slow", Code: "open('slow-started', 'w').close()\nimport time\ntime.sleep(30)", Async: true})
	if err != nil || ex.Status != agentapi.StatusRunning || ex.ID != "slow" {
		t.Fatalf("async Execute = %+v, %v", ex, err)
	}
	if _, err := ta.client.Execute(ctx, agentapi.ExecuteRequest{ID: "slow", Code: "1", Async: true}); !errkind.Is(err, errkind.AlreadyExists) {
		t.Errorf("duplicate ID: err %v, want already_exists", err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(ta.dataDir, "slow-started")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the slow execution's code never started")
		}
	}
	for i := range agentapi.MaxExecuteQueue {
		if _, err := ta.client.Execute(ctx, agentapi.ExecuteRequest{ID: "q" + string(rune('a'+i)), Code: "21*2", Async: true}); err != nil {
			t.Fatalf("queueing execution %d: %v", i, err)
		}
	}
	if _, err := ta.client.Execute(ctx, agentapi.ExecuteRequest{Code: "1", Async: true}); !errkind.Is(err, errkind.LimitExceeded) {
		t.Errorf("beyond the queue: err %v, want limit_exceeded", err)
	}
	if got, err := ta.client.GetExecution(ctx, "qa"); err != nil || got.Status != agentapi.StatusRunning {
		t.Errorf("queued execution: %+v, %v", got, err)
	}
	if err := ta.client.Interrupt(ctx); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"slow", "qp"} {
		var got agentapi.Execution
		for {
			got, err = ta.client.GetExecution(ctx, id)
			if err != nil || got.Status != agentapi.StatusRunning {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		switch {
		case err != nil:
			t.Errorf("GetExecution(%s): %v", id, err)
		case id == "slow" && (got.Status != agentapi.StatusCanceled || got.Error == nil || got.Error.Name != "KeyboardInterrupt"):
			t.Errorf("interrupted execution = %+v", got)
		case id == "qp" && (got.Status != agentapi.StatusSucceeded || string(got.Result) != "42"):
			t.Errorf("last queued execution = %+v", got)
		}
	}
	if _, err := ta.client.GetExecution(ctx, "nope"); !errkind.Is(err, errkind.NotFound) {
		t.Errorf("unknown execution: err %v, want not_found", err)
	}
}

// testKernelClientGone checks that a synchronous execution whose client disconnects is
// interrupted.
func testKernelClientGone(t *testing.T) {
	ta := startKernelAgent(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := ta.client.Execute(ctx, agentapi.ExecuteRequest{ID: "gone", Code: "while True: pass"}); err == nil {
		t.Fatal("Execute outlived its context")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := ta.client.GetExecution(ctxFor(t, 5*time.Second), "gone")
		if err == nil && got.Status == agentapi.StatusCanceled {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("execution %+v (%v) not canceled", got, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if ex := run(t, ta, agentapi.ExecuteRequest{Code: "1+1", EmptyKernel: true}); string(ex.Result) != "2" || !ex.KernelRestarted {
		t.Errorf("empty kernel execution = %+v", ex)
	}
	ki, err := ta.client.RestartKernel(ctxFor(t, 60*time.Second))
	if err != nil || ki.State != "idle" || ki.Restarts != 2 {
		t.Errorf("RestartKernel = %+v, %v", ki, err)
	}
}

// testKernelInterruptRaces cancels short executions at random moments: an interrupt that
// reaches ipykernel outside the user's code loses the execution's reply, and the kernel
// must not be replaced for it (a control plane that dies mid-request would otherwise wipe
// its sessions' state).
func testKernelInterruptRaces(t *testing.T) {
	ta := startKernelAgent(t)
	// Set before any execution reaches the kernel. Without the probe a dropped reply
	// means a replacement after the grace however long it is; a loaded machine can take
	// more than a second to answer the probe.
	ta.kernel.grace = 3 * time.Second
	run(t, ta, agentapi.ExecuteRequest{Code: "kept = 7"})
	for i := range 40 {
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			time.Sleep(time.Duration(i%8) * 500 * time.Microsecond)
			cancel()
		}()
		ta.client.Execute(ctx, agentapi.ExecuteRequest{Code: "kept"})
		cancel()
	}
	ex := run(t, ta, agentapi.ExecuteRequest{Code: "kept"})
	if string(ex.Result) != "7" || ex.KernelRestarted {
		t.Errorf("after 40 cancelled executions: %+v; want the kernel and its state kept", ex)
	}
	if ki, err := ta.client.KernelInfo(ctxFor(t, 5*time.Second)); err != nil || ki.Restarts != 0 {
		t.Errorf("kernel info %+v, %v: want no restart", ki, err)
	}
}

// TestKernelStartFailure checks that executions fail quickly, as unavailable, when the
// kernel cannot start (here: it exits at once), and that the agent stays healthy.
func TestKernelStartFailure(t *testing.T) {
	t.Parallel()
	a, base := newAgent(t, func(c *Config) {
		c.Kernel = KernelPython3
		c.KernelDir = filepath.Join(os.TempDir(), "sessiond-kernel-test")
	})
	a.kernelArgv = func(string) []string { return []string{"/bin/sh", "-c", "echo no kernel here >&2; exit 3"} }
	ta := serve(t, a, base)
	start := time.Now()
	_, err := ta.client.Execute(ctxFor(t, 30*time.Second), agentapi.ExecuteRequest{Code: "1+1"})
	if !errkind.Is(err, errkind.Unavailable) || !strings.Contains(err.Error(), "no kernel here") {
		t.Errorf("Execute: err %v, want unavailable with the kernel's output", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Execute took %v to fail", d)
	}
	ki, err := ta.client.KernelInfo(ctxFor(t, 5*time.Second))
	if err != nil || (ki.State != "dead" && ki.State != "starting") {
		t.Errorf("KernelInfo = %+v, %v; want state dead (or starting, when it tries again)", ki, err)
	}
	logs, err := ta.client.Logs(ctxFor(t, 5*time.Second), 0)
	if err != nil || !strings.Contains(string(logs), "no kernel here") {
		t.Errorf("Logs = %q, %v; want the kernel's output", logs, err)
	}
	if _, err := ta.client.Health(ctxFor(t, 5*time.Second)); err != nil {
		t.Errorf("Health: %v", err)
	}
}

// testKernelPreload: the kernel process runs with the preload library, whose getpid gives
// the process's own pid, and a forked child's its own; user code and the processes it
// starts do not see it in their environment.
func testKernelPreload(t *testing.T) {
	ta := startKernelAgent(t)
	code := `import ctypes, os, subprocess
libc = ctypes.CDLL(None)
def kernel_pid():
    return int(open("/proc/self/stat").read().split()[0])
print("mapped", any(l.rstrip().endswith("/` + agentapi.KernelPreloadName + `") for l in open("/proc/self/maps")))
print("pid", libc.getpid() == os.getpid() == kernel_pid())
r, w = os.pipe()
child = os.fork()
if child == 0:
    os.write(w, b"%d %d" % (libc.getpid(), kernel_pid()))
    os._exit(0)
os.waitpid(child, 0)
got, real = os.read(r, 100).split()
print("child", got == real and int(real) == child)
print("env", os.environ.get("LD_PRELOAD"), "SESSIOND_KERNEL_PRELOAD" in os.environ)
print("subprocess", repr(subprocess.run(["sh", "-c", "echo $LD_PRELOAD"], capture_output=True, text=True).stdout))
`
	res := run(t, ta, agentapi.ExecuteRequest{Code: code})
	want := "mapped True\npid True\nchild True\nenv None False\nsubprocess '\\n'\n"
	if res.Status != agentapi.StatusSucceeded || res.Stdout != want {
		t.Errorf("status %s, stdout:\n%s\nstderr: %s\nwant stdout:\n%s", res.Status, res.Stdout, res.Stderr, want)
	}
}

// testKernelPreloadMissing: a preload library that is not there is skipped, and the kernel
// runs without it.
func testKernelPreloadMissing(t *testing.T) {
	ta := startKernelAgentWith(t, func(a *Agent) { a.cfg.KernelPreload = "/nonexistent/" + agentapi.KernelPreloadName })
	res := run(t, ta, agentapi.ExecuteRequest{Code: "import os\n'LD_PRELOAD' in os.environ, 1+1"})
	if res.Status != agentapi.StatusSucceeded || string(res.Result) != `"(False, 2)"` {
		t.Errorf("status %s, result %s, stderr %q", res.Status, res.Result, res.Stderr)
	}
}

// launcherDef returns the text of the launcher's top-level function name: its def line
// and the indented (or blank) lines after it.
func launcherDef(t *testing.T, name string) string {
	t.Helper()
	def := regexp.MustCompile(`(?m)^def ` + regexp.QuoteMeta(name) + `\(.*\):\n(?:(?:[ \t].*)?\n)*`).FindString(pythonLauncher)
	if def == "" {
		t.Fatalf("no %s in the launcher", name)
	}
	return def
}

// TestLauncherDropPreload: the launcher takes the agent's library out of LD_PRELOAD and
// leaves what the user's environment preloads.
func TestLauncherDropPreload(t *testing.T) {
	py := kernelPython(t)
	def := launcherDef(t, "_drop_preload")
	for _, tc := range []struct{ ours, preload, want string }{
		{"/.sessiond/k.so", "/.sessiond/k.so", "None"},
		{"/.sessiond/k.so", "/.sessiond/k.so:libm.so.6", "'libm.so.6'"},
		{"/.sessiond/k.so", "/.sessiond/k.so:/a.so:/b.so", "'/a.so:/b.so'"},
		{"", "libm.so.6", "'libm.so.6'"},                                // no preload of the agent's
		{"/.sessiond/k.so", "libm.so.6", "'libm.so.6'"},                 // replaced by someone else
		{"/.sessiond/k.so", "/.sessiond/k.so.2", "'/.sessiond/k.so.2'"}, // not ours
	} {
		cmd := exec.Command(py, "-c", "import os\n"+def+"_drop_preload()\nprint(repr(os.environ.get('LD_PRELOAD')), 'SESSIOND_KERNEL_PRELOAD' in os.environ)")
		// ld.so says on stderr that it cannot find these libraries, and carries on.
		cmd.Env = []string{"LD_PRELOAD=" + tc.preload, preloadEnv + "=" + tc.ours, "PATH=/usr/bin:/bin"}
		out, err := cmd.Output()
		if got, want := strings.TrimSpace(string(out)), tc.want+" False"; err != nil || got != want {
			t.Errorf("LD_PRELOAD=%s, ours %q: %s (%v), want %s", tc.preload, tc.ours, got, err, want)
		}
	}
}

// TestLauncherFastDates: the launcher's date parsing gives what jupyter_client's own gives,
// dateutil, for every string: the same instant, offset, ISO form and warnings, the same
// strings left as they are, and an error where dateutil raises one.
func TestLauncherFastDates(t *testing.T) {
	py := kernelPython(t, "jupyter_client", "dateutil")
	def := launcherDef(t, "_fast_dates")
	script := `import warnings
from datetime import datetime
from jupyter_client import jsonutil
original = jsonutil.parse_date
` + def + `
_fast_dates()
fast = jsonutil.parse_date
assert fast is not original, "not patched"
cases = ["2026-11-27T12:00:00.123456Z", "2026-11-27T12:00:00Z", "2026-11-27T12:00:00.5Z",
         "2026-11-27T12:00:00.123+05:30", "2026-11-27T12:00:00+0530", "2026-11-27T12:00:00-08:00",
         "2026-11-27T12:00:00", "2026-11-27T12:00:00.000001-0000", "hello", "", None, "2026-11-27",
         "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "2026-11-27T24:00:00Z", "2026-11-27T12:60:00Z",
         "\uff12\uff10\uff12\uff16-11-27T12:00:00Z", "\u0662\u0660\u0662\u0666-11-27T12:00:00Z",
         "2026-11-27T12:00:00+25:00", "2026-11-27T12:00:00+05:3", "2026-11-27T12:00:00.1234567Z"]
def outcome(parse, s):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        try:
            v = parse(s)
        except ValueError:
            return ("error",)
    warned = [x.category.__name__ for x in w]
    if not isinstance(v, datetime):
        return ("value", v, warned)
    try:
        return ("date", v, v.utcoffset(), v.isoformat(), warned)
    except ValueError:
        return ("bad offset", repr(v), warned)
for s in cases:
    got, want = outcome(fast, s), outcome(original, s)
    if got != want:
        print("%r: %r, dateutil %r" % (s, got, want))
print("checked", len(cases))
`
	out, err := exec.Command(py, "-c", script).CombinedOutput()
	if got := strings.TrimSpace(string(out)); err != nil || got != "checked 21" {
		t.Errorf("%v:\n%s", err, got)
	}
}

// TestLauncherQuietLog: the launcher raises a logger's level to its handlers' lowest only
// when its handlers are all that can emit its records.
func TestLauncherQuietLog(t *testing.T) {
	py := kernelPython(t)
	def := launcherDef(t, "_quiet_log")
	script := `import logging
` + def + `
def level(logger_level, handler_levels, propagate=False):
    log = logging.Logger("t", logger_level)
    log.propagate = propagate
    for lv in handler_levels:
        h = logging.StreamHandler()
        h.setLevel(lv)
        log.addHandler(h)
    _quiet_log(log)
    return logging.getLevelName(log.level)
print(level(logging.DEBUG, [logging.WARNING]))                 # raised
print(level(logging.DEBUG, [logging.ERROR, logging.INFO]))     # to the lowest
print(level(logging.DEBUG, [logging.WARNING, logging.NOTSET])) # a handler takes all
print(level(logging.DEBUG, [logging.WARNING], propagate=True)) # parents may emit
print(level(logging.DEBUG, []))                                # no handlers
print(level(logging.ERROR, [logging.WARNING]))                 # never lowered
_quiet_log(None)
`
	out, err := exec.Command(py, "-c", script).CombinedOutput()
	want := "WARNING\nINFO\nDEBUG\nDEBUG\nDEBUG\nERROR"
	if got := strings.TrimSpace(string(out)); err != nil || got != want {
		t.Errorf("%v:\n%s\nwant:\n%s", err, got, want)
	}
}

// TestWithPreload: the agent's library comes first in LD_PRELOAD, before the user's.
func TestWithPreload(t *testing.T) {
	got := withPreload([]string{"A=1", "LD_PRELOAD=libm.so.6"}, "/k.so")
	want := []string{"A=1", "LD_PRELOAD=/k.so:libm.so.6", preloadEnv + "=/k.so"}
	if !slices.Equal(got, want) {
		t.Errorf("with a user preload: %q, want %q", got, want)
	}
	got = withPreload([]string{"A=1"}, "/k.so")
	want = []string{"A=1", "LD_PRELOAD=/k.so", preloadEnv + "=/k.so"}
	if !slices.Equal(got, want) {
		t.Errorf("without: %q, want %q", got, want)
	}
}
