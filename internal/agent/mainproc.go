package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
)

// mainProc supervises the sandbox's main command: started once by Serve as the user (or
// Config.MainUser), in its own process group, with its console (stdout and stderr
// together) kept in a ring. It is not restarted when it exits; the host sees that in the
// health report.
type mainProc struct {
	reaper *reaper
	log    *slog.Logger
	logs   *ring
	pid    int // 0 when it could not be started

	console    *os.File      // our end of the console pipe; nil when not started
	exited     chan struct{} // closed once the exit status is recorded
	abandon    chan struct{} // closed by close: stop waiting for an exit
	waiterDone chan struct{}
	readerDone chan struct{}

	mu sync.Mutex
	// code and sig describe how it ended; valid once exited is closed. Guarded by mu.
	code int
	sig  string
}

// startMain starts cfg.Command. A command that cannot be started is reported as exited
// (127 when not found, 126 when not executable, as a shell does), with the reason in its
// log, so the host can tell what went wrong from the health report and the logs.
func (a *Agent) startMain() *mainProc {
	m := &mainProc{
		reaper:     a.reaper,
		log:        a.log.With("main_command", a.cfg.Command[0]),
		logs:       newRing(agentapi.LogBufferSize),
		exited:     make(chan struct{}),
		abandon:    make(chan struct{}),
		waiterDone: make(chan struct{}),
		readerDone: make(chan struct{}),
	}
	env, cred := a.mainIdentity()
	pid, done, console, err := a.spawnConsole(a.cfg.Command, env, a.cfg.WorkDir, cred)
	if err != nil {
		code := 126
		if errkind.Is(err, errkind.NotFound) {
			code = 127
		}
		fmt.Fprintf(m.logs, "sessiond-agent: starting the main command: %v\n", err)
		m.log.Error("cannot start the main command", "err", err)
		m.code = code
		close(m.exited)
		close(m.waiterDone)
		close(m.readerDone)
		return m
	}
	m.pid, m.console = pid, console
	m.log.Info("main command started", "pid", pid)
	go m.wait(done)
	go m.read()
	return m
}

// mainIdentity returns the environment and the credential the main command starts with:
// the user's, or those of Config.MainUser (with root's HOME and USER for uid 0). Without
// switchUser it runs as the agent's own user, like every command.
func (a *Agent) mainIdentity() ([]string, *syscall.Credential) {
	u := a.cfg.MainUser
	if u == nil || !a.switchUser {
		return a.env[asUser], a.cred
	}
	env := a.env[asUser]
	if u.UID == 0 {
		env = a.env[asRoot]
	}
	return env, &syscall.Credential{Uid: uint32(u.UID), Gid: uint32(u.GID), Groups: []uint32{uint32(u.GID)}}
}

// spawnConsole starts argv as cred (nil: the agent's own identity), in its own process
// group and in dir, with env, its stdin on /dev/null and its stdout and stderr together on
// a pipe: its console, whose read end it returns. argv[0] is looked up in env's PATH. The
// main command and the kernel are started this way.
func (a *Agent) spawnConsole(argv, env []string, dir string, cred *syscall.Credential) (int, <-chan unix.WaitStatus, *os.File, error) {
	path, err := lookPath(argv[0], getenv(env, "PATH"))
	if err != nil {
		return 0, nil, nil, err
	}
	p, err := newPipe(true)
	if err != nil {
		return 0, nil, nil, err
	}
	stdin := ^uintptr(0) // closed, if /dev/null cannot be had
	if null, err := os.Open(os.DevNull); err == nil {
		defer null.Close()
		stdin = null.Fd()
	}
	attr := &syscall.ProcAttr{
		Dir:   dir,
		Env:   env,
		Files: []uintptr{stdin, uintptr(p.theirs), uintptr(p.theirs)},
		Sys:   &syscall.SysProcAttr{Setpgid: true, Credential: cred, Pdeathsig: syscall.SIGKILL},
	}
	pid, done, err := a.reaper.start(path, argv, attr)
	unix.Close(p.theirs)
	if err != nil {
		p.ours.Close()
		return 0, nil, nil, startError(&execSpec{path: path, argv: argv, dir: dir}, err)
	}
	return pid, done, p.ours, nil
}

// wait records the exit status, unless Serve gives up on the process first.
func (m *mainProc) wait(done <-chan unix.WaitStatus) {
	defer close(m.waiterDone)
	select {
	case ws := <-done:
		code, sig := exitStatus(ws)
		m.mu.Lock()
		m.code, m.sig = code, sig
		m.mu.Unlock()
		close(m.exited)
		m.log.Info("main command exited", "code", code, "signal", sig)
	case <-m.abandon:
	}
}

// read copies the console into the ring until every writer is gone or close cuts it off.
func (m *mainProc) read() {
	defer close(m.readerDone)
	copyConsole(m.console, m.logs)
}

// copyConsole copies a process's console into logs until every writer is gone, or until
// its read deadline, and closes it. At the deadline it still takes what the pipe holds,
// however late this goroutine runs: only what is written after it is lost.
func copyConsole(console *os.File, logs *ring) {
	defer console.Close()
	bp := chunks.Get().(*[]byte)
	defer chunks.Put(bp)
	keep := func(p []byte) { logs.Write(p) }
	for {
		n, err := console.Read(*bp)
		keep((*bp)[:n])
		if errors.Is(err, os.ErrDeadlineExceeded) {
			readBuffered(console, *bp, keep)
		}
		if err != nil {
			return
		}
	}
}

func (m *mainProc) state() agentapi.ProcessState {
	st := agentapi.ProcessState{PID: m.pid}
	select {
	case <-m.exited:
	default:
		st.Running = true
		return st
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	code := m.code
	st.ExitCode, st.Signal = &code, m.sig
	return st
}

// signal forwards sig to the main process's group, if the main process still runs.
func (m *mainProc) signal(sig syscall.Signal) {
	if m.pid != 0 && m.reaper.signalGroup(m.pid, sig) {
		m.log.Info("forwarded a signal to the main command", "signal", unix.SignalName(sig))
	}
}

// stop asks the main process's group to end with SIGTERM and, if the leader has not exited
// within grace, kills the group.
func (m *mainProc) stop(grace time.Duration) {
	if m.pid == 0 || !m.reaper.signalGroup(m.pid, unix.SIGTERM) {
		return
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-m.exited:
		return
	case <-t.C:
	}
	m.log.Warn("main command still running after SIGTERM: killing it", "grace", grace)
	m.reaper.signalGroup(m.pid, unix.SIGKILL)
	t.Reset(killWait)
	select {
	case <-m.exited:
	case <-t.C:
		m.log.Error("main command still running after SIGKILL", "wait", killWait)
	}
}

// close stops the goroutines of m: the exit waiter at once, the console reader after
// draining what is buffered. Call it after stop.
func (m *mainProc) close() {
	close(m.abandon)
	<-m.waiterDone
	if m.console != nil {
		_ = m.console.SetReadDeadline(time.Now().Add(drainTimeout))
	}
	<-m.readerDone
}
