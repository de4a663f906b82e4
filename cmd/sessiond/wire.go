package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/api"
	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/pool"

	"github.com/sessiond/sessiond/internal/image"
	"github.com/sessiond/sessiond/internal/sandbox"
	"github.com/sessiond/sessiond/internal/sandbox/oci"
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

// controlPlane is the set of pools `sessiond serve` runs; it implements api.Pools.
type controlPlane struct {
	order []string
	pools map[string]*poolHandle
}

// poolHandle is one pool: its manager plus what the API's metadata needs.
type poolHandle struct {
	*pool.Manager
	runtime string
	image   image.Image
	created time.Time
	// packages lists the image's Python distributions, read once on first use: the image
	// never changes under a pool.
	packages func() []pool.NameVersion

	mu sync.Mutex
	// kernel is the kernel of the first warmed-up sandbox. Guarded by mu.
	kernel *agentapi.KernelInfo
}

var _ api.Pool = (*poolHandle)(nil)

// newControlPlane builds and starts a manager per pool spec. On error, whatever started is
// closed again.
func newControlPlane(ctx context.Context, g *globals, specs []pool.Spec) (cp *controlPlane, err error) {
	store, err := openImages(g)
	if err != nil {
		return nil, err
	}
	cp = &controlPlane{pools: map[string]*poolHandle{}}
	defer func() {
		if err != nil {
			cp.Close(context.WithoutCancel(ctx))
		}
	}()
	for _, spec := range specs {
		rt, err := openRuntime(g, spec.Runtime)
		if err != nil {
			return nil, fmt.Errorf("pool %s: %w", spec.Name, err)
		}
		img, err := store.Get(ctx, spec.Image)
		if err != nil {
			if errkind.Is(err, errkind.NotFound) {
				return nil, fmt.Errorf("pool %s: image %q not found (build it with: sessiond image build %s)", spec.Name, spec.Image, spec.Image)
			}
			return nil, fmt.Errorf("pool %s: %w", spec.Name, err)
		}
		h := &poolHandle{runtime: rt.Name(), image: img, created: time.Now().UTC(),
			packages: sync.OnceValue(func() []pool.NameVersion {
				var ps []pool.NameVersion
				for _, p := range image.PythonPackages(img.RootFS) {
					ps = append(ps, pool.NameVersion{Name: p.Name, Version: p.Version})
				}
				return ps
			})}
		opts := pool.Options{Runtime: rt, RootFS: img.RootFS, Env: img.Config.Env, Log: g.Log, Prepare: h.prepare(spec),
			RefillDelay: refillDelay}
		if spec.ContainerType == pool.PythonLTS {
			opts.Kernel = "python3"
		}
		m, err := pool.New(spec, opts)
		if err != nil {
			return nil, err
		}
		h.Manager = m
		if err := m.Start(ctx); err != nil {
			return nil, fmt.Errorf("starting pool %s: %w", spec.Name, err)
		}
		cp.pools[spec.Name] = h
		cp.order = append(cp.order, spec.Name)
	}
	return cp, nil
}

// Pool implements api.Pools.
func (cp *controlPlane) Pool(name string) (api.Pool, bool) {
	h, ok := cp.pools[name]
	if !ok {
		return nil, false
	}
	return h, true
}

func (cp *controlPlane) runtimeName(pool string) string {
	if h, ok := cp.pools[pool]; ok {
		return h.runtime
	}
	return ""
}

// Close stops every pool and destroys its sandboxes.
func (cp *controlPlane) Close(ctx context.Context) error {
	var errs []error
	for _, name := range cp.order {
		if err := cp.pools[name].Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("pool %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// refillDelay lets the first execution of a new session finish before the replacement of
// its sandbox starts competing for the CPU (docs/BENCHMARKS.md: the new-session overhead).
const refillDelay = 300 * time.Millisecond

// warmupTimeout bounds a sandbox's warm-up (importing the scientific stack under gVisor on
// a busy 2-core machine takes a few seconds).
const warmupTimeout = 2 * time.Minute

// prepare returns the pool's Prepare hook, remembering the first kernel's info for Metadata.
func (h *poolHandle) prepare(spec pool.Spec) func(context.Context, sandbox.Info, *agentapi.Client) error {
	return warmupHook(spec, func(ki agentapi.KernelInfo) {
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.kernel == nil {
			h.kernel = &ki
		}
	})
}

// warmupHook returns a pool's Prepare hook: a code-interpreter sandbox joins the ready
// queue only after its kernel answered and ran the warm-up code. onKernel, if not nil,
// receives the kernel's info.
func warmupHook(spec pool.Spec, onKernel func(agentapi.KernelInfo)) func(context.Context, sandbox.Info, *agentapi.Client) error {
	return func(ctx context.Context, info sandbox.Info, ag *agentapi.Client) error {
		if spec.ContainerType != pool.PythonLTS {
			return nil
		}
		code := spec.WarmupCode
		if code == "" {
			code = "None"
		}
		res, err := ag.Execute(ctx, agentapi.ExecuteRequest{Code: code, TimeoutSeconds: int(warmupTimeout / time.Second)})
		if err != nil {
			return fmt.Errorf("warming up sandbox %s: %w", info.ID, err)
		}
		if res.Status != agentapi.StatusSucceeded {
			return fmt.Errorf("warming up sandbox %s: warm-up code failed: %.500s", info.ID, res.Stderr)
		}
		if onKernel != nil {
			if ki, err := ag.KernelInfo(ctx); err == nil {
				onKernel(ki)
			}
		}
		return nil
	}
}

// Metadata implements api.Pool: the image's runtimes and packages, and the kernel.
func (h *poolHandle) Metadata(ctx context.Context) (pool.Metadata, error) {
	md := pool.Metadata{CreatedAt: h.created, UpdatedAt: h.created, Packages: h.packages()}
	h.mu.Lock()
	if h.kernel != nil {
		k := *h.kernel
		md.Kernel = &k
		md.Runtimes = append(md.Runtimes, pool.NameVersion{Name: k.Language, Version: k.LanguageVersion})
	}
	h.mu.Unlock()
	return md, nil
}
