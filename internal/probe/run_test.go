package probe

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
)

// httpServer is a main command serving HTTP on port (after a delay) from the sandbox's
// data directory. The host's python3 runs it: the Fake sandbox is the host.
func httpServer(port int, delay string) []string {
	return []string{"/bin/sh", "-c", "sleep " + delay + "; exec /usr/bin/python3 -m http.server " + strconv.Itoa(port) + " --bind 127.0.0.1"}
}

// TestWaitStartupFails: a probe that never succeeds fails at its failureThreshold-th
// attempt, (failureThreshold-1)×periodSeconds after the start.
func TestWaitStartupFails(t *testing.T) {
	t.Parallel()
	ag, _ := newSandbox(t)
	port := freePort(t)
	start := time.Now()
	err := WaitStartup(ctxFor(t, time.Minute), ag, Probe{Type: Startup, PeriodSeconds: 1, FailureThreshold: 3, TCPSocket: &TCPSocket{Port: port}})
	d := time.Since(start)
	msg, _ := errkind.PublicMessage(err)
	if !errkind.Is(err, errkind.Unavailable) || !strings.Contains(msg, "Startup probe failed 3 times in a row") || !strings.Contains(msg, "nothing listens on port "+strconv.Itoa(port)) {
		t.Errorf("WaitStartup on a closed port: %v (public %q)", err, msg)
	}
	if d < 2*time.Second || d > 10*time.Second {
		t.Errorf("it failed after %v, want about 2s ((3-1) periods of 1s)", d)
	}
}

// TestWaitStartupSlowServer: the probe waits for a main process that starts listening
// late, and succeeds as soon as it does.
func TestWaitStartupSlowServer(t *testing.T) {
	t.Parallel()
	port := freePort(t)
	ag, _ := newSandbox(t, httpServer(port, "1")...)
	start := time.Now()
	if err := WaitStartup(ctxFor(t, time.Minute), ag, Probe{Type: Startup, PeriodSeconds: 1, FailureThreshold: 10, HTTPGet: &HTTPGet{Path: "/", Port: port}}); err != nil {
		t.Fatalf("WaitStartup: %v", err)
	}
	if d := time.Since(start); d < time.Second {
		t.Errorf("succeeded after %v, before the server could listen", d)
	}
}

func TestWaitStartupInitialDelayAndContext(t *testing.T) {
	t.Parallel()
	ag, _ := newSandbox(t)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	// The initial delay outlasts ctx: no attempt is made, ctx's error is returned.
	err := WaitStartup(ctx, ag, Probe{Type: Startup, InitialDelaySeconds: 30, TCPSocket: &TCPSocket{Port: freePort(t)}})
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 10*time.Second {
		t.Errorf("WaitStartup past its context: %v after %v", err, time.Since(start))
	}
}

// TestWatchLiveness: Watch stays quiet while the main process serves, and calls onDead
// once it has stopped listening.
func TestWatchLiveness(t *testing.T) {
	t.Parallel()
	port := freePort(t)
	ag, _ := newSandbox(t, httpServer(port, "0")...)
	p := Probe{Type: Liveness, PeriodSeconds: 1, FailureThreshold: 2, HTTPGet: &HTTPGet{Path: "/", Port: port}}
	if err := WaitStartup(ctxFor(t, time.Minute), ag, Probe{Type: Startup, PeriodSeconds: 1, FailureThreshold: 10, HTTPGet: p.HTTPGet}); err != nil {
		t.Fatalf("the server never came up: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dead := make(chan error, 2)
	done := make(chan struct{})
	go func() {
		defer close(done)
		Watch(ctx, ag, p, func(err error) { dead <- err })
	}()
	defer func() { cancel(); <-done }()

	// A few periods of success: no verdict.
	h, err := ag.Health(ctxFor(t, 10*time.Second))
	if err != nil || h.Main == nil || !h.Main.Running {
		t.Fatalf("health %+v, %v; want the main process running", h, err)
	}
	select {
	case err := <-dead:
		t.Fatalf("onDead(%v) while the server was up", err)
	case <-time.After(2500 * time.Millisecond):
	}

	killed := time.Now()
	if res, err := ag.Exec(ctxFor(t, 10*time.Second), agentapi.ExecRequest{Argv: []string{"kill", strconv.Itoa(h.Main.PID)}}); err != nil || res.ExitCode != 0 {
		t.Fatalf("killing the server: %+v, %v", res, err)
	}
	select {
	case err := <-dead:
		msg, _ := errkind.PublicMessage(err)
		if !errkind.Is(err, errkind.Unavailable) || !strings.Contains(msg, "Liveness probe failed 2 times in a row") {
			t.Errorf("onDead(%v), public %q", err, msg)
		}
		if d := time.Since(killed); d > 10*time.Second {
			t.Errorf("onDead came %v after the server stopped", d)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("onDead was not called after the server stopped")
	}
	<-done // Watch returns after onDead
	if len(dead) != 0 {
		t.Error("onDead was called twice")
	}
}

// TestWatchStops: ending ctx ends Watch without a verdict, even while attempts fail.
func TestWatchStops(t *testing.T) {
	t.Parallel()
	ag, _ := newSandbox(t)
	port := freePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	called := false
	go func() {
		defer close(done)
		Watch(ctx, ag, Probe{Type: Liveness, PeriodSeconds: 1, FailureThreshold: 10, TCPSocket: &TCPSocket{Port: port}},
			func(error) { called = true })
	}()
	time.Sleep(100 * time.Millisecond) // let an attempt or two happen; not needed for correctness
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Watch did not return after its context ended")
	}
	if called {
		t.Error("onDead was called after ctx ended")
	}
}
