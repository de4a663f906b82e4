package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
)

const (
	// drainTimeout is how long output may stay quiet, after a command's leader has
	// exited, before the agent stops waiting for the end of it: background children the
	// command left may hold the pipes open for ever, and are not killed. What the pipes
	// hold when it gives up is still taken (readBuffered), so output written before the
	// exit is never lost however late the reader runs; only output a background child
	// writes after a quiet spell is.
	drainTimeout = 100 * time.Millisecond
	// maxPipeDrain bounds readBuffered: a full pipe at the largest size an unprivileged
	// process may set (fs.pipe-max-size, 1 MiB by default), so a writer that keeps up
	// with the reader cannot hold it.
	maxPipeDrain = 1 << 20
	// execBodyTimeout bounds reading an exec request body (at most MaxExecRequest bytes
	// from the host, over a local socket).
	execBodyTimeout = time.Minute
	// responseSlack is added to a command's timeout to bound writing its result.
	responseSlack = 30 * time.Second
)

// execSpec is a validated exec request.
type execSpec struct {
	path    string // executable, resolved in PATH
	argv    []string
	env     []string
	dir     string
	stdin   string
	cred    *syscall.Credential // nil: run as the agent's own user
	timeout time.Duration
	limit   int // per output stream
}

// runLimits describes a request's timeout and output-limit fields: exec's (timeoutMs,
// outputLimit) and a kernel execution's (timeoutSeconds, streamLimit).
type runLimits struct {
	timeoutField string
	unit         time.Duration // of the timeout field
	defTimeout   time.Duration
	limitField   string
	defLimit     int
	maxLimit     int
}

var (
	execLimits = runLimits{timeoutField: "timeoutMs", unit: time.Millisecond, defTimeout: agentapi.DefaultExecTimeout,
		limitField: "outputLimit", defLimit: agentapi.DefaultOutputLimit, maxLimit: agentapi.MaxOutputLimit}
	executeLimits = runLimits{timeoutField: "timeoutSeconds", unit: time.Second, defTimeout: agentapi.DefaultExecuteTimeout * time.Second,
		limitField: "streamLimit", defLimit: agentapi.DefaultStreamLimit, maxLimit: agentapi.MaxStreamLimit}
)

// resolve returns the timeout and per-stream output limit a request asks for. A timeout
// of 0 takes the default and one above agentapi.MaxExecTimeout is cut to it; a limit of
// 0 takes the default and one above the maximum is Invalid, as is a negative value of
// either.
func (l runLimits) resolve(timeout int64, limit int) (time.Duration, int, error) {
	d := l.defTimeout
	switch {
	case timeout < 0:
		return 0, 0, errkind.New(errkind.Invalid, "negative %s %d", l.timeoutField, timeout)
	case timeout > int64(agentapi.MaxExecTimeout/l.unit):
		d = agentapi.MaxExecTimeout
	case timeout > 0:
		d = time.Duration(timeout) * l.unit
	}
	n := l.defLimit
	switch {
	case limit < 0:
		return 0, 0, errkind.New(errkind.Invalid, "negative %s %d", l.limitField, limit)
	case limit > l.maxLimit:
		return 0, 0, errkind.New(errkind.Invalid, "%s %d is above the maximum of %d", l.limitField, limit, l.maxLimit)
	case limit > 0:
		n = limit
	}
	return d, n, nil
}

func (a *Agent) handleExec(w http.ResponseWriter, r *http.Request) error {
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(execBodyTimeout))
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, agentapi.MaxExecRequest))
	if err != nil {
		return bodyError("reading exec request", err)
	}
	// The body is consumed: net/http now watches the connection to cancel r.Context()
	// if the client goes away, and that watch must not time out while the command runs.
	_ = rc.SetReadDeadline(time.Time{})
	var req agentapi.ExecRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return errkind.New(errkind.Invalid, "decoding exec request: %v", err)
	}
	s, err := a.execSpec(&req)
	if err != nil {
		return err
	}
	_ = rc.SetWriteDeadline(time.Now().Add(s.timeout + killWait + drainTimeout + responseSlack))
	res, err := a.run(r.Context(), s)
	if err != nil {
		return err
	}
	if r.Context().Err() != nil {
		// Killed because the client went away or the agent is stopping: what ran was
		// cut short by us, not by the command, so no result stands for it.
		return errkind.New(errkind.Unavailable, "the command was killed: the agent is shutting down")
	}
	return writeJSON(w, http.StatusOK, res)
}

// execSpec validates req and resolves what it runs.
func (a *Agent) execSpec(req *agentapi.ExecRequest) (*execSpec, error) {
	s := &execSpec{dir: a.cfg.DataDir, stdin: req.Stdin}
	switch {
	case len(req.Argv) > 0 && req.Shell != "":
		return nil, errkind.New(errkind.Invalid, "exec request sets both argv and shell")
	case len(req.Argv) == 0 && req.Shell == "":
		return nil, errkind.New(errkind.Invalid, "exec request sets neither argv nor shell")
	case req.UseBash && req.Shell == "":
		return nil, errkind.New(errkind.Invalid, "useBash applies only to shell")
	case len(req.Argv) > 0 && req.Argv[0] == "":
		return nil, errkind.New(errkind.Invalid, "argv[0] is empty")
	case strings.IndexByte(req.Shell, 0) >= 0:
		return nil, errkind.New(errkind.Invalid, "shell contains a NUL byte")
	case len(req.Stdin) > agentapi.MaxStdin:
		return nil, errkind.New(errkind.LimitExceeded, "stdin of %d bytes is above the limit of %d", len(req.Stdin), agentapi.MaxStdin)
	}
	for i, arg := range req.Argv {
		if strings.IndexByte(arg, 0) >= 0 {
			return nil, errkind.New(errkind.Invalid, "argv[%d] contains a NUL byte", i)
		}
	}
	if err := checkEnv(req.Env); err != nil {
		return nil, err
	}
	if req.Cwd != "" {
		if !filepath.IsAbs(req.Cwd) || strings.IndexByte(req.Cwd, 0) >= 0 {
			return nil, errkind.New(errkind.Invalid, "cwd %q is not an absolute path", req.Cwd)
		}
		s.dir = filepath.Clean(req.Cwd)
	}
	var err error
	if s.timeout, s.limit, err = execLimits.resolve(req.TimeoutMS, req.OutputLimit); err != nil {
		return nil, err
	}
	who := asUser
	if req.AsRoot {
		who = asRoot
	} else {
		s.cred = a.cred
	}
	s.env = mergeEnv(a.env[who], req.Env)
	if req.Shell != "" {
		s.path = "/bin/sh"
		if req.UseBash {
			s.path = "/bin/bash"
		}
		s.argv = []string{s.path, "-c", req.Shell}
		return s, nil
	}
	p, err := lookPath(req.Argv[0], getenv(s.env, "PATH"))
	if err != nil {
		return nil, err
	}
	s.path, s.argv = p, req.Argv
	return s, nil
}

// run starts s in a new process group and waits for it to exit, for its timeout, or for
// ctx; on the latter two it kills the group. It returns an error only when the command
// could not be started or did not die.
func (a *Agent) run(ctx context.Context, s *execSpec) (agentapi.ExecResult, error) {
	var res agentapi.ExecResult
	if err := ctx.Err(); err != nil {
		return res, errkind.Wrap(errkind.Unavailable, fmt.Errorf("exec request abandoned: %w", err))
	}
	var p [3]pipe // stdin, stdout, stderr
	for i := range p {
		var err error
		if p[i], err = newPipe(i != 0); err != nil {
			closePipes(p[:i])
			return res, err
		}
	}
	attr := &syscall.ProcAttr{
		Dir:   s.dir,
		Env:   s.env,
		Files: []uintptr{uintptr(p[0].theirs), uintptr(p[1].theirs), uintptr(p[2].theirs)},
		// Pdeathsig: outside a pid namespace (tests, the Fake runtime) nothing else ends
		// the agent's children when it dies.
		Sys: &syscall.SysProcAttr{Setpgid: true, Credential: s.cred, Pdeathsig: syscall.SIGKILL},
	}
	start := time.Now()
	pid, done, err := a.reaper.start(s.path, s.argv, attr)
	for i := range p {
		unix.Close(p[i].theirs)
	}
	if err != nil {
		for i := range p {
			p[i].ours.Close()
		}
		return res, startError(s, err)
	}

	stdin, stdout, stderr := p[0].ours, newCapture(p[1].ours, s.limit), newCapture(p[2].ours, s.limit)
	var wg sync.WaitGroup
	wg.Go(stdout.run)
	wg.Go(stderr.run)
	if s.stdin != "" {
		wg.Go(func() {
			// An error means the command stopped reading: what it read is what it gets.
			_, _ = io.WriteString(stdin, s.stdin)
			stdin.Close()
		})
	} else {
		stdin.Close()
	}

	timer := time.NewTimer(s.timeout)
	defer timer.Stop()
	var ws unix.WaitStatus
	select {
	case ws = <-done:
	case <-timer.C:
		res.TimedOut = true
		ws, err = a.kill(pid, done)
	case <-ctx.Done():
		ws, err = a.kill(pid, done)
	}
	res.DurationMS = time.Since(start).Milliseconds()

	// The leader is gone: stop feeding stdin, and read the output to its end, unless
	// background children hold the pipes open (see drain).
	_ = stdin.SetWriteDeadline(time.Now())
	drain(ctx, drainTimeout, start.Add(s.timeout), stdout, stderr)
	wg.Wait()
	if err != nil {
		return res, err
	}
	res.Stdout, res.StdoutTruncated = stdout.text(), stdout.truncated
	res.Stderr, res.StderrTruncated = stderr.text(), stderr.truncated
	res.ExitCode, res.Signal = exitStatus(ws)
	return res, nil
}

// kill SIGKILLs the process group led by pid and waits for pid's exit status.
func (a *Agent) kill(pid int, done <-chan unix.WaitStatus) (unix.WaitStatus, error) {
	a.reaper.signalGroup(pid, unix.SIGKILL)
	t := time.NewTimer(killWait)
	defer t.Stop()
	select {
	case ws := <-done:
		return ws, nil
	case <-t.C:
		return 0, fmt.Errorf("killing process %d: still running %v after SIGKILL", pid, killWait)
	}
}

// exitStatus returns the exit code and, for a death by signal, -1 and the signal's name.
func exitStatus(ws unix.WaitStatus) (int, string) {
	if !ws.Signaled() {
		return ws.ExitStatus(), ""
	}
	name := unix.SignalName(ws.Signal())
	if name == "" {
		name = fmt.Sprintf("SIG%d", int(ws.Signal()))
	}
	return -1, name
}

// startError classifies a failure of fork/exec. The child reports one errno for its
// whole set-up (chdir, set*id, exec), so an ENOENT is traced back to the directory or
// the executable here, after the fact and only on this slow path.
func startError(s *execSpec, err error) error {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return fmt.Errorf("starting %q: %w", s.argv[0], err)
	}
	kind := errkind.Internal
	switch errno {
	case unix.ENOENT:
		if _, serr := os.Stat(s.dir); serr != nil {
			return errkind.New(errkind.NotFound, "starting %q: working directory %q does not exist", s.argv[0], s.dir)
		}
		kind = errkind.NotFound
	case unix.EACCES, unix.ENOEXEC, unix.ENOTDIR, unix.EISDIR, unix.ENAMETOOLONG, unix.ELOOP, unix.ETXTBSY:
		kind = errkind.Invalid
	case unix.E2BIG:
		kind = errkind.LimitExceeded
	}
	return &errkind.Error{Kind: kind, Msg: fmt.Sprintf("starting %q in %q: %v", s.path, s.dir, errno), Public: true, Err: err}
}

// pipe is a pipe between the agent and a child. The agent's end is a pollable *os.File,
// so reads and writes honour deadlines; the child's end is a plain blocking descriptor,
// closed once the child has it. Both are close-on-exec until ForkExec places the child's.
type pipe struct {
	ours   *os.File
	theirs int
}

// newPipe creates a pipe; the child writes to it when childWrites, else reads from it.
func newPipe(childWrites bool) (pipe, error) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
		return pipe{}, fmt.Errorf("creating a pipe: %w", err)
	}
	ours, theirs := fds[1], fds[0]
	if childWrites {
		ours, theirs = fds[0], fds[1]
	}
	if err := unix.SetNonblock(ours, true); err != nil {
		unix.Close(ours)
		unix.Close(theirs)
		return pipe{}, fmt.Errorf("creating a pipe: %w", err)
	}
	return pipe{ours: os.NewFile(uintptr(ours), "pipe"), theirs: theirs}, nil
}

func closePipes(ps []pipe) {
	for _, p := range ps {
		p.ours.Close()
		unix.Close(p.theirs)
	}
}

// chunks are read buffers shared by all captures.
var chunks = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// drain waits, after a command's leader has exited, for its captures to reach the end
// of their pipes. It stops them early when background children hold a pipe open: once
// the output has been quiet for quiet (drainTimeout), or, while output keeps coming, at
// limit (the command's own deadline; never earlier than quiet from now), or when ctx
// ends. A stopped capture still takes what its pipe holds.
func drain(ctx context.Context, quiet time.Duration, limit time.Time, cs ...*capture) {
	if earliest := time.Now().Add(quiet); limit.Before(earliest) {
		limit = earliest
	}
	t := time.NewTimer(quiet)
	defer t.Stop()
	seen := received(cs)
	for _, c := range cs {
		for waiting := true; waiting; {
			select {
			case <-c.done:
				waiting = false
			case <-t.C:
				n := received(cs)
				left := time.Until(limit)
				if n == seen || left <= 0 {
					stopCaptures(cs)
					return
				}
				seen = n
				t.Reset(min(quiet, left))
			case <-ctx.Done():
				stopCaptures(cs)
				return
			}
		}
	}
}

// received returns how many bytes cs have read altogether.
func received(cs []*capture) int64 {
	var n int64
	for _, c := range cs {
		n += c.received.Load()
	}
	return n
}

// stopCaptures makes each capture take what its pipe holds and return.
func stopCaptures(cs []*capture) {
	for _, c := range cs {
		_ = c.f.SetReadDeadline(time.Now()) // fails only if c is done and f closed
	}
}

// capture reads f to its end (or until drain stops it), keeping the first limit bytes
// and discarding the rest, so a command's output never costs more than limit bytes.
type capture struct {
	f     *os.File
	limit int
	// done is closed when run returns.
	done chan struct{}
	// received counts the bytes read, kept or not; written by run, read by drain.
	received atomic.Int64
	// buf and truncated belong to run until done is closed.
	buf       []byte
	truncated bool // bytes were discarded
}

func newCapture(f *os.File, limit int) *capture {
	return &capture{f: f, limit: limit, done: make(chan struct{})}
}

func (c *capture) run() {
	defer close(c.done)
	defer c.f.Close()
	bp := chunks.Get().(*[]byte)
	defer chunks.Put(bp)
	for {
		n, err := c.f.Read(*bp)
		c.keep((*bp)[:n])
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// Stopped by drain, perhaps before this goroutine ever ran: the output
			// written so far is still in the pipe.
			readBuffered(c.f, *bp, c.keep)
		}
		if err != nil {
			return // io.EOF, stopped by drain, or a closed file
		}
	}
}

// readBuffered passes to fn what the pipe f holds now, without waiting for more: the
// rest of a console or an output after its reader's deadline, which a background
// writer may keep open. It reads at most maxPipeDrain bytes. f must be nonblocking
// (newPipe); its read deadline is cleared, and nothing may set it again.
func readBuffered(f *os.File, buf []byte, fn func([]byte)) {
	rc, err := f.SyscallConn()
	if err != nil || f.SetReadDeadline(time.Time{}) != nil {
		return
	}
	for total := 0; total < maxPipeDrain; {
		var n int
		var rerr error
		// Returning true tells the poller not to wait: a read that would block ends
		// the loop with EAGAIN.
		if err := rc.Read(func(fd uintptr) bool {
			n, rerr = unix.Read(int(fd), buf[:min(len(buf), maxPipeDrain-total)])
			return true
		}); err != nil || rerr != nil || n <= 0 {
			return
		}
		fn(buf[:n])
		total += n
	}
}

// keep appends what fits under the limit to buf, growing it at most to the limit.
func (c *capture) keep(p []byte) {
	c.received.Add(int64(len(p)))
	if room := c.limit - len(c.buf); len(p) > room {
		p = p[:room]
		c.truncated = true
	}
	if len(p) == 0 {
		return
	}
	if need := len(c.buf) + len(p); need > cap(c.buf) {
		nb := make([]byte, len(c.buf), min(max(2*cap(c.buf), need, 4096), c.limit))
		copy(nb, c.buf)
		c.buf = nb
	}
	c.buf = append(c.buf, p...)
}

// text returns the kept bytes as a string, invalid UTF-8 replaced by U+FFFD.
func (c *capture) text() string {
	if utf8.Valid(c.buf) {
		return string(c.buf)
	}
	return string(bytes.ToValidUTF8(c.buf, []byte("\uFFFD")))
}
