package agent

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
)

func TestExec(t *testing.T) {
	t.Parallel()
	ta := startAgent(t, nil)
	bigStdin := strings.Repeat("0123456789abcdef", 1<<16) // 1 MiB
	for _, tc := range []struct {
		name string
		req  agentapi.ExecRequest
		want agentapi.ExecResult
	}{
		{"argv", agentapi.ExecRequest{Argv: []string{"echo", "hello", "world"}},
			agentapi.ExecResult{Stdout: "hello world\n"}},
		{"argv absolute", agentapi.ExecRequest{Argv: []string{"/bin/echo", "hi"}},
			agentapi.ExecResult{Stdout: "hi\n"}},
		{"shell", agentapi.ExecRequest{Shell: "echo $((1+2)); echo oops >&2; exit 3"},
			agentapi.ExecResult{ExitCode: 3, Stdout: "3\n", Stderr: "oops\n"}},
		{"bash", agentapi.ExecRequest{Shell: `echo "${BASH_VERSION:+bash}"`, UseBash: true},
			agentapi.ExecResult{Stdout: "bash\n"}},
		{"stdin", agentapi.ExecRequest{Argv: []string{"cat"}, Stdin: "in\x00put"},
			agentapi.ExecResult{Stdout: "in\x00put"}},
		{"large stdin", agentapi.ExecRequest{Shell: "wc -c", Stdin: bigStdin},
			agentapi.ExecResult{Stdout: "1048576\n"}},
		{"stdin never read", agentapi.ExecRequest{Argv: []string{"true"}, Stdin: bigStdin},
			agentapi.ExecResult{}},
		{"no stdin reads EOF", agentapi.ExecRequest{Argv: []string{"cat"}},
			agentapi.ExecResult{}},
		{"env added", agentapi.ExecRequest{Shell: `echo "$FOO|$EMPTY|"`, Env: []string{"FOO=a=b", "EMPTY="}},
			agentapi.ExecResult{Stdout: "a=b||\n"}},
		{"env overrides", agentapi.ExecRequest{Shell: `echo "$HOME"`, Env: []string{"HOME=/elsewhere"}},
			agentapi.ExecResult{Stdout: "/elsewhere\n"}},
		{"env PATH used for lookup", agentapi.ExecRequest{Argv: []string{"echo", "x"}, Env: []string{"PATH=/bin"}},
			agentapi.ExecResult{Stdout: "x\n"}},
		{"cwd", agentapi.ExecRequest{Argv: []string{"pwd"}, Cwd: "/"},
			agentapi.ExecResult{Stdout: "/\n"}},
		{"default cwd is the data dir", agentapi.ExecRequest{Argv: []string{"pwd"}},
			agentapi.ExecResult{Stdout: ta.dataDir + "\n"}},
		{"killed by a signal", agentapi.ExecRequest{Shell: "kill -TERM $$"},
			agentapi.ExecResult{ExitCode: -1, Signal: "SIGTERM"}},
		{"invalid UTF-8 replaced", agentapi.ExecRequest{Shell: `printf 'a\377\376b'; printf '\300' >&2`},
			agentapi.ExecResult{Stdout: "a\uFFFDb", Stderr: "\uFFFD"}},
		{"output limit", agentapi.ExecRequest{Shell: "echo hello; echo world >&2", OutputLimit: 3},
			agentapi.ExecResult{Stdout: "hel", Stderr: "wor", StdoutTruncated: true, StderrTruncated: true}},
		{"output exactly at the limit", agentapi.ExecRequest{Shell: "printf abc", OutputLimit: 3},
			agentapi.ExecResult{Stdout: "abc"}},
		{"html not escaped", agentapi.ExecRequest{Shell: "printf '<a&b>'"},
			agentapi.ExecResult{Stdout: "<a&b>"}},
		{"own process group", agentapi.ExecRequest{Shell: `[ "$(cut -d' ' -f5 /proc/$$/stat)" = "$$" ] && echo leader`},
			agentapi.ExecResult{Stdout: "leader\n"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := ta.client.Exec(ctxFor(t, 10*time.Second), tc.req)
			if err != nil {
				t.Fatal(err)
			}
			if got.DurationMS < 0 {
				t.Errorf("DurationMS = %d", got.DurationMS)
			}
			got.DurationMS = 0
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Exec(%+v) result (-want +got):\n%s", tc.req, diff)
			}
		})
	}
}

func TestExecErrors(t *testing.T) {
	t.Parallel()
	ta := startAgent(t, nil)
	if err := os.WriteFile(filepath.Join(ta.dataDir, "notexec"), []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		req  agentapi.ExecRequest
		want errkind.Kind
	}{
		{"empty", agentapi.ExecRequest{}, errkind.Invalid},
		{"argv and shell", agentapi.ExecRequest{Argv: []string{"true"}, Shell: "true"}, errkind.Invalid},
		{"useBash with argv", agentapi.ExecRequest{Argv: []string{"true"}, UseBash: true}, errkind.Invalid},
		{"empty argv[0]", agentapi.ExecRequest{Argv: []string{""}}, errkind.Invalid},
		{"NUL in argv", agentapi.ExecRequest{Argv: []string{"echo", "a\x00b"}}, errkind.Invalid},
		{"NUL in shell", agentapi.ExecRequest{Shell: "echo \x00"}, errkind.Invalid},
		{"env without =", agentapi.ExecRequest{Argv: []string{"true"}, Env: []string{"FOO"}}, errkind.Invalid},
		{"env with empty key", agentapi.ExecRequest{Argv: []string{"true"}, Env: []string{"=x"}}, errkind.Invalid},
		{"env with NUL", agentapi.ExecRequest{Argv: []string{"true"}, Env: []string{"A=\x00"}}, errkind.Invalid},
		{"relative cwd", agentapi.ExecRequest{Argv: []string{"true"}, Cwd: "tmp"}, errkind.Invalid},
		{"negative timeout", agentapi.ExecRequest{Argv: []string{"true"}, TimeoutMS: -1}, errkind.Invalid},
		{"negative output limit", agentapi.ExecRequest{Argv: []string{"true"}, OutputLimit: -1}, errkind.Invalid},
		{"output limit too big", agentapi.ExecRequest{Argv: []string{"true"}, OutputLimit: agentapi.MaxOutputLimit + 1}, errkind.Invalid},
		{"stdin too big", agentapi.ExecRequest{Argv: []string{"true"}, Stdin: strings.Repeat("x", agentapi.MaxStdin+1)}, errkind.LimitExceeded},
		{"no such command", agentapi.ExecRequest{Argv: []string{"no-such-command-xyz"}}, errkind.NotFound},
		{"no such path", agentapi.ExecRequest{Argv: []string{"/no/such/binary"}}, errkind.NotFound},
		{"no such cwd", agentapi.ExecRequest{Argv: []string{"true"}, Cwd: "/no/such/dir"}, errkind.NotFound},
		{"not executable", agentapi.ExecRequest{Argv: []string{filepath.Join(ta.dataDir, "notexec")}}, errkind.Invalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			res, err := ta.client.Exec(ctxFor(t, 10*time.Second), tc.req)
			if err == nil {
				t.Fatalf("Exec succeeded: %+v", res)
			}
			if got := errkind.Of(err); got != tc.want {
				t.Errorf("Exec error %q has kind %v, want %v", err, got, tc.want)
			}
		})
	}
}

func TestExecRunsAsUser(t *testing.T) {
	if !isRoot() {
		t.Skip("switching users needs root")
	}
	t.Parallel()
	ta := startAgent(t, nil)
	for _, tc := range []struct {
		asRoot bool
		shell  string
		want   string
	}{
		{false, `echo $(id -u) $(id -g) $(id -G) "$HOME" "$USER"`, "1000 1000 1000 /home/user user\n"},
		{true, `echo $(id -u) $(id -g) "$HOME" "$USER"`, "0 0 /root root\n"},
	} {
		res, err := ta.client.Exec(ctxFor(t, 10*time.Second), agentapi.ExecRequest{Shell: tc.shell, AsRoot: tc.asRoot})
		if err != nil {
			t.Fatal(err)
		}
		if res.Stdout != tc.want {
			t.Errorf("asRoot=%v: identity %q, want %q (stderr %q)", tc.asRoot, res.Stdout, tc.want, res.Stderr)
		}
	}
}

// TestExecEnvironment sets the test process's environment, so it cannot run in parallel.
func TestExecEnvironment(t *testing.T) {
	t.Setenv("SESSIOND_SECRET", "do-not-leak")
	t.Setenv("KEEP_ME", "kept")
	ta := startAgent(t, nil)
	res, err := ta.client.Exec(ctxFor(t, 10*time.Second), agentapi.ExecRequest{Argv: []string{"env"}})
	if err != nil {
		t.Fatal(err)
	}
	env := strings.Split(strings.TrimSuffix(res.Stdout, "\n"), "\n")
	for _, kv := range env {
		if strings.HasPrefix(kv, "SESSIOND_") {
			t.Errorf("command environment has %s", kv)
		}
	}
	user := "user"
	home := "/home/user"
	for _, want := range []string{"KEEP_ME=kept", "HOME=" + home, "USER=" + user} {
		if !slices.Contains(env, want) {
			t.Errorf("command environment lacks %s: %q", want, env)
		}
	}
	if getenv(env, "PATH") == "" || getenv(env, "LANG") == "" {
		t.Errorf("command environment lacks PATH or LANG: %q", env)
	}
}

func TestExecTimeoutKillsProcessGroup(t *testing.T) {
	t.Parallel()
	ta := startAgent(t, nil)
	const timeout = 500 * time.Millisecond
	start := time.Now()
	res, err := ta.client.Exec(ctxFor(t, 10*time.Second), agentapi.ExecRequest{
		Shell:     "sleep 100 & echo $!; sh -c 'echo $$; exec sleep 100'",
		TimeoutMS: timeout.Milliseconds(),
	})
	elapsed := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if elapsed < timeout || elapsed > timeout+time.Second {
		t.Errorf("Exec with a %v timeout returned after %v", timeout, elapsed)
	}
	if !res.TimedOut || res.ExitCode != -1 || res.Signal != "SIGKILL" {
		t.Errorf("result %+v, want timed out and killed by SIGKILL", res)
	}
	ps := pids(t, res.Stdout)
	if len(ps) != 2 {
		t.Fatalf("want two pids (background and foreground sleep), got %q", res.Stdout)
	}
	for _, pid := range ps {
		waitGone(t, pid, 2*time.Second)
	}
}

func TestExecClientCancelKills(t *testing.T) {
	t.Parallel()
	ta := startAgent(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := ta.client.Exec(ctx, agentapi.ExecRequest{Shell: "sleep 100 & { echo $$; echo $!; } > pid.tmp; mv pid.tmp pid; wait"})
		done <- err
	}()
	ps := waitPids(t, filepath.Join(ta.dataDir, "pid"))
	cancel()
	if err := <-done; err == nil {
		t.Fatal("Exec succeeded after its context was cancelled")
	}
	if len(ps) != 2 {
		t.Fatalf("pid file lists %v, want two pids", ps)
	}
	for _, pid := range ps {
		waitGone(t, pid, 3*time.Second)
	}
}

func TestExecBackgroundChildKeepsStdout(t *testing.T) {
	t.Parallel()
	ta := startAgent(t, nil)
	start := time.Now()
	res, err := ta.client.Exec(ctxFor(t, 10*time.Second), agentapi.ExecRequest{Shell: "sleep 30 & echo $!"})
	if err != nil {
		t.Fatal(err)
	}
	// Well under the child's 30 s, with room for a loaded machine (the agent gives a quiet
	// pipe 100 ms).
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Exec took %v: it waited for a background child holding stdout", d)
	}
	ps := pids(t, res.Stdout)
	if len(ps) != 1 || res.ExitCode != 0 {
		t.Fatalf("result %+v, want exit 0 and one pid", res)
	}
	// A normal exit leaves background children alone.
	if st := procState(ps[0]); st == 0 || st == 'Z' {
		t.Errorf("background child %d was killed (state %q)", ps[0], st)
	}
	if err := killPid(ps[0]); err != nil {
		t.Fatal(err)
	}
	waitGone(t, ps[0], 2*time.Second)
}

// TestExecOutputBounded produces 50 MB on stdout and checks that the agent keeps only the
// limit. It measures the process's allocations, so it does not run in parallel.
func TestExecOutputBounded(t *testing.T) {
	ta := startAgent(t, nil)
	const total = 50_000_000
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	res, err := ta.client.Exec(ctxFor(t, 30*time.Second), agentapi.ExecRequest{
		Shell: "head -c " + strconv.Itoa(total) + " /dev/zero | tr '\\0' y; echo done >&2",
	})
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Stdout) != agentapi.DefaultOutputLimit || !res.StdoutTruncated || res.Stderr != "done\n" || res.ExitCode != 0 {
		t.Errorf("got %d bytes of stdout (truncated %v), stderr %q, exit %d; want %d, true, \"done\\n\", 0",
			len(res.Stdout), res.StdoutTruncated, res.Stderr, res.ExitCode, agentapi.DefaultOutputLimit)
	}
	// Agent and client together: a few copies of the 1 MiB kept, nothing like 50 MB.
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 20<<20 {
		t.Errorf("exec of %d bytes of output allocated %d bytes", total, alloc)
	}
}

func TestExecConcurrent(t *testing.T) {
	t.Parallel()
	ta := startAgent(t, nil)
	var wg sync.WaitGroup
	for i := range 24 {
		wg.Go(func() {
			res, err := ta.client.Exec(ctxFor(t, 20*time.Second), agentapi.ExecRequest{Shell: "echo " + strconv.Itoa(i) + "; exit " + strconv.Itoa(i)})
			if err != nil {
				t.Error(err)
				return
			}
			if res.ExitCode != i || res.Stdout != strconv.Itoa(i)+"\n" {
				t.Errorf("exec %d: got exit %d stdout %q", i, res.ExitCode, res.Stdout)
			}
		})
	}
	wg.Wait()
}

// TestExecOutputNotLostUnderLoad: output a command writes just before it exits is never
// lost, however late the agent's readers get to run. A fixed 100 ms drain after the
// leader's exit lost it on a loaded 2-core machine: a reader first scheduled after the
// drain deadline returned without reading the pipe at all.
func TestExecOutputNotLostUnderLoad(t *testing.T) {
	t.Parallel()
	ta := startAgent(t, nil)
	// Keep every CPU busy in this process, so that the agent's goroutines run late.
	stop := make(chan struct{})
	var burners sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		burners.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
			}
		})
	}
	defer func() { close(stop); burners.Wait() }()
	ctx := ctxFor(t, 2*time.Minute)
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Go(func() {
			out := strings.Repeat(strconv.Itoa(i%10), 1000+i)
			res, err := ta.client.Exec(ctx, agentapi.ExecRequest{Shell: "printf " + out + "; printf e" + strconv.Itoa(i) + " >&2; exit 7"})
			if err != nil {
				t.Error(err)
				return
			}
			if res.Stdout != out || res.Stderr != "e"+strconv.Itoa(i) || res.ExitCode != 7 {
				t.Errorf("exec %d: got %d bytes of stdout (want %d), stderr %q, exit %d", i, len(res.Stdout), len(out), res.Stderr, res.ExitCode)
			}
		})
	}
	wg.Wait()
}

// TestDrain: after the leader exits, the drain reads to EOF; it follows output a
// background child keeps writing, up to the limit, and stops after a quiet spell, still
// taking what the pipe holds.
func TestDrain(t *testing.T) {
	t.Parallel()
	const quiet = 400 * time.Millisecond
	// newCaptured returns a running capture of a pipe and the pipe's write end.
	newCaptured := func(t *testing.T) (*capture, int) {
		t.Helper()
		p, err := newPipe(true)
		if err != nil {
			t.Fatal(err)
		}
		c := newCapture(p.ours, 1<<20)
		go c.run()
		t.Cleanup(func() { <-c.done })
		return c, p.theirs
	}
	write := func(fd int, s string) {
		if _, err := unix.Write(fd, []byte(s)); err != nil {
			t.Error(err)
		}
	}
	ctx := context.Background()

	t.Run("EOF ends it at once", func(t *testing.T) {
		t.Parallel()
		c, w := newCaptured(t)
		write(w, "all")
		unix.Close(w)
		start := time.Now()
		drain(ctx, time.Minute, time.Now().Add(time.Hour), c)
		if d := time.Since(start); d > 10*time.Second || string(c.buf) != "all" {
			t.Errorf("drain took %v and kept %q; want at once and \"all\"", d, c.buf)
		}
	})
	t.Run("follows output then stops when quiet", func(t *testing.T) {
		t.Parallel()
		c, w := newCaptured(t)
		defer unix.Close(w)
		go func() {
			for i := range 20 {
				write(w, strconv.Itoa(i%10))
				time.Sleep(quiet / 8)
			}
		}()
		start := time.Now()
		drain(ctx, quiet, time.Now().Add(time.Hour), c)
		<-c.done
		if d := time.Since(start); d < 20*quiet/8 {
			t.Errorf("drain stopped after %v, before the output did", d)
		}
		if got := string(c.buf); got != "01234567890123456789" {
			t.Errorf("kept %q, want all 20 writes", got)
		}
	})
	t.Run("endless output is cut at the limit", func(t *testing.T) {
		t.Parallel()
		c, w := newCaptured(t)
		defer unix.Close(w)
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(quiet / 8):
					unix.Write(w, []byte("y"))
				}
			}
		}()
		start := time.Now()
		drain(ctx, quiet, start.Add(3*quiet), c)
		<-c.done
		if d := time.Since(start); d < 3*quiet || d > 3*quiet+10*time.Second || len(c.buf) == 0 {
			t.Errorf("drain took %v and kept %d bytes; want about %v and some", d, len(c.buf), 3*quiet)
		}
	})
	t.Run("stopped capture takes what the pipe holds", func(t *testing.T) {
		t.Parallel()
		p, err := newPipe(true)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(p.theirs)
		write(p.theirs, "buffered")
		c := newCapture(p.ours, 1<<20)
		// Stop before the capture ever reads: its first Read fails on the deadline.
		stopCaptures([]*capture{c})
		c.run()
		if string(c.buf) != "buffered" {
			t.Errorf("kept %q, want \"buffered\"", c.buf)
		}
	})
}

func TestCapture(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		writes    []string
		limit     int
		want      string
		truncated bool
	}{
		{"nothing", nil, 10, "", false},
		{"under", []string{"abc", "de"}, 10, "abcde", false},
		{"exact", []string{"abcde", "fghij"}, 10, "abcdefghij", false},
		{"over in one write", []string{"abcdefghijkl"}, 10, "abcdefghij", true},
		{"over across writes", []string{"abcdefgh", "ijkl", "mn"}, 10, "abcdefghij", true},
		{"only after full", []string{"abcdefghij", "k"}, 10, "abcdefghij", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := capture{limit: tc.limit}
			for _, w := range tc.writes {
				c.keep([]byte(w))
			}
			if string(c.buf) != tc.want || c.truncated != tc.truncated {
				t.Errorf("kept %q truncated %v, want %q %v", c.buf, c.truncated, tc.want, tc.truncated)
			}
			if cap(c.buf) > tc.limit {
				t.Errorf("buffer capacity %d above the limit %d", cap(c.buf), tc.limit)
			}
		})
	}
	t.Run("growth stays under the limit", func(t *testing.T) {
		c := capture{limit: 1 << 20}
		chunk := make([]byte, 32<<10)
		for range 10 << 20 / len(chunk) {
			c.keep(chunk)
		}
		if len(c.buf) != 1<<20 || cap(c.buf) != 1<<20 || !c.truncated {
			t.Errorf("len %d cap %d truncated %v, want %d %d true", len(c.buf), cap(c.buf), c.truncated, 1<<20, 1<<20)
		}
	})
}

func TestBaseEnv(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		environ []string
		want    []string
	}{
		{"empty", nil, []string{"HOME=/h", "USER=u", "LANG=C.UTF-8", "PATH=" + defaultPath}},
		{"filters agent settings and identity",
			[]string{"SESSIOND_TOKEN=x", "HOME=/root", "USER=root", "A=1", "LANG=de_DE.UTF-8", "PATH=/bin", "=weird"},
			[]string{"A=1", "LANG=de_DE.UTF-8", "PATH=/bin", "HOME=/h", "USER=u"}},
		{"keeps look-alikes", []string{"SESSIONDX=1", "XSESSIOND_=2"},
			[]string{"SESSIONDX=1", "XSESSIOND_=2", "HOME=/h", "USER=u", "LANG=C.UTF-8", "PATH=" + defaultPath}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, baseEnv(tc.environ, "/h", "u")); diff != "" {
				t.Errorf("baseEnv (-want +got):\n%s", diff)
			}
		})
	}
}

func TestMergeEnv(t *testing.T) {
	t.Parallel()
	base := []string{"A=1", "B=2"}
	got := mergeEnv(base, []string{"B=3", "C=4", "C=5"})
	if diff := cmp.Diff([]string{"A=1", "B=3", "C=5"}, got); diff != "" {
		t.Errorf("mergeEnv (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"A=1", "B=2"}, base); diff != "" {
		t.Errorf("mergeEnv changed its base (-want +got):\n%s", diff)
	}
}

// BenchmarkExecTrue measures an exec round trip through the socket: request, fork/exec
// of true, reaping, response. It reports the median as p50-ms.
func BenchmarkExecTrue(b *testing.B) {
	ta := startAgent(b, nil)
	ctx := context.Background()
	req := agentapi.ExecRequest{Argv: []string{"true"}}
	var lat []time.Duration
	for b.Loop() {
		start := time.Now()
		res, err := ta.client.Exec(ctx, req)
		lat = append(lat, time.Since(start))
		if err != nil || res.ExitCode != 0 {
			b.Fatalf("exec true: %+v, %v", res, err)
		}
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}

func killPid(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }
