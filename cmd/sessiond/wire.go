package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/sessiond/sessiond/internal/controlplane"
	"github.com/sessiond/sessiond/internal/image"
	"github.com/sessiond/sessiond/internal/pool"
	"github.com/sessiond/sessiond/internal/sandbox"
	"github.com/sessiond/sessiond/internal/sandbox/oci"
	"github.com/sessiond/sessiond/internal/store"
)

// runtimeEntry registers one sandbox runtime: its name and how to build it.
type runtimeEntry struct {
	name string
	new  func(g *globals) (sandbox.Runtime, error)
}

// runtimeTable lists the sandbox runtimes in order of preference: the first available one is
// the default. Backends are registered here and nowhere else.
var runtimeTable = []runtimeEntry{
	{"runsc", func(g *globals) (sandbox.Runtime, error) { return newOCI(g, "runsc") }},
	{"runc", func(g *globals) (sandbox.Runtime, error) { return newOCI(g, "runc") }},
}

func newOCI(g *globals, name string) (sandbox.Runtime, error) {
	agent, err := agentBinary()
	if err != nil {
		return nil, err
	}
	return oci.New(oci.Config{
		Name:        name,
		StateDir:    filepath.Join(g.DataDir, "sandboxes", name),
		AgentBinary: agent,
		Network:     g.Network,
		Log:         g.Log,
	})
}

// agentBinary finds sessiond-agent: $SESSIOND_AGENT, or beside the sessiond executable.
func agentBinary() (string, error) {
	if p := os.Getenv("SESSIOND_AGENT"); p != "" {
		return filepath.Abs(p)
	}
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("finding the agent binary: %w", err)
	}
	p := filepath.Join(filepath.Dir(exe), "sessiond-agent")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("finding the agent binary: %s: %w (set SESSIOND_AGENT)", p, err)
	}
	return p, nil
}

// openRuntime returns the runtime called name, or the default (first available) for "".
func openRuntime(g *globals, name string) (sandbox.Runtime, error) {
	var reasons []string
	for _, e := range runtimeTable {
		if name != "" && e.name != name {
			continue
		}
		rt, err := e.new(g)
		if err != nil {
			return nil, err
		}
		c := rt.Capabilities()
		if c.Available {
			return rt, nil
		}
		reasons = append(reasons, e.name+": "+c.Reason)
	}
	if len(reasons) == 0 {
		return nil, usagef("unknown runtime %q (known: %s)", name, strings.Join(runtimeNames(), ", "))
	}
	return nil, errors.New("no sandbox runtime available: " + strings.Join(reasons, "; "))
}

// allRuntimes returns every registered runtime, available or not.
func allRuntimes(g *globals) ([]sandbox.Runtime, error) {
	var rts []sandbox.Runtime
	for _, e := range runtimeTable {
		rt, err := e.new(g)
		if err != nil {
			return nil, err
		}
		rts = append(rts, rt)
	}
	return rts, nil
}

func runtimeNames() []string {
	var ns []string
	for _, e := range runtimeTable {
		ns = append(ns, e.name)
	}
	return ns
}

// openImages opens the image store in the data directory.
func openImages(g *globals) (*image.Store, error) {
	return image.Open(filepath.Join(g.DataDir, "images"))
}

// newControlPlane starts the pools of specs on the data directory's runtimes and images,
// with st (nil: none) keeping the sessions' records and obs (nil: none) watching them.
func newControlPlane(ctx context.Context, g *globals, specs []pool.Spec, st store.Store, obs *observability) (*controlplane.ControlPlane, error) {
	images, err := openImages(g)
	if err != nil {
		return nil, err
	}
	cfg := controlplane.Config{
		OpenRuntime: func(name string) (sandbox.Runtime, error) { return openRuntime(g, name) },
		Images:      images, Store: st, Log: g.Log,
	}
	if obs != nil {
		cfg.Observer, cfg.PoolEvent = obs.observer(), obs.poolEvent
	}
	return controlplane.New(ctx, cfg, specs)
}
