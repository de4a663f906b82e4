package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/sessiond/sessiond/internal/client"
)

// sessiond logs and sessiond events: clients of a running server's observability API
// (GET /v1/pools/{pool}/sessions/{identifier}/logs and GET /v1/pools/{pool}/events), with
// the flags of the other remote commands (remote.go).

// cmdLogs prints a session's console log (-identifier), or the pool's session
// lifecycle: allocations and ends, with reasons.
func cmdLogs(ctx context.Context, g *globals, args []string) error {
	var rf remoteFlags
	fs := newFlagSet(g, "logs", "logs -pool POOL [-identifier ID] [-tail N] [-output table|json] [-endpoint URL]", &rf)
	poolName := fs.String("pool", "", "the pool (required)")
	identifier := fs.String("identifier", "", "the session whose console to print; without it, the pool's session lifecycle")
	tail := fs.Int("tail", 0, "print only the last N lines or events (default: 100 lines of a console, every event kept)")
	c, err := parseObserve(fs, &rf, args, tail)
	if err != nil || c == nil {
		return err
	}
	if *poolName == "" {
		return usagef("logs: -pool is required")
	}
	if *identifier == "" {
		return printEvents(ctx, g, c, &rf, *poolName, client.EventQuery{Category: "Session", Tail: *tail})
	}
	out, err := c.SessionLogs(ctx, *poolName, *identifier, *tail)
	if err != nil {
		return err
	}
	if rf.json() {
		return printJSON(g.Stdout, out)
	}
	for _, l := range out.Lines {
		fmt.Fprintln(g.Stdout, l)
	}
	return nil
}

// cmdEvents prints a pool's recent events: sessions and sandboxes.
func cmdEvents(ctx context.Context, g *globals, args []string) error {
	var rf remoteFlags
	fs := newFlagSet(g, "events", "events -pool POOL [-identifier ID] [-category Session|Pool] [-tail N] [-output table|json] [-endpoint URL]", &rf)
	poolName := fs.String("pool", "", "the pool (required)")
	identifier := fs.String("identifier", "", "only the events of this session")
	category := fs.String("category", "", "only Session or Pool events")
	tail := fs.Int("tail", 0, "print only the last N events (default: every event kept)")
	c, err := parseObserve(fs, &rf, args, tail)
	if err != nil || c == nil {
		return err
	}
	if *poolName == "" {
		return usagef("events: -pool is required")
	}
	return printEvents(ctx, g, c, &rf, *poolName, client.EventQuery{Identifier: *identifier, Category: *category, Tail: *tail})
}

// parseObserve parses the flags of logs and events, which take no arguments, and returns
// the client; nil and no error for -h.
func parseObserve(fs *flag.FlagSet, rf *remoteFlags, args []string, tail *int) (*client.Client, error) {
	pos, err := parseArgs(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if err := wantArgs(fs.Name(), pos, 0, 0); err != nil {
		return nil, err
	}
	if *tail < 0 {
		return nil, usagef("%s: -tail %d: want 1 or more", fs.Name(), *tail)
	}
	return rf.client()
}

// printEvents gets the pool's events that q selects and prints them.
func printEvents(ctx context.Context, g *globals, c *client.Client, rf *remoteFlags, poolName string, q client.EventQuery) error {
	evs, err := c.Events(ctx, poolName, q)
	if err != nil {
		return err
	}
	if rf.json() {
		return printJSON(g.Stdout, struct {
			Value []client.Event `json:"value"`
		}{evs})
	}
	tw := tabwriter.NewWriter(g.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tKIND\tIDENTIFIER\tSANDBOX\tREASON\tMESSAGE")
	for _, e := range evs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", e.Time.Local().Format("2006-01-02 15:04:05.000"), e.Kind,
			orDash(e.Identifier), orDash(e.SandboxID), orDash(e.Reason), oneLine(e.Message))
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// oneLine keeps a message on its table row.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
