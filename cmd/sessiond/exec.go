package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/sessiond/sessiond/internal/client"
)

// cmdExec runs code in a session of a running server (the data plane's POST executions)
// and prints its standard output, standard error and result (the value of the last
// expression):
//
//	sessiond exec -pool P -identifier ID 'code'     ('-' reads the code from standard input)
//
// The exit status is 1 when the execution failed (an exception, a timeout, or a non-zero
// exit status on a Shell pool).
func cmdExec(ctx context.Context, g *globals, args []string) error {
	var rf remoteFlags
	fs := newFlagSet(g, "exec", "exec -pool POOL -identifier ID CODE|-", &rf)
	poolName := fs.String("pool", "", "the pool (required)")
	identifier := fs.String("identifier", "", "the session identifier (required)")
	timeout := fs.Int("timeout", 0, "the execution's timeout in seconds (0: the server's default)")
	pos, err := parseArgs(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := wantArgs("exec", pos, 1, 1); err != nil {
		return err
	}
	if *poolName == "" || *identifier == "" {
		return usagef("exec: -pool and -identifier are required")
	}
	code := pos[0]
	if code == "-" {
		b, err := io.ReadAll(io.LimitReader(os.Stdin, 4<<20+1))
		if err != nil {
			return fmt.Errorf("reading the code: %w", err)
		}
		code = string(b)
	}
	c, err := rf.client()
	if err != nil {
		return err
	}
	x, err := c.Execute(ctx, *poolName, *identifier, client.ExecuteRequest{Code: code, TimeoutInSeconds: *timeout})
	if err != nil {
		return err
	}
	if rf.json() {
		if err := printJSON(g.Stdout, x); err != nil {
			return err
		}
	} else if res := x.Result; res != nil {
		io.WriteString(g.Stdout, res.Stdout)
		io.WriteString(g.Stderr, res.Stderr)
		if r := resultText(res.ExecutionResult); r != "" {
			if res.Stdout != "" && !strings.HasSuffix(res.Stdout, "\n") {
				fmt.Fprintln(g.Stdout)
			}
			fmt.Fprintln(g.Stdout, r)
		}
	}
	if !x.Succeeded() {
		if !rf.json() && (x.Result == nil || x.Result.Stderr == "") {
			fmt.Fprintf(g.Stderr, "execution %s: %s\n", x.ID, x.Status)
		}
		return exitError(1)
	}
	return nil
}

// resultText renders an execution's result: a JSON string as its text, any other value
// as JSON, nothing for none.
func resultText(r json.RawMessage) string {
	if len(r) == 0 || string(r) == `""` || string(r) == "null" {
		return ""
	}
	var s string
	if json.Unmarshal(r, &s) == nil {
		return s
	}
	return string(r)
}
