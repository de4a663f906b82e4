package sandboxtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/sandbox"
)

// Fake is a sandbox.Runtime without isolation for fast tests of the layers above the
// runtime: each "sandbox" is a real sessiond-agent process on the host, serving the real
// agent API on a unix socket, with a data directory of its own. It runs whatever the host
// has (its python3, its ipykernel); Spec.RootFS is recorded, not used. It passes the
// lifecycle part of the conformance suite (Run with Containment false).
//
// Function fields let a test steer behaviour; they are called with no lock held.
type Fake struct {
	// AgentBinary is the sessiond-agent executable (see BuildAgent).
	AgentBinary string
	// StateDir holds one directory per sandbox.
	StateDir string
	// AgentArgs are extra agent flags (e.g. -kernel python3).
	AgentArgs []string
	// CreateHook, if set, runs at the start of Create; an error fails the create.
	CreateHook func(ctx context.Context, spec sandbox.Spec) error

	mu sync.Mutex
	// procs are the agent processes this Fake started. Guarded by mu.
	procs map[string]*exec.Cmd
	// clients caches agent clients. Guarded by mu.
	clients map[string]*agentapi.Client
}

var _ sandbox.Runtime = (*Fake)(nil)

var (
	fakeIDPattern  = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,39}$`)
	fakeEnvPattern = regexp.MustCompile(`^[^=]+=`)
)

func (f *Fake) init() {
	if f.procs == nil {
		f.procs = map[string]*exec.Cmd{}
		f.clients = map[string]*agentapi.Client{}
	}
}

// Name implements sandbox.Runtime.
func (f *Fake) Name() string { return "fake" }

// Capabilities implements sandbox.Runtime.
func (f *Fake) Capabilities() sandbox.Capabilities {
	return sandbox.Capabilities{Available: true, Isolation: "none"}
}

func (f *Fake) dir(id string) string { return filepath.Join(f.StateDir, id) }

// Create implements sandbox.Runtime.
func (f *Fake) Create(ctx context.Context, spec sandbox.Spec) (sandbox.Info, error) {
	if f.CreateHook != nil {
		if err := f.CreateHook(ctx, spec); err != nil {
			return sandbox.Info{}, err
		}
	}
	if spec.ID != "" && !fakeIDPattern.MatchString(spec.ID) {
		return sandbox.Info{}, errkind.New(errkind.Invalid, "sandbox ID %q", spec.ID)
	}
	if spec.RootFS == "" || !filepath.IsAbs(spec.RootFS) {
		return sandbox.Info{}, errkind.New(errkind.Invalid, "root filesystem must be an absolute path, got %q", spec.RootFS)
	}
	if fi, err := os.Stat(spec.RootFS); err != nil || !fi.IsDir() {
		return sandbox.Info{}, errkind.New(errkind.Invalid, "root filesystem %s is not a directory", spec.RootFS)
	}
	if spec.Limits.MemoryBytes < 0 || (spec.Limits.MemoryBytes > 0 && spec.Limits.MemoryBytes < 32<<20) || spec.Limits.Pids < 0 {
		return sandbox.Info{}, errkind.New(errkind.Invalid, "bad limits %+v", spec.Limits)
	}
	for _, e := range spec.Env {
		if !fakeEnvPattern.MatchString(e) {
			return sandbox.Info{}, errkind.New(errkind.Invalid, "environment entry %q", e)
		}
	}
	id := spec.ID
	if id == "" {
		id = "fake-" + marker()[len("sessiond-marker-"):]
	}
	dir := f.dir(id)
	if err := os.MkdirAll(f.StateDir, 0o755); err != nil {
		return sandbox.Info{}, err
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return sandbox.Info{}, errkind.New(errkind.AlreadyExists, "sandbox %s already exists", id)
		}
		return sandbox.Info{}, err
	}
	info := sandbox.Info{ID: id, Runtime: f.Name(), Image: spec.Image, State: sandbox.StateRunning,
		Created: time.Now().UTC(), Labels: spec.Labels, Limits: spec.Limits.WithDefaults()}
	for _, d := range []string{"data", "home", "sock"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			return sandbox.Info{}, err
		}
	}
	if os.Geteuid() == 0 {
		for _, d := range []string{"data", "home"} {
			os.Chown(filepath.Join(dir, d), agentapi.UserUID, agentapi.UserGID)
		}
	}
	args := append([]string{"-socket", filepath.Join(dir, "sock", agentapi.SocketName),
		"-data-dir", filepath.Join(dir, "data"), "-home", filepath.Join(dir, "home"),
		"-kernel-dir", filepath.Join(dir, "kernel")}, f.AgentArgs...)
	if spec.Kernel != "" {
		args = append(args, "-kernel", spec.Kernel)
		// The kernel preload beside the agent, as the OCI runtimes mount it.
		if p := sandbox.KernelPreloadBeside(f.AgentBinary); p != "" {
			args = append(args, "-kernel-preload", p)
		}
	}
	if spec.WorkingDir != "" {
		args = append(args, "-workdir", spec.WorkingDir)
	}
	if u := spec.User; u != nil {
		args = append(args, "-main-user", strconv.Itoa(u.UID)+":"+strconv.Itoa(u.GID))
	}
	if len(spec.Command) > 0 {
		args = append(append(args, "--"), spec.Command...)
	}
	cmd := exec.Command(f.AgentBinary, args...)
	cmd.Env = append(os.Environ(), spec.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return sandbox.Info{}, fmt.Errorf("starting fake sandbox agent: %w", err)
	}
	info.PID = cmd.Process.Pid
	f.mu.Lock()
	f.init()
	f.procs[id] = cmd
	f.mu.Unlock()
	if err := writeFakeRecord(dir, info); err != nil {
		f.Destroy(ctx, id)
		return sandbox.Info{}, err
	}
	timeout := spec.StartTimeout
	if timeout == 0 {
		timeout = sandbox.DefaultStartTimeout
	}
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		if _, err := f.Agent(id).Health(hctx); err == nil {
			return info, nil
		}
		select {
		case <-hctx.Done():
			f.Destroy(context.WithoutCancel(ctx), id)
			return sandbox.Info{}, errkind.Wrap(errkind.Timeout, fmt.Errorf("fake sandbox %s: agent never answered", id))
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// Attach implements sandbox.Runtime.
func (f *Fake) Attach(ctx context.Context, id string) (sandbox.Info, error) {
	if !fakeIDPattern.MatchString(id) {
		return sandbox.Info{}, errkind.New(errkind.NotFound, "no sandbox %q", id)
	}
	info, err := readFakeRecord(f.dir(id))
	if err != nil {
		return sandbox.Info{}, errkind.New(errkind.NotFound, "no sandbox %q", id)
	}
	if _, err := f.Agent(id).Health(ctx); err != nil {
		return sandbox.Info{}, errkind.Wrap(errkind.Unavailable, err)
	}
	return info, nil
}

// List implements sandbox.Runtime.
func (f *Fake) List(ctx context.Context) ([]sandbox.Info, error) {
	ents, err := os.ReadDir(f.StateDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	var out []sandbox.Info
	for _, e := range ents {
		info, err := readFakeRecord(f.dir(e.Name()))
		if err != nil {
			info = sandbox.Info{ID: e.Name(), Runtime: f.Name(), State: sandbox.StateUnknown}
		}
		out = append(out, info)
	}
	return out, nil
}

// Destroy implements sandbox.Runtime.
func (f *Fake) Destroy(ctx context.Context, id string) error {
	if !fakeIDPattern.MatchString(id) {
		return nil
	}
	f.mu.Lock()
	f.init()
	cmd := f.procs[id]
	delete(f.procs, id)
	if c := f.clients[id]; c != nil {
		c.Close()
		delete(f.clients, id)
	}
	f.mu.Unlock()
	pid := 0
	if cmd != nil {
		pid = cmd.Process.Pid
	} else if info, err := readFakeRecord(f.dir(id)); err == nil && info.PID > 0 && isAgentOf(info.PID, f.dir(id)) {
		pid = info.PID // started by another Fake (a "previous control plane")
	}
	if pid > 0 {
		// The agent runs its kernel and commands in process groups of their own, and
		// without a pid namespace nothing ends them with the agent: find them first.
		victims := append(descendants(pid), pid)
		for _, p := range victims {
			_ = syscall.Kill(-p, syscall.SIGKILL)
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
	}
	if cmd != nil {
		_ = cmd.Wait()
	}
	return os.RemoveAll(f.dir(id))
}

// Stats implements sandbox.Runtime.
func (f *Fake) Stats(ctx context.Context, id string) (sandbox.Stats, error) {
	info, err := readFakeRecord(f.dir(id))
	if err != nil {
		return sandbox.Stats{}, errkind.New(errkind.NotFound, "no sandbox %q", id)
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(info.PID) + "/statm")
	if err != nil {
		return sandbox.Stats{}, errkind.New(errkind.NotFound, "sandbox %q is not running", id)
	}
	var size, rss int64
	fmt.Sscan(string(b), &size, &rss)
	return sandbox.Stats{MemoryBytes: rss * 4096, PSSBytes: rss * 4096, Processes: 1}, nil
}

// Agent implements sandbox.Runtime.
func (f *Fake) Agent(id string) *agentapi.Client {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.init()
	c := f.clients[id]
	if c == nil {
		c = agentapi.NewClient(filepath.Join(f.dir(id), "sock", agentapi.SocketName))
		f.clients[id] = c
	}
	return c
}

// descendants returns the pids of every process below pid, read from /proc.
func descendants(pid int) []int {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// The command name (field 2) may hold spaces and parentheses: parse after the last ')'.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 {
			continue
		}
		if ppid, err := strconv.Atoi(f[1]); err == nil {
			children[ppid] = append(children[ppid], p)
		}
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// isAgentOf reports whether pid is still the agent serving the sandbox in dir: a
// recorded pid may have ended and been reused by an unrelated process (pids wrap on a
// busy machine), which must not be killed in its place.
func isAgentOf(pid int, dir string) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	return err == nil && bytes.Contains(b, []byte(dir+"/"))
}
