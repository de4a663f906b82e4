package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/sandbox"
)

func cmdSandbox(ctx context.Context, g *globals, args []string) error {
	if len(args) == 0 {
		return usagef("usage: sessiond sandbox run|ls|rm|reap [flags]")
	}
	switch args[0] {
	case "run":
		return sandboxRun(ctx, g, args[1:])
	case "ls":
		return sandboxList(ctx, g, args[1:])
	case "rm":
		return sandboxRemove(ctx, g, args[1:])
	case "reap":
		return sandboxReap(ctx, g, args[1:])
	}
	return usagef("sandbox: unknown subcommand %q (run, ls, rm, reap)", args[0])
}

// specFlags are the flags that describe a sandbox to create.
type specFlags struct {
	runtime, image string
	memory, disk   string
	cpus           float64
	pids           int64
	env            stringList
	startTimeout   time.Duration
}

func (f *specFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.runtime, "runtime", "", "sandbox runtime: runsc or runc (default: runsc if available)")
	fs.StringVar(&f.image, "image", "python-small", "image name or ID")
	fs.StringVar(&f.memory, "memory", "", "memory limit, e.g. 512M, 2G (default 1G)")
	fs.StringVar(&f.disk, "disk", "", "disk limit for the writable layer, /mnt/data and /tmp (default 1G)")
	fs.Float64Var(&f.cpus, "cpus", 0, "CPU quota in cores (default 1)")
	fs.Int64Var(&f.pids, "pids", 0, "process limit (default 512)")
	fs.Var(&f.env, "env", "KEY=VALUE added to the environment (repeatable)")
	fs.DurationVar(&f.startTimeout, "start-timeout", 0, "how long to wait for the sandbox to start (default 30s)")
}

func (f *specFlags) spec(ctx context.Context, g *globals) (sandbox.Runtime, sandbox.Spec, error) {
	rt, err := openRuntime(g, f.runtime)
	if err != nil {
		return nil, sandbox.Spec{}, err
	}
	store, err := openImages(g)
	if err != nil {
		return nil, sandbox.Spec{}, err
	}
	img, err := store.Get(ctx, f.image)
	if err != nil {
		if errkind.Is(err, errkind.NotFound) {
			return nil, sandbox.Spec{}, fmt.Errorf("%w (build it with: sessiond image build %s)", err, f.image)
		}
		return nil, sandbox.Spec{}, err
	}
	mem, err := parseSize(f.memory)
	if err != nil {
		return nil, sandbox.Spec{}, usagef("-memory: %v", err)
	}
	disk, err := parseSize(f.disk)
	if err != nil {
		return nil, sandbox.Spec{}, usagef("-disk: %v", err)
	}
	return rt, sandbox.Spec{
		Image:        img.Name,
		RootFS:       img.RootFS,
		Env:          f.env,
		Limits:       sandbox.Limits{MemoryBytes: mem, DiskBytes: disk, CPUMillis: int64(f.cpus * 1000), Pids: f.pids},
		Labels:       map[string]string{"created-by": "sessiond sandbox run"},
		StartTimeout: f.startTimeout,
	}, nil
}

// sandboxRun creates a sandbox, runs one command in it through the agent, prints the
// command's output and destroys the sandbox (unless -keep). The exit status is the
// command's.
func sandboxRun(ctx context.Context, g *globals, args []string) error {
	fs := flag.NewFlagSet("sandbox run", flag.ContinueOnError)
	fs.SetOutput(g.Stderr)
	var sf specFlags
	sf.register(fs)
	shell := fs.String("shell", "", "run this shell command (sh -c) instead of ARGS")
	timeout := fs.Duration("timeout", time.Minute, "command timeout")
	keep := fs.Bool("keep", false, "keep the sandbox after the command (print its ID)")
	asRoot := fs.Bool("root", false, "run the command as the sandbox's root instead of the unprivileged user")
	fs.Usage = func() {
		fmt.Fprintf(g.Stderr, "usage: sessiond sandbox run [flags] [-shell CMD | -- ARGS...]\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	if (*shell == "") == (fs.NArg() == 0) {
		return usagef("sandbox run: give either -shell CMD or a command after the flags")
	}
	rt, spec, err := sf.spec(ctx, g)
	if err != nil {
		return err
	}
	t0 := time.Now()
	info, err := rt.Create(ctx, spec)
	if err != nil {
		return fmt.Errorf("creating sandbox: %w", err)
	}
	created := time.Since(t0)
	if !*keep {
		defer func() {
			if err := rt.Destroy(context.WithoutCancel(ctx), info.ID); err != nil {
				fmt.Fprintln(g.Stderr, "sessiond: destroying sandbox:", err)
			}
		}()
	}
	g.Log.Debug("sandbox ready", "sandbox", info.ID, "runtime", rt.Name(), "create", created)
	req := agentapi.ExecRequest{Argv: fs.Args(), Shell: *shell, TimeoutMS: timeout.Milliseconds(), AsRoot: *asRoot}
	res, err := rt.Agent(info.ID).Exec(ctx, req)
	if err != nil {
		return fmt.Errorf("running command: %w", err)
	}
	fmt.Fprint(g.Stdout, res.Stdout)
	fmt.Fprint(g.Stderr, res.Stderr)
	if res.StdoutTruncated || res.StderrTruncated {
		fmt.Fprintln(g.Stderr, "sessiond: output truncated")
	}
	if *keep {
		fmt.Fprintln(g.Stderr, "sandbox:", info.ID)
	}
	switch {
	case res.TimedOut:
		return fmt.Errorf("command timed out after %s", *timeout)
	case res.Signal != "":
		return fmt.Errorf("command killed by %s", res.Signal)
	case res.ExitCode != 0:
		return exitError(res.ExitCode)
	}
	return nil
}

// exitError makes sessiond exit with a command's status.
type exitError int

func (e exitError) Error() string { return "exit status " + strconv.Itoa(int(e)) }

func sandboxList(ctx context.Context, g *globals, args []string) error {
	fs := flag.NewFlagSet("sandbox ls", flag.ContinueOnError)
	fs.SetOutput(g.Stderr)
	output := fs.String("o", "table", "output: table or json")
	if err := fs.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	rts, err := allRuntimes(g)
	if err != nil {
		return err
	}
	var all []sandbox.Info
	for _, rt := range rts {
		infos, err := rt.List(ctx)
		if err != nil {
			return err
		}
		all = append(all, infos...)
	}
	if *output == "json" {
		enc := json.NewEncoder(g.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(all)
	}
	tw := tabwriter.NewWriter(g.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tRUNTIME\tIMAGE\tSTATE\tCREATED")
	for _, i := range all {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", i.ID, i.Runtime, i.Image, i.State, i.Created.Local().Format(time.DateTime))
	}
	return tw.Flush()
}

func sandboxRemove(ctx context.Context, g *globals, args []string) error {
	fs := flag.NewFlagSet("sandbox rm", flag.ContinueOnError)
	fs.SetOutput(g.Stderr)
	all := fs.Bool("all", false, "remove every sandbox")
	if err := fs.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	if *all == (fs.NArg() > 0) {
		return usagef("sandbox rm: give sandbox IDs or -all")
	}
	rts, err := allRuntimes(g)
	if err != nil {
		return err
	}
	want := map[string]bool{}
	for _, id := range fs.Args() {
		want[id] = true
	}
	for _, rt := range rts {
		infos, err := rt.List(ctx)
		if err != nil {
			return err
		}
		for _, i := range infos {
			if *all || want[i.ID] {
				if err := rt.Destroy(ctx, i.ID); err != nil {
					return err
				}
				delete(want, i.ID)
				fmt.Fprintln(g.Stdout, i.ID)
			}
		}
	}
	for id := range want {
		return fmt.Errorf("no sandbox %q", id)
	}
	return nil
}

// sandboxReap adopts every sandbox that is healthy and destroys the rest: what the control
// plane does at start-up.
func sandboxReap(ctx context.Context, g *globals, args []string) error {
	fs := flag.NewFlagSet("sandbox reap", flag.ContinueOnError)
	fs.SetOutput(g.Stderr)
	if err := fs.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	rts, err := allRuntimes(g)
	if err != nil {
		return err
	}
	for _, rt := range rts {
		res, err := sandbox.Recover(ctx, rt, nil)
		if err != nil {
			return err
		}
		for _, i := range res.Adopted {
			fmt.Fprintf(g.Stdout, "adopted %s (%s)\n", i.ID, rt.Name())
		}
		for _, id := range res.Reaped {
			fmt.Fprintf(g.Stdout, "reaped %s (%s)\n", id, rt.Name())
		}
	}
	return nil
}

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// parseSize parses a byte count with an optional K, M, G or T suffix (powers of 1024).
// The empty string is 0 (the default).
func parseSize(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	mult := int64(1)
	switch strings.ToUpper(s[len(s)-1:]) {
	case "K":
		mult = 1 << 10
	case "M":
		mult = 1 << 20
	case "G":
		mult = 1 << 30
	case "T":
		mult = 1 << 40
	}
	if mult > 1 {
		s = s[:len(s)-1]
	}
	n, err := strconv.ParseInt(strings.TrimSuffix(strings.ToUpper(s), "I"), 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("bad size %q: want a number of bytes with an optional K, M, G or T suffix", s)
	}
	return n * mult, nil
}
