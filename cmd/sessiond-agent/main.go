// Command sessiond-agent is the init process of every sessiond sandbox. It runs as PID 1,
// as root inside the sandbox, and serves the agent API (internal/agentapi) to the host on
// a unix socket. This file only turns flags into an agent.Config; everything else is in
// internal/agent.
//
//	sessiond-agent [-socket PATH] [-data-dir DIR] [-uid N] [-gid N] [-home DIR] [-workdir DIR] [-main-user UID:GID] [-kernel python3] [-kernel-preload LIB] [-max-tunnels N] [-cpus N] [-- COMMAND [ARG...]]
//
// COMMAND, if given, is the sandbox's main process, run as the unprivileged user or as
// -main-user.
// -kernel python3 makes it a code-interpreter sandbox: the agent supervises an ipykernel
// and serves executions on it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"

	"github.com/sessiond/sessiond/internal/agent"
	"github.com/sessiond/sessiond/internal/agentapi"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintf(os.Stderr, "sessiond-agent: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("sessiond-agent", flag.ContinueOnError)
	var cfg agent.Config
	fs.StringVar(&cfg.Socket, "socket", agentapi.SocketDir+"/"+agentapi.SocketName, "unix socket to serve the agent API on")
	fs.StringVar(&cfg.DataDir, "data-dir", agentapi.DataDir, "directory served by the files API, and default working directory")
	fs.IntVar(&cfg.UID, "uid", agentapi.UserUID, "uid that user code runs as (never 0: 0 means the default)")
	fs.IntVar(&cfg.GID, "gid", agentapi.UserGID, "gid that user code runs as (never 0: 0 means the default)")
	fs.StringVar(&cfg.Home, "home", "/home/user", "HOME of user code")
	fs.StringVar(&cfg.WorkDir, "workdir", "", "working directory of the main command (default: the data dir)")
	fs.Int64Var(&cfg.MemoryLimit, "memory-limit", 0, "kill the largest process when all processes together hold more resident bytes (0: off)")
	fs.StringVar(&cfg.KernelDir, "kernel-dir", "", "directory for the kernel's connection file (default /run/sessiond-kernel)")
	fs.StringVar(&cfg.Kernel, "kernel", "", "Jupyter kernel to supervise (python3), for code-interpreter sandboxes")
	fs.StringVar(&cfg.KernelPreload, "kernel-preload", "", "shared library the kernel process starts with (LD_PRELOAD), hidden from user code")
	fs.IntVar(&cfg.MaxTunnels, "max-tunnels", agent.DefaultMaxTunnels, "most tunnels to the sandbox's loopback open at once")
	cpus := fs.Int("cpus", 0, "the sandbox's CPU quota in whole cores, rounded up: the agent's Go code runs on that many threads (0: as many as the CPUs it sees)")
	fs.Func("main-user", "UID:GID the main command runs as (default: -uid and -gid; 0:0 is the sandbox's root)", func(v string) error {
		u, g, ok := strings.Cut(v, ":")
		uid, uerr := strconv.Atoi(u)
		gid, gerr := strconv.Atoi(g)
		if !ok || uerr != nil || gerr != nil || uid < 0 || gid < 0 {
			return fmt.Errorf("%q: want UID:GID", v)
		}
		cfg.MainUser = &agent.Identity{UID: uid, GID: gid}
		return nil
	})
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cpus < 0 {
		return fmt.Errorf("-cpus %d: want 0 or more", *cpus)
	}
	if *cpus > 0 {
		// gVisor shows a sandbox all of the host's CPUs whatever its quota, and Go then
		// spreads the agent over threads that only hand work to each other: under runsc
		// that cost a `1+1` about 3 ms of its 12 (bench kernel, GOMAXPROCS 2 against 1).
		runtime.GOMAXPROCS(*cpus)
	}
	cfg.Command = fs.Args()
	return agent.New(cfg).Serve(context.Background())
}
