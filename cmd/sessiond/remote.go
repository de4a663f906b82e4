package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/sessiond/sessiond/internal/client"
)

// This file is what the commands that talk to a running server share (pool, session,
// exec, files): their flags, argument parsing and output.

// remoteFlags are the flags of a command that talks to a server.
type remoteFlags struct {
	endpoint, token, apiKey, output string
}

func (rf *remoteFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&rf.endpoint, "endpoint", "", "the server's URL (default $SESSIOND_ENDPOINT, else http://127.0.0.1:8080)")
	fs.StringVar(&rf.token, "token", "", "bearer token (default $SESSIOND_TOKEN)")
	fs.StringVar(&rf.apiKey, "api-key", "", "API key (default $SESSIOND_API_KEY)")
	fs.StringVar(&rf.output, "output", "table", "output format: table or json")
}

// client returns the client the flags (or the environment) describe.
func (rf *remoteFlags) client() (*client.Client, error) {
	if rf.output != "table" && rf.output != "json" {
		return nil, usagef("-output %q: want table or json", rf.output)
	}
	c := &client.Client{Endpoint: rf.endpoint, Token: rf.token, APIKey: rf.apiKey}
	if c.Endpoint == "" {
		c.Endpoint = envOr("SESSIOND_ENDPOINT", "http://127.0.0.1:8080")
	}
	if c.Token == "" && c.APIKey == "" {
		c.Token, c.APIKey = os.Getenv("SESSIOND_TOKEN"), os.Getenv("SESSIOND_API_KEY")
	}
	if c.Token != "" && c.APIKey != "" {
		return nil, usagef("give a token or an API key, not both (check SESSIOND_TOKEN and SESSIOND_API_KEY)")
	}
	if !strings.HasPrefix(c.Endpoint, "http://") && !strings.HasPrefix(c.Endpoint, "https://") {
		return nil, usagef("-endpoint %q: want an http:// or https:// URL", c.Endpoint)
	}
	return c, nil
}

// json reports whether the output is JSON.
func (rf *remoteFlags) json() bool { return rf.output == "json" }

// parseArgs parses flags and positional arguments in any order (flags may follow the
// arguments, as in "pool create NAME -f pool.yaml"); after "--" everything is an argument.
// It returns the positional arguments, or flag.ErrHelp for -h.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usageError{err.Error()}
		}
		rest := fs.Args()
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos, args = append(pos, rest[0]), rest[1:]
	}
}

// newFlagSet returns a flag set for a remote command, with its usage line.
func newFlagSet(g *globals, name, usage string, rf *remoteFlags) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(g.Stderr)
	rf.register(fs)
	fs.Usage = func() {
		fmt.Fprintf(g.Stderr, "usage: sessiond %s\n\nflags:\n", usage)
		fs.PrintDefaults()
	}
	return fs
}

// wantArgs checks the number of positional arguments.
func wantArgs(name string, args []string, min, max int) error {
	switch {
	case len(args) < min:
		return usagef("%s: missing arguments (see sessiond %s -h)", name, name)
	case len(args) > max:
		return usagef("%s: unexpected arguments %q", name, args[max:])
	}
	return nil
}

// printJSON writes v as indented JSON.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// table writes rows under a header, in aligned columns.
func table(w io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// subcommand dispatches "sessiond NAME SUB ..." to subs.
func subcommand(g *globals, name string, args []string, subs map[string]func([]string) error, order []string) error {
	usage := func() {
		fmt.Fprintf(g.Stderr, "usage: sessiond %s %s [flags] ...\n", name, strings.Join(order, "|"))
	}
	if len(args) == 0 {
		usage()
		return usagef("%s: no subcommand given", name)
	}
	if args[0] == "-h" || args[0] == "-help" || args[0] == "--help" {
		usage()
		return nil
	}
	sub, ok := subs[args[0]]
	if !ok {
		usage()
		return usagef("%s: unknown subcommand %q", name, args[0])
	}
	err := sub(args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	return err
}
