package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/sessiond/sessiond/internal/client"
)

// cmdPool manages a running server's pools through its management API:
//
//	sessiond pool create NAME -f pool.yaml [-replace]
//	sessiond pool list
//	sessiond pool show NAME
//	sessiond pool update NAME [-f patch.yaml] [-set path=value]...
//	sessiond pool delete NAME
//
// A pool file has the shape of a pool entry of the configuration file (YAML or JSON:
// name, properties, sessiond); update takes a merge patch of that shape, or -set
// assignments ("properties.scaleConfiguration.readySessionInstances=2"; a value that is
// JSON is taken as such, anything else as a string; null removes the field).
func cmdPool(ctx context.Context, g *globals, args []string) error {
	return subcommand(g, "pool", args, map[string]func([]string) error{
		"create": func(a []string) error { return poolCreate(ctx, g, a) },
		"list":   func(a []string) error { return poolList(ctx, g, a) },
		"show":   func(a []string) error { return poolShow(ctx, g, a) },
		"update": func(a []string) error { return poolUpdate(ctx, g, a) },
		"delete": func(a []string) error { return poolDelete(ctx, g, a) },
	}, []string{"create", "list", "show", "update", "delete"})
}

func poolCreate(ctx context.Context, g *globals, args []string) error {
	var rf remoteFlags
	fs := newFlagSet(g, "pool create", "pool create [NAME] -f pool.yaml [-replace]", &rf)
	file := fs.String("f", "", "the pool's definition: a YAML or JSON file shaped as a configuration file's pool entry ('-': standard input)")
	replace := fs.Bool("replace", false, "replace the pool's definition if the pool exists")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs("pool create", pos, 0, 1); err != nil {
		return err
	}
	if *file == "" {
		return usagef("pool create: -f is required")
	}
	doc, err := readDocument(g, *file)
	if err != nil {
		return err
	}
	name, _ := doc["name"].(string)
	switch {
	case len(pos) == 1 && name != "" && name != pos[0]:
		return usagef("pool create: the file names pool %q, the command %q", name, pos[0])
	case len(pos) == 1:
		name = pos[0]
	case name == "":
		return usagef("pool create: name the pool (pool create NAME -f FILE, or name: in the file)")
	}
	c, err := rf.client()
	if err != nil {
		return err
	}
	if !*replace {
		if _, err := c.GetPool(ctx, name); err == nil {
			return fmt.Errorf("pool %s exists: change it with sessiond pool update, or replace it with pool create -replace", name)
		} else if !client.IsNotFound(err) {
			return err
		}
	}
	p, created, err := c.PutPool(ctx, name, doc)
	if err != nil {
		return err
	}
	if rf.json() {
		return printJSON(g.Stdout, p)
	}
	verb := "replaced"
	if created {
		verb = "created"
	}
	fmt.Fprintf(g.Stdout, "pool %s %s: endpoint %s\n", p.Name, verb, p.ManagementEndpoint())
	return nil
}

// readDocument reads a YAML or JSON object from file ("-": standard input).
func readDocument(g *globals, file string) (map[string]any, error) {
	var b []byte
	var err error
	if file == "-" {
		b, err = io.ReadAll(io.LimitReader(os.Stdin, 1<<20+1))
	} else {
		b, err = os.ReadFile(file)
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", file, err)
	}
	if len(b) > 1<<20 {
		return nil, fmt.Errorf("%s: larger than 1 MiB", file)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("%s: %s", file, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	if doc == nil {
		doc = map[string]any{}
	}
	if _, err := json.Marshal(doc); err != nil {
		return nil, fmt.Errorf("%s: not representable as JSON: %w", file, err)
	}
	return doc, nil
}

func poolList(ctx context.Context, g *globals, args []string) error {
	var rf remoteFlags
	fs := newFlagSet(g, "pool list", "pool list", &rf)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs("pool list", pos, 0, 0); err != nil {
		return err
	}
	c, err := rf.client()
	if err != nil {
		return err
	}
	pools, err := c.ListPools(ctx)
	if err != nil {
		return err
	}
	if rf.json() {
		return printJSON(g.Stdout, pools)
	}
	var rows [][]string
	for _, p := range pools {
		ct, _ := p.Properties["containerType"].(string)
		rows = append(rows, []string{p.Name, ct, p.Status.Source, p.ProvisioningState(), strconv.Itoa(p.Status.Ready),
			strconv.Itoa(p.Status.Pending), strconv.Itoa(p.Status.Allocated), p.ManagementEndpoint()})
	}
	return table(g.Stdout, []string{"NAME", "TYPE", "SOURCE", "STATE", "READY", "PENDING", "ALLOCATED", "ENDPOINT"}, rows)
}

func poolShow(ctx context.Context, g *globals, args []string) error {
	var rf remoteFlags
	fs := newFlagSet(g, "pool show", "pool show NAME", &rf)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs("pool show", pos, 1, 1); err != nil {
		return err
	}
	c, err := rf.client()
	if err != nil {
		return err
	}
	p, err := c.GetPool(ctx, pos[0])
	if err != nil {
		return err
	}
	return printPool(g, &rf, p)
}

// printPool shows one pool: its resource as JSON, or a summary.
func printPool(g *globals, rf *remoteFlags, p client.Pool) error {
	if rf.json() {
		return printJSON(g.Stdout, p)
	}
	get := func(m map[string]any, path ...string) string {
		var v any = m
		for _, k := range path {
			mm, ok := v.(map[string]any)
			if !ok {
				return ""
			}
			v = mm[k]
		}
		switch v := v.(type) {
		case nil:
			return ""
		case string:
			return v
		case float64:
			return strconv.FormatFloat(v, 'f', -1, 64)
		}
		b, _ := json.Marshal(v)
		return string(b)
	}
	lc := []string{"dynamicPoolConfiguration", "lifecycleConfiguration"}
	lifecycle := get(p.Properties, append(lc, "lifecycleType")...)
	if s := get(p.Properties, append(lc, "cooldownPeriodInSeconds")...); s != "" {
		lifecycle += ", cooldown " + s + "s"
	}
	if s := get(p.Properties, append(lc, "maxAlivePeriodInSeconds")...); s != "" {
		lifecycle += ", max alive " + s + "s"
	}
	rows := [][]string{
		{"name:", p.Name},
		{"type:", get(p.Properties, "containerType")},
		{"source:", p.Status.Source},
		{"state:", p.ProvisioningState()},
		{"endpoint:", p.ManagementEndpoint()},
		{"runtime:", p.Status.Runtime},
		{"image:", get(p.Sessiond, "image")},
		{"sessions:", fmt.Sprintf("at most %s, %s kept ready", get(p.Properties, "scaleConfiguration", "maxConcurrentSessions"),
			get(p.Properties, "scaleConfiguration", "readySessionInstances"))},
		{"lifecycle:", lifecycle},
		{"sandboxes:", fmt.Sprintf("%d ready, %d pending, %d allocated, %d being replaced", p.Status.Ready, p.Status.Pending,
			p.Status.Allocated, p.Status.Outdated)},
	}
	if p.Status.Message != "" {
		rows = append(rows, []string{"message:", p.Status.Message})
	}
	lines := make([]string, 0, len(rows))
	for _, r := range rows {
		lines = append(lines, fmt.Sprintf("%-11s%s", r[0], r[1]))
	}
	_, err := fmt.Fprintln(g.Stdout, strings.Join(lines, "\n"))
	return err
}

// setFlag collects -set path=value assignments.
type setFlag []string

func (s *setFlag) String() string { return strings.Join(*s, ",") }
func (s *setFlag) Set(v string) error {
	if !strings.Contains(v, "=") {
		return fmt.Errorf("%q: want path=value, e.g. properties.scaleConfiguration.readySessionInstances=2", v)
	}
	*s = append(*s, v)
	return nil
}

func poolUpdate(ctx context.Context, g *globals, args []string) error {
	var rf remoteFlags
	fs := newFlagSet(g, "pool update", "pool update NAME [-f patch.yaml] [-set path=value]...", &rf)
	file := fs.String("f", "", "a merge patch of the pool's definition: YAML or JSON ('-': standard input)")
	var sets setFlag
	fs.Var(&sets, "set", "set one field: path=value (JSON values; null removes the field); repeatable")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs("pool update", pos, 1, 1); err != nil {
		return err
	}
	if *file == "" && len(sets) == 0 {
		return usagef("pool update: give -f or -set")
	}
	patch := map[string]any{}
	if *file != "" {
		if patch, err = readDocument(g, *file); err != nil {
			return err
		}
	}
	for _, s := range sets {
		if err := setPath(patch, s); err != nil {
			return usagef("pool update: -set %v", err)
		}
	}
	c, err := rf.client()
	if err != nil {
		return err
	}
	p, err := c.PatchPool(ctx, pos[0], patch)
	if err != nil {
		return err
	}
	if rf.json() {
		return printJSON(g.Stdout, p)
	}
	fmt.Fprintf(g.Stdout, "pool %s updated (%s)\n", p.Name, p.ProvisioningState())
	return nil
}

// setPath applies one "a.b.c=value" assignment to patch.
func setPath(patch map[string]any, assignment string) error {
	path, raw, _ := strings.Cut(assignment, "=")
	keys := strings.Split(path, ".")
	for _, k := range keys {
		if k == "" {
			return fmt.Errorf("%q: empty field name in the path", assignment)
		}
	}
	var v any
	if err := json.Unmarshal([]byte(raw), &v); err != nil {
		v = raw // not JSON: a string
	}
	m := patch
	for _, k := range keys[:len(keys)-1] {
		next, ok := m[k].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[k] = next
		}
		m = next
	}
	m[keys[len(keys)-1]] = v
	return nil
}

func poolDelete(ctx context.Context, g *globals, args []string) error {
	var rf remoteFlags
	fs := newFlagSet(g, "pool delete", "pool delete NAME", &rf)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs("pool delete", pos, 1, 1); err != nil {
		return err
	}
	c, err := rf.client()
	if err != nil {
		return err
	}
	if err := c.DeletePool(ctx, pos[0]); err != nil {
		return err
	}
	if !rf.json() {
		fmt.Fprintf(g.Stdout, "pool %s deleted\n", pos[0])
	}
	return nil
}
