package agent

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// procReaper is the process's one reaper. It is process-wide state on purpose: wait4(-1)
// collects every child of the process, so two reapers would steal each other's exit
// statuses, and Go's os/exec (Cmd.Wait) cannot be used next to one at all. Every Agent
// in the process (one in production, several in tests) shares it; the first Serve starts
// it and the last one to return stops it.
var procReaper reaper

// reaper collects the exit status of every child of the process. Children the agent
// starts are registered, under mu, in the same critical section that forks them, so the
// reaper (which also holds mu) can never collect one before its waiter exists; exit
// statuses of unregistered pids (orphans reparented to the agent) are discarded.
type reaper struct {
	refMu sync.Mutex
	// refs counts the Serves using the reaper. Guarded by refMu.
	refs int
	// stop and done end and await the reaper goroutine. Guarded by refMu.
	stop, done chan struct{}
	// subreaper is set when acquire made the process a child subreaper. Guarded by refMu.
	subreaper bool

	mu sync.Mutex
	// waiters maps the pid of each started, not yet reaped child to where its status
	// goes; nil while the reaper is stopped. Guarded by mu.
	waiters map[int]chan unix.WaitStatus
}

// acquire starts the reaper if it is not running and counts a user.
func (r *reaper) acquire() error {
	r.refMu.Lock()
	defer r.refMu.Unlock()
	if r.refs > 0 {
		r.refs++
		return nil
	}
	if os.Getpid() != 1 {
		// Not init (tests, or an agent run by hand): become the reaper of orphaned
		// descendants anyway, so that double-forked processes are still collected.
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("becoming a child subreaper: %w", err)
		}
		r.subreaper = true
	}
	r.mu.Lock()
	r.waiters = make(map[int]chan unix.WaitStatus)
	r.mu.Unlock()
	// SIGCHLD is subscribed to before any child can be started, so no exit is missed.
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, unix.SIGCHLD)
	r.stop, r.done = make(chan struct{}), make(chan struct{})
	go r.run(sigc, r.stop, r.done)
	r.refs = 1
	return nil
}

// release uncounts a user and stops the reaper after the last one.
func (r *reaper) release() {
	r.refMu.Lock()
	defer r.refMu.Unlock()
	r.refs--
	if r.refs > 0 {
		return
	}
	close(r.stop)
	<-r.done
	r.mu.Lock()
	r.waiters = nil
	r.mu.Unlock()
	if r.subreaper {
		unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
		r.subreaper = false
	}
}

func (r *reaper) run(sigc chan os.Signal, stop, done chan struct{}) {
	defer close(done)
	defer signal.Stop(sigc)
	for {
		// A SIGCHLD that arrives while reap runs is buffered in sigc and causes another
		// pass, so none is lost even though signals coalesce.
		r.reap()
		select {
		case <-sigc:
		case <-stop:
			r.reap()
			return
		}
	}
}

// reap collects every child that has exited and hands each status to its waiter.
func (r *reaper) reap() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG|unix.WALL, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return // ECHILD: no children; 0: none has exited
		}
		if ch, ok := r.waiters[pid]; ok {
			ch <- ws // buffered: never blocks
			delete(r.waiters, pid)
		}
	}
}

var errReaperStopped = errors.New("the agent is not serving")

// start forks and execs a child and returns its pid and a channel that receives its exit
// status once. The caller must not use os/exec, whose Wait would race with the reaper.
func (r *reaper) start(path string, argv []string, attr *syscall.ProcAttr) (int, <-chan unix.WaitStatus, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.waiters == nil {
		return 0, nil, errReaperStopped
	}
	restore := raiseChildOOMScore()
	pid, err := syscall.ForkExec(path, argv, attr)
	restore()
	if err != nil {
		return 0, nil, err
	}
	ch := make(chan unix.WaitStatus, 1)
	r.waiters[pid] = ch
	return pid, ch, nil
}

// signalGroup sends sig to the process group led by pid, if pid has not been reaped yet.
// Checking under mu guarantees that the group id still belongs to that child: a reaped
// leader's pid could be reused. It reports whether the signal was sent.
func (r *reaper) signalGroup(pid int, sig syscall.Signal) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.waiters[pid]; !ok {
		return false
	}
	return unix.Kill(-pid, sig) == nil
}

// oomScoreFile is the process's OOM score adjustment.
const oomScoreFile = "/proc/self/oom_score_adj"

// childOOMScore is the OOM score adjustment children start with: the highest, so that when
// the sandbox runs out of memory the kernel's OOM killer takes user processes before the
// agent (the sandbox's init, whose death ends the session). A fork bomb of small processes
// would otherwise leave the agent, pid 1, the largest process in the memory cgroup.
const childOOMScore = "1000"

// raiseChildOOMScore makes children forked until restore is called start with
// childOOMScore. The agent raises its own value (which needs no privilege) and restores it
// after the fork (lowering a value back to where it was needs none either). The caller
// holds the reaper's lock, so no other fork happens in between. Where /proc is not
// writable the children keep the agent's value.
func raiseChildOOMScore() (restore func()) {
	b, err := os.ReadFile(oomScoreFile)
	if err != nil {
		return func() {}
	}
	old := strings.TrimSpace(string(b))
	if old == childOOMScore {
		return func() {}
	}
	if err := os.WriteFile(oomScoreFile, []byte(childOOMScore), 0); err != nil {
		return func() {}
	}
	return func() {
		if err := os.WriteFile(oomScoreFile, []byte(old), 0); err != nil {
			// Never expected (the kernel lets a process return to a value it had); the
			// agent would be the OOM killer's first choice, so say so loudly.
			fmt.Fprintf(os.Stderr, "sessiond-agent: restoring its OOM score adjustment: %v\n", err)
		}
	}
}
