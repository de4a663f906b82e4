package agent

import (
	"cmp"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/jupyter"
)

const (
	// KernelPython3 is the one kernel the agent supports: ipykernel, run by the python3
	// found in the user's PATH.
	KernelPython3 = "python3"
	// defaultKernelDir holds kernel connection files: 0700, owned by the user, so only
	// root and the kernel can read the key. It is not the agent socket's directory, which
	// the user must not reach.
	defaultKernelDir = "/run/sessiond-kernel"
	// kernelStartTimeout bounds a kernel start, up to its kernel_info_reply: ipykernel
	// takes a second or two, more under gVisor on a loaded host.
	kernelStartTimeout = 60 * time.Second
	// interruptGrace is how long an interrupted kernel gets to stop the running code
	// (ipykernel raises KeyboardInterrupt) before it is killed and replaced.
	interruptGrace = 2 * time.Second
	// maxStartBackoff caps the wait between failed kernel starts.
	maxStartBackoff = 30 * time.Second
	// restartNote begins the stderr of the first execution after a kernel died on its
	// own between executions.
	restartNote = "[sessiond] The kernel restarted since the last execution: variables, imports and other state were lost.\n"
)

// kernelEnv is added to the user's environment for the kernel.
var kernelEnv = []string{
	"MPLBACKEND=module://matplotlib_inline.backend_inline",
	"PYDEVD_DISABLE_FILE_VALIDATION=1",
}

// pythonLauncher starts ipykernel with start-up and per-message costs cut; the file
// says which and why. The command line adds two more: no SQLite history (a database file
// and a saving thread; In and Out still work, and nothing is kept across kernels, which
// sessions never do anyway), and no sleep after each execution (see the file).
//
//go:embed kernel_launcher.py
var pythonLauncher string

// pythonKernelArgv is the command of the python3 kernel.
func pythonKernelArgv(connFile string) []string {
	return []string{"python3", "-c", pythonLauncher, "-f", connFile, "--HistoryManager.enabled=False", "--IPythonKernel._execute_sleep=0"}
}

// preloadEnv names the variable that tells the launcher which LD_PRELOAD entry is the
// agent's, to remove.
const preloadEnv = "SESSIOND_KERNEL_PRELOAD"

// withPreload returns env with lib first in LD_PRELOAD, before what the user's
// environment preloads, and preloadEnv set to lib.
func withPreload(env []string, lib string) []string {
	value := lib
	for _, kv := range env {
		if old, ok := strings.CutPrefix(kv, "LD_PRELOAD="); ok && old != "" {
			value = lib + ":" + old
		}
	}
	return mergeEnv(env, []string{"LD_PRELOAD=" + value, preloadEnv + "=" + lib})
}

// kernelSup supervises the code-interpreter kernel and runs executions on it, one at a
// time, from a FIFO queue. One goroutine (run) owns the kernel process and the client
// connected to it; HTTP handlers only queue executions, read state and send requests to
// run. A kernel that dies is replaced; executions report it.
type kernelSup struct {
	a    *Agent
	log  *slog.Logger
	logs *ring // the kernel process's own stdout and stderr
	dir  string
	// argv returns the kernel command for a connection file.
	argv         func(connFile string) []string
	preload      string // Config.KernelPreload, if the file exists
	grace        time.Duration
	startTimeout time.Duration
	maxDisplay   int // bytes of rich output kept per execution

	restartc chan chan error // restart requests, answered by run
	wake     chan struct{}   // capacity 1: an execution was queued
	stop     chan struct{}   // closed by close
	done     chan struct{}   // closed when run returns

	// k is the running kernel, nil between kernels. Only run uses it.
	k *kernelProc

	mu sync.Mutex
	// info is the kernel's state and description. Guarded by mu.
	info agentapi.KernelInfo
	// pid is the running kernel's pid, 0 if none. Guarded by mu.
	pid int
	// unreported is set when the kernel was replaced without an execution telling
	// its client. Guarded by mu.
	unreported bool
	// queue holds the executions waiting to run, oldest first. Guarded by mu.
	queue []*execution
	// running is the execution on the kernel, if any. Guarded by mu.
	running *execution
	// execs holds queued, running and kept finished executions by ID. Guarded by mu.
	execs map[string]*execution
	// kept lists the IDs of finished executions in execs, oldest first. Guarded by mu.
	kept []string
	// closed is set by close; no execution is queued after it. Guarded by mu.
	closed bool
}

// newKernelSup returns a supervisor for a's kernel; start runs it.
func (a *Agent) newKernelSup(logs *ring) *kernelSup {
	argv := a.kernelArgv
	if argv == nil {
		argv = pythonKernelArgv
	}
	log := a.log.With("kernel", a.cfg.Kernel)
	preload := a.cfg.KernelPreload
	if preload != "" {
		if _, err := os.Stat(preload); err != nil {
			log.Warn("the kernel starts without its preload library", "err", err)
			preload = ""
		}
	}
	return &kernelSup{
		a:            a,
		log:          log,
		logs:         logs,
		dir:          a.cfg.KernelDir,
		argv:         argv,
		preload:      preload,
		grace:        interruptGrace,
		startTimeout: kernelStartTimeout,
		maxDisplay:   cmp.Or(a.kernelMaxDisplay, agentapi.MaxDisplayBytes),
		restartc:     make(chan chan error),
		wake:         make(chan struct{}, 1),
		stop:         make(chan struct{}),
		done:         make(chan struct{}),
		info:         agentapi.KernelInfo{State: "starting"},
		execs:        make(map[string]*execution),
	}
}

func (s *kernelSup) start() { go s.run() }

// close stops run, which kills the kernel and fails what is queued, and waits for it.
func (s *kernelSup) close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	close(s.stop)
	<-s.done
}

func (s *kernelSup) run() {
	defer close(s.done)
	backoff := time.Second
	for {
		if s.k == nil {
			if err := s.startKernel(); err != nil {
				s.log.Error("cannot start the kernel", "err", err)
				s.failQueued(errkind.New(errkind.Unavailable, "the kernel failed to start: %v", err))
				select { // the executions that asked for this start have been answered
				case <-s.wake:
				default:
				}
				t := time.NewTimer(backoff)
				select {
				case <-s.stop:
					t.Stop()
					s.failQueued(errkind.New(errkind.Unavailable, "the agent is shutting down"))
					return
				case reply := <-s.restartc:
					reply <- err
				case <-s.wake:
				case <-t.C:
				}
				t.Stop()
				backoff = min(2*backoff, maxStartBackoff)
				continue
			}
			backoff = time.Second
		}
		if e := s.next(); e != nil {
			s.execute(e)
			continue
		}
		select {
		case <-s.stop:
			s.stopKernel()
			s.failQueued(errkind.New(errkind.Unavailable, "the agent is shutting down"))
			return
		case <-s.k.exited:
			s.log.Warn("the kernel died while idle: restarting it", "status", s.k.status())
			s.replaced(true)
		case <-s.k.client.Broken():
			s.log.Warn("lost the connection to the kernel: restarting it", "err", s.k.client.Err())
			s.replaced(true)
		case reply := <-s.restartc:
			s.replaced(false)
			reply <- s.startKernel()
		case <-s.wake:
		}
	}
}

// replaced kills the current kernel (if it still runs) and counts a restart;
// unreported marks that no execution has told its client yet.
func (s *kernelSup) replaced(unreported bool) {
	s.k.kill()
	s.k = nil
	s.mu.Lock()
	s.info.Restarts++
	s.pid = 0
	if unreported {
		s.unreported = true
	}
	s.mu.Unlock()
}

// stopKernel asks the kernel to shut down, briefly, then kills it.
func (s *kernelSup) stopKernel() {
	if s.k == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	if s.k.client.Shutdown(ctx, false) == nil {
		select {
		case <-s.k.exited:
		case <-ctx.Done():
		}
	}
	cancel()
	s.k.kill()
	s.k = nil
	s.mu.Lock()
	s.info.State, s.pid = "dead", 0
	s.mu.Unlock()
}

// startAttempts is how often startKernel tries a kernel that exits while it starts: it
// usually means that one of the ports picked for it was taken before it bound it.
const startAttempts = 3

// startKernel starts a kernel and waits until it answers kernel_info_request, trying
// again with fresh ports when the kernel exits during its start.
func (s *kernelSup) startKernel() error {
	var err error
	for range startAttempts {
		var exited bool
		if exited, err = s.startKernelOnce(); err == nil || !exited {
			return err
		}
		select {
		case <-s.stop:
			return err
		default:
		}
	}
	return err
}

// startKernelOnce makes one attempt of startKernel, and reports whether the kernel
// exited during it.
func (s *kernelSup) startKernelOnce() (bool, error) {
	s.mu.Lock()
	s.info.State = "starting"
	s.mu.Unlock()
	k, err := s.spawn()
	if err != nil {
		s.setState("dead")
		return false, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.startTimeout)
	defer cancel()
	watched := make(chan struct{})
	stopWatch := make(chan struct{})
	go func() {
		defer close(watched)
		select {
		case <-k.exited:
		case <-s.stop:
		case <-stopWatch:
			return
		}
		cancel()
	}()
	defer func() { close(stopWatch); <-watched }()

	ki, version, err := k.connect(ctx)
	if err != nil {
		st := k.status() // before kill, which makes it "was killed by SIGKILL"
		k.kill()
		s.setState("dead")
		if st != "" {
			err = fmt.Errorf("%w (the kernel %s; its last output: %q)", err, st, tail(s.logs.tail(512), 512))
		}
		return st != "", err
	}
	s.k = k
	s.mu.Lock()
	s.pid = k.pid
	s.info.State = "idle"
	s.info.Name, s.info.Version = "ipykernel", version
	if version == "" {
		s.info.Name, s.info.Version = clip(ki.Implementation, 64), clip(ki.ImplementationVersion, 64)
	}
	s.info.Language, s.info.LanguageVersion = clip(ki.LanguageInfo.Name, 64), clip(ki.LanguageInfo.Version, 64)
	s.info.Banner = clip(ki.Banner, 4096)
	s.mu.Unlock()
	s.log.Info("kernel ready", "pid", k.pid, "version", version)
	return false, nil
}

func (s *kernelSup) setState(st string) {
	s.mu.Lock()
	s.info.State = st
	s.mu.Unlock()
}

// kernelInfo returns the kernel's state.
func (s *kernelSup) kernelInfo() agentapi.KernelInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.info
}

// interrupt sends SIGINT to the kernel's process group (ipykernel raises
// KeyboardInterrupt in the running code).
func (s *kernelSup) interrupt() {
	s.mu.Lock()
	pid := s.pid
	s.mu.Unlock()
	if pid != 0 {
		s.a.reaper.signalGroup(pid, unix.SIGINT)
	}
}

// restart replaces the kernel, aborting a running execution, and waits for the new one.
func (s *kernelSup) restart(ctx context.Context) error {
	reply := make(chan error, 1)
	select {
	case s.restartc <- reply:
	case <-s.done:
		return errkind.New(errkind.Unavailable, "the agent is shutting down")
	case <-ctx.Done():
		return errkind.Wrap(errkind.Timeout, fmt.Errorf("restarting the kernel: %w", ctx.Err()))
	}
	select {
	case err := <-reply:
		if err != nil {
			return errkind.New(errkind.Unavailable, "restarting the kernel: %v", err)
		}
		return nil
	case <-ctx.Done():
		return errkind.Wrap(errkind.Timeout, fmt.Errorf("restarting the kernel: %w", ctx.Err()))
	}
}

// kernelProc is one kernel process and the client connected to it.
type kernelProc struct {
	sup      *kernelSup
	pid      int
	connFile string
	info     jupyter.ConnectionInfo
	client   *jupyter.Client // nil until connect succeeds

	console    *os.File
	exited     chan struct{} // closed once the exit status is recorded
	abandon    chan struct{} // closed by kill: stop waiting for an exit
	waiterDone chan struct{}
	readerDone chan struct{}

	mu sync.Mutex
	// ws is the exit status; valid once exited is closed. Guarded by mu.
	ws unix.WaitStatus
}

// spawn writes a connection file and starts the kernel process as the user.
func (s *kernelSup) spawn() (*kernelProc, error) {
	a := s.a
	if err := s.ensureDir(); err != nil {
		return nil, err
	}
	// Unix sockets in the kernel directory, named for this kernel: unlike TCP ports, no
	// other process can take them between choosing and binding.
	id := jupyter.NewID()
	info, err := jupyter.NewIPCConnectionInfo(filepath.Join(s.dir, "k-"+id[:8]))
	if err != nil {
		return nil, err
	}
	info.KernelName = a.cfg.Kernel
	connFile := filepath.Join(s.dir, "kernel-"+id+".json")
	if err := info.WriteFile(connFile, a.switchUser, a.cfg.UID, a.cfg.GID); err != nil {
		return nil, err
	}
	env := mergeEnv(a.env[asUser], kernelEnv)
	if s.preload != "" {
		env = withPreload(env, s.preload)
	}
	pid, done, console, err := a.spawnConsole(s.argv(connFile), env, a.cfg.DataDir, a.cred)
	if err != nil {
		os.Remove(connFile)
		return nil, err
	}
	k := &kernelProc{
		sup: s, pid: pid, connFile: connFile, info: info, console: console,
		exited: make(chan struct{}), abandon: make(chan struct{}),
		waiterDone: make(chan struct{}), readerDone: make(chan struct{}),
	}
	go k.wait(done)
	go k.read()
	return k, nil
}

// ensureDir creates the connection-file directory: 0700, owned by the user.
func (s *kernelSup) ensureDir() error {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return fmt.Errorf("creating the kernel directory: %w", err)
	}
	fi, err := os.Lstat(s.dir)
	if err != nil {
		return fmt.Errorf("creating the kernel directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("creating the kernel directory: %s is a %v", s.dir, fi.Mode().Type())
	}
	if s.a.switchUser {
		if err := os.Lchown(s.dir, s.a.cfg.UID, s.a.cfg.GID); err != nil {
			return fmt.Errorf("handing the kernel directory to the user: %w", err)
		}
	}
	if err := os.Chmod(s.dir, 0o700); err != nil {
		return fmt.Errorf("restricting the kernel directory: %w", err)
	}
	return nil
}

func (k *kernelProc) wait(done <-chan unix.WaitStatus) {
	defer close(k.waiterDone)
	select {
	case ws := <-done:
		k.mu.Lock()
		k.ws = ws
		k.mu.Unlock()
		close(k.exited)
	case <-k.abandon:
	}
}

func (k *kernelProc) read() {
	defer close(k.readerDone)
	copyConsole(k.console, k.sup.logs)
}

// status describes how the process ended, "" while it runs.
func (k *kernelProc) status() string {
	select {
	case <-k.exited:
	default:
		return ""
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	code, sig := exitStatus(k.ws)
	if sig != "" {
		return "was killed by " + sig
	}
	return fmt.Sprintf("exited with status %d", code)
}

// versionExpr asks ipykernel for its own version (kernel_info_reply carries IPython's).
const versionExpr = "__import__('ipykernel').__version__"

// connect dials the kernel and waits until it is ready. It returns its kernel info and
// the ipykernel version ("" if the kernel would not tell).
func (k *kernelProc) connect(ctx context.Context) (jupyter.KernelInfo, string, error) {
	c, err := jupyter.Dial(ctx, k.info, jupyter.Options{})
	if err != nil {
		return jupyter.KernelInfo{}, "", err
	}
	ki, err := c.WaitReady(ctx)
	if err != nil {
		c.Close()
		return jupyter.KernelInfo{}, "", err
	}
	k.client = c
	version := ""
	ex, err := c.Execute(jupyter.ExecuteRequest{Silent: true, UserExpressions: map[string]string{"v": versionExpr}}, nil)
	if err == nil {
		select {
		case <-ex.Done():
			if r, err := ex.Reply(); err == nil {
				version = pyStr(r.UserExpressions["v"])
			}
		case <-ctx.Done():
			ex.Release()
			return jupyter.KernelInfo{}, "", ctx.Err()
		}
	}
	return ki, version, nil
}

// kill kills the kernel's process group, waits for the leader's exit, closes the client
// and stops k's goroutines. It is idempotent.
func (k *kernelProc) kill() {
	select {
	case <-k.abandon:
		return
	default:
	}
	k.sup.a.reaper.signalGroup(k.pid, unix.SIGKILL)
	t := time.NewTimer(killWait)
	select {
	case <-k.exited:
	case <-t.C:
		k.sup.log.Error("kernel still running after SIGKILL", "pid", k.pid, "wait", killWait)
	}
	t.Stop()
	close(k.abandon)
	<-k.waiterDone
	if k.client != nil {
		k.client.Close()
	}
	// Children the user left may hold the console open: take what is buffered only
	// (copyConsole).
	_ = k.console.SetReadDeadline(time.Now().Add(drainTimeout))
	<-k.readerDone
	// The kernel removes its sockets when it exits cleanly; a killed one leaves them.
	files := []string{k.connFile}
	for _, p := range []int{k.info.ShellPort, k.info.IOPubPort, k.info.StdinPort, k.info.ControlPort, k.info.HBPort} {
		if network, addr := k.info.Endpoint(p); network == "unix" {
			files = append(files, addr)
		}
	}
	for _, f := range files {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			k.sup.log.Warn("removing a kernel file", "err", err)
		}
	}
}

// pyStr returns the str value of a user expression whose text/plain is a Python str
// repr of plain ASCII without quotes or backslashes (as versionExpr yields), or "".
func pyStr(u jupyter.UserExpression) string {
	s, ok := textPlain(u.Data)
	if u.Status != "ok" || !ok || len(s) < 2 || s[0] != '\'' || s[len(s)-1] != '\'' {
		return ""
	}
	s = s[1 : len(s)-1]
	if strings.ContainsAny(s, `'"\`) || len(s) > 64 {
		return ""
	}
	return s
}

// clip cuts s to at most n bytes.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
