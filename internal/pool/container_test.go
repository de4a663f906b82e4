package pool

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/probe"
)

// untilStopFile is a main command that runs until a file named stop appears in its working
// directory (the data directory), then exits with code 3.
var untilStopFile = []string{"sh", "-c", "while [ ! -e stop ]; do sleep 0.02; done; echo bye; exit 3"}

// stopContainer makes the main command of l's sandbox exit and waits until the agent
// reports it.
func stopContainer(t *testing.T, l *Lease) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := l.Agent.Upload(ctx, "stop", strings.NewReader(""), 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the container to exit", func() bool {
		h, err := l.Agent.Health(ctx)
		return err == nil && h.Main != nil && !h.Main.Running
	})
}

// TestContainerExitEndsSession: under both lifecycle types, a session whose container
// exits ends at the next health check, and the identifier then gets a fresh sandbox; a
// ready sandbox whose container exits is replaced.
func TestContainerExitEndsSession(t *testing.T) {
	for _, lt := range []string{LifecycleTimed, LifecycleOnContainerExit} {
		t.Run(lt, func(t *testing.T) {
			fp := newFakePool(t, Spec{MaxConcurrentSessions: 2, ReadySessionInstances: 1, LifecycleType: lt},
				Options{HealthInterval: time.Second, Command: untilStopFile})
			fp.start(t)
			fp.waitReady(t, 1)

			l := acquire(t, fp.m, "alice")
			h, err := l.Agent.Health(context.Background())
			if err != nil || h.Main == nil || !h.Main.Running {
				t.Fatalf("health %+v, %v: want the main command running", h, err)
			}
			stopContainer(t, l)
			l.Release()
			waitFor(t, "the session to end", func() bool {
				fp.clock.Advance(time.Second)
				_, err := fp.m.Get(context.Background(), "alice")
				return errkind.Is(err, errkind.NotFound)
			})
			waitFor(t, "its sandbox to be destroyed", func() bool { return !slices.Contains(fp.live(t), l.Session.SandboxID) })
			l2 := acquire(t, fp.m, "alice")
			if !l2.New || l2.Session.SandboxID == l.Session.SandboxID {
				t.Errorf("after its container exited alice got %s (new %v), want a new sandbox", l2.Session.SandboxID, l2.New)
			}
			l2.Release()

			fp.waitReady(t, 1)
			ready := slices.DeleteFunc(fp.live(t), func(id string) bool { return id == l2.Session.SandboxID })
			if len(ready) != 1 {
				t.Fatalf("live sandboxes besides alice's: %v, want one ready", ready)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := fp.rt.Agent(ready[0]).Upload(ctx, "stop", strings.NewReader(""), 0); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the ready sandbox whose container exited to be replaced", func() bool {
				fp.clock.Advance(time.Second)
				c := fp.m.Counts()
				return !slices.Contains(fp.live(t), ready[0]) && c.Ready == 1 && c.Pending == 0
			})
		})
	}
}

// TestWatch: Options.Watch runs for each allocated session and stops when it ends; its
// error ends the session.
func TestWatch(t *testing.T) {
	var running atomic.Int32
	kill := make(chan string, 1)
	watch := func(ctx context.Context, s SessionInfo, ag *agentapi.Client) error {
		running.Add(1)
		defer running.Add(-1)
		if ag == nil || s.State != StateAllocated {
			return errors.New("bad arguments")
		}
		for {
			select {
			case <-ctx.Done():
				return nil
			case id := <-kill:
				if id == s.Identifier {
					return errkind.New(errkind.Unavailable, "Liveness probe failed 3 times in a row")
				}
				kill <- id
			}
		}
	}
	fp := newFakePool(t, Spec{MaxConcurrentSessions: 3, ReadySessionInstances: 1}, Options{Watch: watch})
	fp.start(t)
	a, b := acquire(t, fp.m, "alice"), acquire(t, fp.m, "bob")
	a.Release()
	b.Release()
	waitFor(t, "two watches", func() bool { return running.Load() == 2 })

	kill <- "alice"
	waitFor(t, "alice's session to end", func() bool {
		_, err := fp.m.Get(context.Background(), "alice")
		return errkind.Is(err, errkind.NotFound)
	})
	waitFor(t, "alice's watch to stop", func() bool { return running.Load() == 1 })

	if err := fp.m.Delete(context.Background(), "bob"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "bob's watch to stop", func() bool { return running.Load() == 0 })

	acquire(t, fp.m, "carol").Release()
	waitFor(t, "carol's watch", func() bool { return running.Load() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := fp.m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if n := running.Load(); n != 0 {
		t.Errorf("%d watches still running after Close", n)
	}
}

// TestEnd: End ends the session of the sandbox it names, never the identifier's next one.
func TestEnd(t *testing.T) {
	fp := newFakePool(t, Spec{MaxConcurrentSessions: 2, ReadySessionInstances: 0}, Options{})
	fp.start(t)
	l := acquire(t, fp.m, "alice")
	l.Release()
	dead := &ExitedError{State: agentapi.ProcessState{ExitCode: new(3)}}
	if !fp.m.End(context.Background(), l.Session.SandboxID, dead) {
		t.Fatal("End of alice's sandbox ended nothing")
	}
	l2 := acquire(t, fp.m, "alice")
	defer l2.Release()
	if l2.Session.SandboxID == l.Session.SandboxID {
		t.Fatal("alice kept her sandbox after End")
	}
	if fp.m.End(context.Background(), l.Session.SandboxID, dead) {
		t.Error("a second End of the old sandbox ended something")
	}
	if _, err := fp.m.Get(context.Background(), "alice"); err != nil {
		t.Errorf("alice's new session after a stale End: %v", err)
	}
	if got := dead.Error(); got != "the container exited with code 3" {
		t.Errorf("ExitedError = %q", got)
	}
}

func TestContainerSpec(t *testing.T) {
	c := &ContainerSpec{Image: "reg.example/app:v1", TargetPort: 8080,
		Env:      []EnvVar{{Name: "PORT", Value: "8080"}, {Name: "TOKEN", SecretRef: "tok"}, {Name: "PATH", Value: "/app/bin"}},
		Registry: &RegistryCredentials{Server: "reg.example", Username: "u", PasswordSecretRef: "pw"},
		Secrets:  map[string]string{"tok": "s3cret", "pw": "hunter2"}}
	if err := c.validate(); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		command, args, entrypoint, cmd, want []string
	}{
		{entrypoint: []string{"/server"}, cmd: []string{"-v"}, want: []string{"/server", "-v"}},
		{args: []string{"-q"}, entrypoint: []string{"/server"}, cmd: []string{"-v"}, want: []string{"/server", "-q"}},
		{command: []string{"/other"}, entrypoint: []string{"/server"}, cmd: []string{"-v"}, want: []string{"/other"}},
		{command: []string{"/other"}, args: []string{"x"}, entrypoint: []string{"/server"}, want: []string{"/other", "x"}},
		{cmd: []string{"python", "app.py"}, want: []string{"python", "app.py"}},
	} {
		c := *c
		c.Command, c.Args = tc.command, tc.args
		got, err := c.Argv(tc.entrypoint, tc.cmd)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("Argv(%q, %q) with command %q, args %q = %q, %v; want %q", tc.entrypoint, tc.cmd, tc.command, tc.args, got, err, tc.want)
		}
	}
	if _, err := c.Argv(nil, nil); !errkind.Is(err, errkind.Invalid) {
		t.Errorf("Argv with nothing to run: %v, want Invalid", err)
	}

	env, err := c.Environ([]string{"PATH=/usr/bin", "LANG=C"})
	if want := []string{"PATH=/app/bin", "LANG=C", "PORT=8080", "TOKEN=s3cret"}; err != nil || !cmp.Equal(env, want) {
		t.Errorf("Environ = %q, %v; want %q", env, err, want)
	}
	if u, p, err := c.Credentials(); u != "u" || p != "hunter2" || err != nil {
		t.Errorf("Credentials = %q, %q, %v", u, p, err)
	}

	if ps := c.StartupProbes(); len(ps) != 1 || ps[0].TCPSocket == nil || ps[0].TCPSocket.Port != 8080 || ps[0].PeriodSeconds != 1 {
		t.Errorf("default StartupProbes = %+v, want a TCP probe on 8080 every second", ps)
	}
	c.Probes = []probe.Probe{{Type: "startup", HTTPGet: &probe.HTTPGet{Path: "/health", Port: 8080}}, {Type: probe.Liveness, TCPSocket: &probe.TCPSocket{Port: 8080}}}
	if ps := c.StartupProbes(); len(ps) != 1 || ps[0].HTTPGet == nil || ps[0].PeriodSeconds != probe.DefaultPeriodSeconds {
		t.Errorf("StartupProbes = %+v, want the configured one with defaults", ps)
	}
	if ps := c.LivenessProbes(); len(ps) != 1 || ps[0].TCPSocket == nil {
		t.Errorf("LivenessProbes = %+v", ps)
	}

	for field, edit := range map[string]func(c *ContainerSpec){
		"containers[0].image":             func(c *ContainerSpec) { c.Image = "" },
		"ingress.targetPort":              func(c *ContainerSpec) { c.TargetPort = 0 },
		"containers[0].env[0].name":       func(c *ContainerSpec) { c.Env = []EnvVar{{Name: "A=B"}} },
		"containers[0].env[0]: set value": func(c *ContainerSpec) { c.Env = []EnvVar{{Name: "A", Value: "x", SecretRef: "tok"}} },
		"containers[0].env[0].secretRef":  func(c *ContainerSpec) { c.Env = []EnvVar{{Name: "A", SecretRef: "nope"}} },
		"containers[0].probes[0]":         func(c *ContainerSpec) { c.Probes = []probe.Probe{{Type: probe.Startup}} },
		"containers[0].probes[1].type":    func(c *ContainerSpec) { c.Probes = append(c.Probes, c.Probes[0]) },
		"registryCredentials.server":      func(c *ContainerSpec) { c.Registry = &RegistryCredentials{Username: "u", PasswordSecretRef: "pw"} },
		"registryCredentials.passwordSecretRef": func(c *ContainerSpec) {
			c.Registry = &RegistryCredentials{Server: "r", Username: "u", PasswordSecretRef: "x"}
		},
	} {
		bad := *c
		bad.Probes = []probe.Probe{{Type: probe.Startup, TCPSocket: &probe.TCPSocket{Port: 1}}}
		edit(&bad)
		err := bad.validate()
		if !errkind.Is(err, errkind.Invalid) || !strings.Contains(err.Error(), "customContainerTemplate."+field) {
			t.Errorf("validate with a bad %s: %v", field, err)
		}
	}

	spec := Spec{Name: "ccp", ContainerType: CustomContainer, MaxConcurrentSessions: 1, CooldownPeriod: time.Minute}
	if _, err := spec.Validate(); err == nil || !strings.Contains(err.Error(), "customContainerTemplate") {
		t.Errorf("a CustomContainer pool without a template: %v", err)
	}
	spec.Container = c
	if _, err := spec.Validate(); err != nil {
		t.Errorf("a CustomContainer pool with one: %v", err)
	}
	spec.ContainerType = PythonLTS
	if _, err := spec.Validate(); err == nil {
		t.Error("a PythonLTS pool with a container template was accepted")
	}
}
