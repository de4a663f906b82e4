package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strconv"
	"strings"

	"github.com/sessiond/sessiond/internal/auth"
)

// listFlag is a flag that may be given many times.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

// cmdAPIKey makes a new API key and prints it, once, with the entry that grants it for
// the apiKeys list of the auth configuration. Only the entry (which holds the key's hash)
// belongs in the configuration.
func cmdAPIKey(_ context.Context, g *globals, args []string) error {
	fs := flag.NewFlagSet("apikey", flag.ContinueOnError)
	fs.SetOutput(g.Stderr)
	name := fs.String("name", "", "the key's name, shown in logs (required)")
	var roles, pools listFlag
	fs.Var(&roles, "role", "a role to grant: SessionExecutor (default), Contributor or Reader; repeatable")
	fs.Var(&pools, "pool", "a pool the roles are limited to (default: every pool); repeatable")
	fs.Usage = func() {
		fmt.Fprintf(g.Stderr, "usage: sessiond apikey -name NAME [-role ROLE]... [-pool POOL]...\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return usagef("apikey: unexpected argument %q", fs.Arg(0))
	}
	if *name == "" {
		return usagef("apikey: -name is required")
	}
	if len(roles) == 0 {
		roles = listFlag{string(auth.SessionExecutor)}
	}
	for i, r := range roles {
		role, err := auth.ParseRole(r)
		if err != nil {
			return usagef("apikey: -role: %v", err)
		}
		roles[i] = string(role)
	}
	key, hash, err := auth.NewAPIKey()
	if err != nil {
		return err
	}
	entry := auth.APIKeyConfig{Name: *name, Hash: hash, Roles: roles, Pools: pools}
	if err := (auth.Config{APIKeys: []auth.APIKeyConfig{entry}}).Validate(); err != nil {
		return usagef("apikey: %v", err)
	}
	fmt.Fprintf(g.Stdout, `# The key, shown only now. Its holder sends it as "Authorization: Bearer <key>" or "api-key: <key>".
%s
# Its entry for the apiKeys list of the auth configuration:
- name: %s
  hash: %s
  roles: [%s]
`, key, strconv.Quote(entry.Name), hash, strings.Join(roles, ", "))
	if len(pools) > 0 {
		q := make([]string, len(pools))
		for i, p := range pools {
			q[i] = strconv.Quote(p)
		}
		fmt.Fprintf(g.Stdout, "  pools: [%s]\n", strings.Join(q, ", "))
	}
	return nil
}
