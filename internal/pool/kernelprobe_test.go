package pool

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/sandbox/sandboxtest"
)

// TestReadyKernelProbe: a ready sandbox's health checks go through its kernel, so one
// whose kernel stops answering is replaced before a session gets it; an allocated
// session's kernel is left to its user (a long execution must not look like a wedged
// kernel). Real agents and ipykernel kernels, on the fake runtime.
func TestReadyKernelProbe(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real kernels")
	}
	// The agent starts the kernel with the python3 in PATH: Debian's, which has ipykernel.
	t.Setenv("PATH", "/usr/bin:"+os.Getenv("PATH"))
	if err := exec.Command("python3", "-c", "import ipykernel").Run(); err != nil {
		sandboxtest.SkipOrFail(t, "python3 with ipykernel unavailable: %v", err)
	}
	state, err := os.MkdirTemp("/tmp", "spk-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(state, 0o755) // the agent runs the kernel as an unprivileged user
	t.Cleanup(func() { os.RemoveAll(state) })
	rt := &sandboxtest.Fake{AgentBinary: agentBin, StateDir: state}
	m, err := New(Spec{Name: "kernel-probe", MaxConcurrentSessions: 1, ReadySessionInstances: 1, CooldownPeriod: time.Minute},
		Options{Runtime: rt, RootFS: "/", Kernel: "python3", HealthInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(context.Background()); err != nil {
			t.Errorf("Close: %v", err)
		}
	})

	waitReal(t, "a ready sandbox", 60*time.Second, func() bool { c := m.Counts(); return c.Ready == 1 && c.Pending == 0 })
	ids := liveIDs(t, rt)
	if len(ids) != 1 {
		t.Fatalf("sandboxes %v, want one", ids)
	}
	first := ids[0]
	// Without a warm-up a sandbox is ready once its agent answers; its kernel may still be
	// starting, which the agent's own start timeout covers.
	waitReal(t, "the ready sandbox's kernel to start", 60*time.Second, func() bool {
		ki, err := rt.Agent(first).KernelInfo(ctx)
		return err == nil && ki.State == "idle"
	})
	kernel := kernelPID(t, rt, first)
	if err := syscall.Kill(kernel, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	waitReal(t, "the sandbox whose kernel stopped answering to be replaced", 60*time.Second, func() bool {
		c := m.Counts()
		ids := liveIDs(t, rt)
		return c.Ready == 1 && c.Pending == 0 && c.Deleting == 0 && len(ids) == 1 && ids[0] != first
	})
	t.Logf("a ready sandbox with a stopped kernel was replaced in %v", time.Since(stopped))

	l := acquireCtx(ctx, t, m, "kernel-user")
	defer l.Release()
	ex, err := l.Agent.Execute(ctx, agentapi.ExecuteRequest{Code: "6*7", TimeoutSeconds: 30})
	if err != nil || ex.Status != agentapi.StatusSucceeded || string(ex.Result) != "42" {
		t.Fatalf("execution in the replacement: %+v, %v", ex, err)
	}

	// Allocated: a kernel that does not answer (as one running C code would not) is left.
	kernel = kernelPID(t, rt, l.Session.SandboxID)
	if err := syscall.Kill(kernel, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // 15 health checks, each of which would time out
	syscall.Kill(kernel, syscall.SIGCONT)
	if ss := m.Sessions(); len(ss) != 1 || ss[0].Identifier != "kernel-user" || ss[0].SandboxID != l.Session.SandboxID {
		t.Fatalf("sessions after the allocated kernel stopped answering: %+v", ss)
	}
	if ex, err := l.Agent.Execute(ctx, agentapi.ExecuteRequest{Code: "6*7", TimeoutSeconds: 30}); err != nil || string(ex.Result) != "42" {
		t.Fatalf("execution after the kernel resumed: %+v, %v", ex, err)
	}
}

// kernelPID returns the pid of the kernel (the agent's python3 child) of fake sandbox id.
func kernelPID(t *testing.T, rt *sandboxtest.Fake, id string) int {
	t.Helper()
	infos, err := rt.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	agent := 0
	for _, i := range infos {
		if i.ID == id {
			agent = i.PID
		}
	}
	if agent == 0 {
		t.Fatalf("sandbox %s: no agent pid in %+v", id, infos)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 || !strings.Contains(s[:i], "(python3") {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(agent) {
			pid, _ := strconv.Atoi(strings.Fields(s)[0])
			return pid
		}
	}
	t.Fatalf("sandbox %s: no python3 child of agent %d", id, agent)
	return 0
}
