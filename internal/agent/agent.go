// Package agent is sessiond-agent, the init process of every sandbox. As PID 1 it reaps
// zombies, forwards signals and brings up loopback; it supervises the sandbox's main
// command (a Jupyter kernel, or a custom image's entrypoint) and keeps its console output;
// and it serves the agentapi HTTP API (health, exec, files, logs, tunnels to the sandbox's
// loopback) on a unix socket that only the host can reach.
//
// It is not the host side: the wire contract and the Client live in internal/agentapi, and
// runtimes (internal/sandbox) only start sandboxes and hand out that Client. Everything the
// agent receives from processes inside the sandbox (file names, symlinks, output, exit
// behaviour) is hostile and bounded; the host is its only client and is trusted.
//
// Only cmd/sessiond-agent imports it. It imports the standard library, golang.org/x/sys/unix,
// agentapi, errkind and jupyter (with its pure-Go ZeroMQ), nothing else, so the agent builds as a small static binary. It is
// Linux only.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/loopback"
)

// Identity is a numeric user and group inside the sandbox.
type Identity struct {
	UID, GID int
}

// Config configures an Agent. The zero value serves the production layout.
type Config struct {
	// Socket is the unix socket the API is served on; default
	// agentapi.SocketDir + "/" + agentapi.SocketName.
	Socket string
	// DataDir is the directory the files API serves and the default working directory of
	// exec; default agentapi.DataDir. Serve creates it, owned by the user, if it is missing.
	DataDir string
	// UID and GID are the identity user code runs as and owns its files as. Zero means
	// agentapi.UserUID and agentapi.UserGID: user code never runs as root (only the host
	// may ask for that, per exec, with ExecRequest.AsRoot).
	UID, GID int
	// Home is the user's HOME; default /home/user.
	Home string
	// Command, if not empty, is the sandbox's main process: started by Serve as the user
	// in its own process group, sent the signals the agent receives, and stopped when Serve
	// returns. Its console output is kept for GET /v1/logs.
	Command []string
	// WorkDir is the working directory of Command; default DataDir.
	WorkDir string
	// MainUser, if set, is the identity Command runs as instead of UID:GID: a custom
	// container image's user. 0:0 is the sandbox's root, unprivileged on the host, which
	// keeps the agent's own reduced capability set. Exec and files stay with UID:GID.
	MainUser *Identity
	// Kernel, if not empty, makes this a code-interpreter sandbox: the agent starts the
	// named Jupyter kernel as the user, in DataDir, keeps it running (a kernel that dies
	// is replaced) and serves executions on it (agentapi.PathKernel...). The only kernel
	// is KernelPython3 (ipykernel, run by the python3 in the user's PATH).
	Kernel string
	// KernelPreload, if not empty, is a shared library the kernel process starts with
	// (LD_PRELOAD): sessiond's kernel preload (preload/kernel_preload.c), which answers
	// getpid without a system call. The launcher removes it from the environment that
	// user code sees. If the file does not exist, the kernel starts without it (a warning
	// says so).
	KernelPreload string
	// KernelDir holds the kernel's connection file (with its signing key): created 0700
	// and owned by the user; default /run/sessiond-kernel.
	KernelDir string
	// MemoryLimit, if positive, makes the agent kill the largest process when all
	// processes but itself together hold more resident memory (memguard_linux.go).
	MemoryLimit int64
	// StopGrace is how long the main process and in-flight requests get to finish when
	// Serve stops, before they are killed; default 5s. Open tunnels are closed once the
	// requests have finished, without waiting for their ends.
	StopGrace time.Duration
	// MaxTunnels caps the tunnels (agentapi.PathTunnel) open at once; default
	// DefaultMaxTunnels.
	MaxTunnels int
	// TunnelDialTimeout bounds a tunnel's connect to the sandbox's loopback; default
	// DefaultTunnelDialTimeout.
	TunnelDialTimeout time.Duration
	// Log receives the agent's own diagnostics; nil means text on standard error.
	Log *slog.Logger
}

const (
	defaultHome      = "/home/user"
	defaultStopGrace = 5 * time.Second
	// killWait bounds how long the agent waits for a process to die after SIGKILL. Only a
	// process stuck in the kernel (uninterruptible sleep) takes more than a moment.
	killWait = 5 * time.Second
)

// Agent is the in-sandbox server. Create it with New and run it with Serve, once.
type Agent struct {
	cfg Config
	log *slog.Logger
	// switchUser is true when the agent runs as root, so it can run commands as cfg.UID and
	// chown what it creates. Otherwise (tests) everything runs as the agent's own user.
	switchUser bool
	// maxUpload caps one upload and maxList one listing; the agentapi limits except in
	// tests.
	maxUpload int64
	maxList   int
	reaper    *reaper
	reqs      requests
	tunnels   tunnels
	// kernelArgv, if set (by tests), replaces the kernel command; kernelMaxDisplay, if
	// not 0, replaces agentapi.MaxDisplayBytes.
	kernelArgv       func(connFile string) []string
	kernelMaxDisplay int

	// Set by Serve before it accepts connections, read-only afterwards.
	started     time.Time
	dataDirReal string              // the data dir with symlinks resolved, for checkInside
	env         [2][]string         // base environment of commands: [asUser], [asRoot]
	cred        *syscall.Credential // the user's identity; nil unless switchUser
	main        *mainProc           // nil without a main command
	kernel      *kernelSup          // nil without a kernel
}

// Indexes of Agent.env.
const (
	asUser = 0
	asRoot = 1
)

// New returns an agent for cfg, with defaults filled in. It has no side effects: nothing
// is checked, opened or started until Serve.
func New(cfg Config) *Agent {
	if cfg.Socket == "" {
		cfg.Socket = agentapi.SocketDir + "/" + agentapi.SocketName
	}
	if cfg.DataDir == "" {
		cfg.DataDir = agentapi.DataDir
	}
	if cfg.UID == 0 {
		cfg.UID = agentapi.UserUID
	}
	if cfg.GID == 0 {
		cfg.GID = agentapi.UserGID
	}
	if cfg.Home == "" {
		cfg.Home = defaultHome
	}
	if cfg.WorkDir == "" {
		cfg.WorkDir = cfg.DataDir
	}
	if cfg.StopGrace == 0 {
		cfg.StopGrace = defaultStopGrace
	}
	if cfg.KernelDir == "" {
		cfg.KernelDir = defaultKernelDir
	}
	if cfg.MaxTunnels == 0 {
		cfg.MaxTunnels = DefaultMaxTunnels
	}
	if cfg.TunnelDialTimeout == 0 {
		cfg.TunnelDialTimeout = DefaultTunnelDialTimeout
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return &Agent{
		cfg:        cfg,
		log:        log.With("component", "agent"),
		switchUser: os.Geteuid() == 0,
		maxUpload:  agentapi.MaxUpload,
		maxList:    agentapi.MaxListEntries,
		reaper:     &procReaper,
	}
}

func (a *Agent) validate() error {
	c := a.cfg
	for _, d := range []struct{ name, path string }{{"data dir", c.DataDir}, {"work dir", c.WorkDir}, {"home", c.Home}, {"kernel dir", c.KernelDir}} {
		if !filepath.IsAbs(d.path) || filepath.Clean(d.path) != d.path {
			return fmt.Errorf("invalid config: %s %q is not a clean absolute path", d.name, d.path)
		}
	}
	if c.DataDir == "/" {
		return errors.New("invalid config: data dir cannot be /")
	}
	if c.UID < 0 || c.GID < 0 {
		return fmt.Errorf("invalid config: negative uid %d or gid %d", c.UID, c.GID)
	}
	if u := c.MainUser; u != nil && (u.UID < 0 || u.GID < 0) {
		return fmt.Errorf("invalid config: negative main user %d:%d", u.UID, u.GID)
	}
	if c.StopGrace < 0 {
		return fmt.Errorf("invalid config: negative stop grace %v", c.StopGrace)
	}
	if c.MaxTunnels < 0 || c.TunnelDialTimeout < 0 {
		return fmt.Errorf("invalid config: negative tunnel cap %d or dial timeout %v", c.MaxTunnels, c.TunnelDialTimeout)
	}
	if len(c.Command) > 0 && c.Command[0] == "" {
		return errors.New("invalid config: empty main command")
	}
	if c.Kernel != "" && c.Kernel != KernelPython3 {
		return fmt.Errorf("invalid config: unknown kernel %q (the only kernel is %q)", c.Kernel, KernelPython3)
	}
	return nil
}

// caught are the signals Serve handles. SIGTERM starts a shutdown, which passes SIGTERM on
// to the main process's group; the others are passed on to it at once.
var caught = []os.Signal{unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGUSR1, unix.SIGUSR2, unix.SIGQUIT}

// Serve runs the agent until ctx is done or the process receives SIGTERM, then shuts down:
// it stops accepting requests and gives those in flight and the main process StopGrace to
// finish before killing them, and returns once everything it started has stopped. It
// returns nil after such a shutdown, or the error that kept it from serving. Call it once.
//
// While it runs, Serve reaps every child of the process (as PID 1, or as a child subreaper
// otherwise), catches SIGINT, SIGHUP, SIGUSR1, SIGUSR2 and SIGQUIT and forwards them to the
// main process's group, and, as PID 1, brings the loopback interface up.
func (a *Agent) Serve(ctx context.Context) error {
	if err := a.validate(); err != nil {
		return err
	}
	a.started = time.Now()
	if os.Getpid() == 1 {
		if err := loopback.Up(); err != nil {
			a.log.Warn("cannot bring up the loopback interface", "err", err)
		}
	}
	if err := a.openDataDir(); err != nil {
		return err
	}
	a.env[asUser] = baseEnv(os.Environ(), a.cfg.Home, "user")
	a.env[asRoot] = baseEnv(os.Environ(), "/root", "root")
	if a.switchUser {
		a.cred = &syscall.Credential{Uid: uint32(a.cfg.UID), Gid: uint32(a.cfg.GID), Groups: []uint32{uint32(a.cfg.GID)}}
	} else {
		a.log.Info("not running as root: commands run as the agent's own user", "uid", os.Geteuid())
	}

	// Signals are caught before the socket exists, so a SIGTERM sent once the agent
	// answers always means a shutdown, never the default action.
	sigc := make(chan os.Signal, 8)
	signal.Notify(sigc, caught...)
	defer signal.Stop(sigc)

	if err := a.reaper.acquire(); err != nil {
		return err
	}
	defer a.reaper.release()

	ln, err := a.listen()
	if err != nil {
		return err
	}
	if len(a.cfg.Command) > 0 {
		a.main = a.startMain()
		defer a.main.close()
	}
	if a.cfg.Kernel != "" {
		logs := newRing(agentapi.LogBufferSize)
		if a.main != nil {
			logs = a.main.logs // one console for both
		}
		a.kernel = a.newKernelSup(logs)
		a.kernel.start()
		defer a.kernel.close()
	}

	if a.cfg.MemoryLimit > 0 && os.Getpid() != 1 {
		// Outside its own pid namespace every process on the host would be a candidate.
		a.log.Warn("memory guard off: the agent is not the init of a pid namespace")
	} else if a.cfg.MemoryLimit > 0 {
		gctx, gstop := context.WithCancel(ctx)
		gdone := make(chan struct{})
		go func() { defer close(gdone); a.runMemGuard(gctx, a.cfg.MemoryLimit) }()
		defer func() { gstop(); <-gdone }()
	}

	// hardCtx is the base of every request's context; cancelling it makes in-flight
	// execs kill their commands. It outlives ctx so that requests get a grace period.
	hardCtx, hardStop := context.WithCancel(context.WithoutCancel(ctx))
	defer hardStop()
	srv := &http.Server{
		Handler:           a.routes(),
		ReadHeaderTimeout: 10 * time.Second,
		// No server-wide ReadTimeout: it would also fire on net/http's background read
		// while a long exec runs and cancel the request. Handlers that read a body bound
		// that read themselves (exec, upload).
		ReadTimeout:    0,
		WriteTimeout:   time.Minute, // extended per request by exec and download
		IdleTimeout:    2 * time.Minute,
		MaxHeaderBytes: 64 << 10,
		BaseContext:    func(net.Listener) context.Context { return hardCtx },
		ErrorLog:       slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	a.log.Info("serving", "socket", a.cfg.Socket, "pid", os.Getpid(), "data_dir", a.cfg.DataDir)

	var failed error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case err := <-serveErr:
			failed = fmt.Errorf("serving %s: %w", a.cfg.Socket, err)
			serveErr = nil
			break loop
		case sig := <-sigc:
			if sig == unix.SIGTERM {
				a.log.Info("received SIGTERM: shutting down")
				break loop
			}
			if a.main != nil {
				a.main.signal(sig.(syscall.Signal))
			}
		}
	}
	a.shutdown(srv, hardStop)
	if serveErr != nil {
		if err := <-serveErr; !errors.Is(err, http.ErrServerClosed) && failed == nil {
			failed = fmt.Errorf("serving %s: %w", a.cfg.Socket, err)
		}
	}
	return failed
}

// shutdown stops the server and the main process, each within StopGrace, then kills what
// is left and waits for every request handler to return.
func (a *Agent) shutdown(srv *http.Server, hardStop context.CancelFunc) {
	var wg sync.WaitGroup
	if a.main != nil {
		wg.Go(func() { a.main.stop(a.cfg.StopGrace) })
	}
	ctx, cancel := context.WithTimeout(context.Background(), a.cfg.StopGrace)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		a.log.Warn("requests still running after the grace period: killing them", "err", err)
		srv.Close()
	}
	// The server neither tracks nor waits for hijacked connections: this also ends the
	// tunnels.
	hardStop()
	wctx, wcancel := context.WithTimeout(context.Background(), killWait+time.Second)
	defer wcancel()
	if !a.reqs.closeAndWait(wctx) {
		a.log.Error("request handlers did not return after their commands were killed")
	}
	wg.Wait()
}

// openDataDir resolves the data dir, creating it (owned by the user) if missing.
func (a *Agent) openDataDir() error {
	dir := a.cfg.DataDir
	if err := os.Mkdir(dir, 0o755); err == nil {
		if a.switchUser {
			if err := os.Lchown(dir, a.cfg.UID, a.cfg.GID); err != nil {
				return fmt.Errorf("handing the data dir to the user: %w", err)
			}
		}
	} else if !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("creating the data dir: %w", err)
	}
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return fmt.Errorf("opening the data dir: %w", err)
	}
	a.dataDirReal = real
	return nil
}

// listen creates the socket, replacing a stale one, readable and writable by root only.
func (a *Agent) listen() (net.Listener, error) {
	path := a.cfg.Socket
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("creating the socket directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("listening on %s: a %v that is not a socket is in the way", path, fi.Mode().Type())
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("removing the stale socket: %w", err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	// The socket directory is the host's and closed to the sandbox's user; the mode is a
	// second fence for the moment between bind and chmod.
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("restricting the socket: %w", err)
	}
	return ln, nil
}

// routes is the agent's whole route table.
func (a *Agent) routes() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET "+agentapi.PathHealth, a.handle(a.handleHealth))
	mux.Handle("POST "+agentapi.PathExec, a.handle(a.handleExec))
	mux.Handle("GET "+agentapi.PathFiles, a.handle(a.handleList))
	mux.Handle("DELETE "+agentapi.PathFiles, a.handle(a.handleRemove))
	mux.Handle("GET "+agentapi.PathFilesContent, a.handle(a.handleDownload))
	mux.Handle("PUT "+agentapi.PathFilesContent, a.handle(a.handleUpload))
	mux.Handle("POST "+agentapi.PathFilesMkdir, a.handle(a.handleMkdir))
	if a.kernel != nil {
		mux.Handle("GET "+agentapi.PathKernel, a.handle(a.handleKernelInfo))
		mux.Handle("POST "+agentapi.PathKernelExecutions, a.handle(a.handleExecute))
		mux.Handle("GET "+agentapi.PathKernelExecutionPrefix+"{id}", a.handle(a.handleGetExecution))
		mux.Handle("POST "+agentapi.PathKernelInterrupt, a.handle(a.handleInterrupt))
		mux.Handle("POST "+agentapi.PathKernelRestart, a.handle(a.handleRestart))
	}
	mux.Handle("GET "+agentapi.PathLogs, a.handle(a.handleLogs))
	mux.Handle("GET "+agentapi.PathTunnel, a.handle(a.handleTunnel))
	mux.Handle("/", a.handle(func(w http.ResponseWriter, r *http.Request) error {
		return errkind.New(errkind.NotFound, "no such endpoint: %s %s", r.Method, r.URL.Path)
	}))
	return mux
}

func (a *Agent) handleHealth(w http.ResponseWriter, r *http.Request) error {
	h := agentapi.Health{
		Version:  agentapi.Version,
		PID:      os.Getpid(),
		UptimeMS: time.Since(a.started).Milliseconds(),
	}
	if a.main != nil {
		st := a.main.state()
		h.Main = &st
	}
	return writeJSON(w, http.StatusOK, h)
}
