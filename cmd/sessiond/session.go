package main

import (
	"context"
	"fmt"

	"github.com/sessiond/sessiond/internal/client"
)

// cmdSession reads and stops a running server's sessions through its management API:
//
//	sessiond session list -pool P
//	sessiond session show -pool P IDENTIFIER
//	sessiond session stop -pool P IDENTIFIER
func cmdSession(ctx context.Context, g *globals, args []string) error {
	return subcommand(g, "session", args, map[string]func([]string) error{
		"list": func(a []string) error { return sessionCmd(ctx, g, "list", a) },
		"show": func(a []string) error { return sessionCmd(ctx, g, "show", a) },
		"stop": func(a []string) error { return sessionCmd(ctx, g, "stop", a) },
	}, []string{"list", "show", "stop"})
}

func sessionCmd(ctx context.Context, g *globals, sub string, args []string) error {
	var rf remoteFlags
	usage := "session " + sub + " -pool POOL IDENTIFIER"
	if sub == "list" {
		usage = "session list -pool POOL"
	}
	fs := newFlagSet(g, "session "+sub, usage, &rf)
	poolName := fs.String("pool", "", "the pool (required)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	n := 1
	if sub == "list" {
		n = 0
	}
	if err := wantArgs("session "+sub, pos, n, n); err != nil {
		return err
	}
	if *poolName == "" {
		return usagef("session %s: -pool is required", sub)
	}
	c, err := rf.client()
	if err != nil {
		return err
	}
	switch sub {
	case "list":
		ss, err := c.ListSessions(ctx, *poolName)
		if err != nil {
			return err
		}
		return printSessions(g, &rf, ss)
	case "show":
		s, err := c.GetSession(ctx, *poolName, pos[0])
		if err != nil {
			return err
		}
		if rf.json() {
			return printJSON(g.Stdout, s)
		}
		return printSessions(g, &rf, []client.Session{s})
	}
	if err := c.StopSession(ctx, *poolName, pos[0]); err != nil {
		return err
	}
	if !rf.json() {
		fmt.Fprintf(g.Stdout, "session %s of pool %s stopped\n", pos[0], *poolName)
	}
	return nil
}

func printSessions(g *globals, rf *remoteFlags, ss []client.Session) error {
	if rf.json() {
		if ss == nil {
			ss = []client.Session{}
		}
		return printJSON(g.Stdout, ss)
	}
	var rows [][]string
	for _, s := range ss {
		rows = append(rows, []string{s.Identifier, s.State, s.SandboxID, s.CreatedAt, s.LastAccessedAt, s.ExpiresAt})
	}
	return table(g.Stdout, []string{"IDENTIFIER", "STATE", "SANDBOX", "CREATED", "LAST ACCESSED", "EXPIRES"}, rows)
}
