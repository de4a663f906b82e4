// Command sessiond is the sessiond control plane and its command-line interface.
// Each subcommand lives in its own file; wire.go alone builds runtimes and stores.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/sessiond/sessiond/internal/netns"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"syscall"
)

// globals are the settings every subcommand shares.
type globals struct {
	// DataDir holds images, sandbox state and the store.
	DataDir string
	Stdout  io.Writer
	Stderr  io.Writer
	Log     *slog.Logger
	// Network sets up egress networks for the runtimes opened from here; nil: sandboxes
	// with egress are refused (only serve starts one).
	Network *netns.Manager
}

// command is one subcommand: run parses its own flags from args.
type command struct {
	summary string
	run     func(ctx context.Context, g *globals, args []string) error
}

// commands is the subcommand table.
var commands = map[string]command{
	"serve":   {"serve pools over the Azure-compatible API", cmdServe},
	"image":   {"manage images: build, pull, import, ls, rm", cmdImage},
	"apikey":  {"make an API key and its configuration entry", cmdAPIKey},
	"sandbox": {"debug sandboxes: run, ls, rm", cmdSandbox},
	"bench":   {"measure sandbox latency and memory", cmdBench},
	"logs":    {"print a session's console log, or a pool's session lifecycle", cmdLogs},
	"events":  {"print a pool's recent session and sandbox events", cmdEvents},
	"pool":    {"manage a server's pools: create, list, show, update, delete", cmdPool},
	"session": {"a server's sessions: list, show, stop", cmdSession},
	"exec":    {"run code in a session of a server", cmdExec},
	"files":   {"a session's files: upload, list, download, rm", cmdFiles},
	"version": {"print the version", cmdVersion},
}

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			os.Exit(int(ee))
		}
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprintln(os.Stderr, "sessiond:", err)
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "sessiond:", err)
		os.Exit(1)
	}
}

// usageError reports bad command-line use (exit status 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("sessiond", flag.ContinueOnError)
	fs.SetOutput(stderr)
	g := &globals{Stdout: stdout, Stderr: stderr}
	fs.StringVar(&g.DataDir, "data-dir", envOr("SESSIOND_DATA_DIR", "/var/lib/sessiond"), "directory for images, sandbox state and the store")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn, error")
	logFormat := fs.String("log-format", logFormatText, "log format: text (key=value) or json (one object per line)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: sessiond [-data-dir DIR] COMMAND [ARGS]\n\ncommands:\n")
		names := make([]string, 0, len(commands))
		for n := range commands {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			fmt.Fprintf(stderr, "  %-8s %s\n", n, commands[n].summary)
		}
		fmt.Fprintf(stderr, "\nflags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return usageError{err.Error()}
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*logLevel)); err != nil {
		return usagef("-log-level: %v", err)
	}
	var err error
	if g.Log, err = newLogger(stderr, *logFormat, lvl); err != nil {
		return usagef("-log-format: %v", err)
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return usagef("no command given")
	}
	name := fs.Arg(0)
	c, ok := commands[name]
	if !ok {
		return usagef("unknown command %q (see sessiond -h)", name)
	}
	return c.run(ctx, g, fs.Args()[1:])
}

func cmdVersion(_ context.Context, g *globals, _ []string) error {
	fmt.Fprintln(g.Stdout, "sessiond", version)
	return nil
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
