// Package controlplane runs the pools of one sessiond process: it builds a pool manager
// per pool spec on the runtime and image the spec names, records sessions in the store
// behind the hot path, adopts the sessions a previous process left running, and stops
// the pools either for good (Close) or for a restart (Detach). It implements the API's
// view of the pools (api.Pools).
package controlplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/api"
	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/events"
	"github.com/sessiond/sessiond/internal/image"
	"github.com/sessiond/sessiond/internal/pool"
	"github.com/sessiond/sessiond/internal/sandbox"
	"github.com/sessiond/sessiond/internal/store"
)

// RefillDelay lets the first execution of a new session finish before the replacement of
// its sandbox starts competing for the CPU (docs/BENCHMARKS.md: the new-session overhead).
const RefillDelay = 300 * time.Millisecond

// WarmupTimeout bounds a sandbox's warm-up (importing the scientific stack under gVisor on
// a busy 2-core machine takes a few seconds).
const WarmupTimeout = 2 * time.Minute

// Config configures a ControlPlane.
type Config struct {
	// OpenRuntime returns the sandbox runtime called name ("" for the default). Required.
	OpenRuntime func(name string) (sandbox.Runtime, error)
	// Images resolves the pools' images. Required.
	Images *image.Store
	// Store, if set, keeps the sessions' records: sessions recorded there by an earlier
	// process are adopted at start, and Detach leaves them for the next one.
	Store store.Store
	Log   *slog.Logger
	// RefillDelay is pool.Options.RefillDelay (RefillDelay if zero; negative: none).
	RefillDelay time.Duration
	// Observer, if set, is every pool's pool.Options.Observer (metrics and events).
	Observer pool.Observer
	// PullTimeout bounds the pull of a CustomContainer pool's image (DefaultPullTimeout if
	// zero).
	PullTimeout time.Duration
	// PoolEvent, if set, is told of pools started, scaled, updated and stopped (the event
	// log's Pool events); forget is set when a pool is deleted and nothing of it should
	// stay (its events, its metrics).
	PoolEvent func(pool string, kind events.Kind, message string, forget bool)
}

// ControlPlane is the set of pools of one process. Its methods are safe for concurrent use.
type ControlPlane struct {
	cfg Config
	log *slog.Logger
	rec *store.Async // nil without a store

	mu    sync.RWMutex
	order []string
	pools map[string]*Pool
	// Pools managed through the API (manage.go). Guarded by mu.
	managed managedPools

	// manageMu serializes the management operations (manage.go).
	manageMu sync.Mutex

	// prov runs the pulls of CustomContainer pools (container.go).
	prov provisioner
}

var _ api.Pools = (*ControlPlane)(nil)

// Pool is one running pool: its manager plus what the API's metadata needs.
//
// A CustomContainer pool starts without a manager (Manager is nil) while its image is
// pulled, and keeps none if the pull fails: Provisioning says which. The methods of the
// api.Pool interface and Counts, LastError and End work in every state (container.go);
// other uses of Manager must check it.
type Pool struct {
	*pool.Manager
	spec    pool.Spec
	rt      sandbox.Runtime
	prov    *provisioning // nil for a pool built at once
	runtime string

	mu sync.Mutex
	// image is the pool's image; an update may change it (manage.go). Guarded by mu.
	image image.Image
	// created and updated are when the pool was defined and last changed. Guarded by mu.
	created, updated time.Time
	// packages lists the image's Python distributions, read once on first use of each
	// image. Guarded by mu.
	packages func() []pool.NameVersion
	// kernel is the kernel of the first warmed-up sandbox. Guarded by mu.
	kernel *agentapi.KernelInfo
}

var _ api.Pool = (*Pool)(nil)

// New starts a pool per spec. With a store, the sessions recorded there for these pools
// are adopted where their sandboxes still run. On error, whatever started is closed again.
func New(ctx context.Context, cfg Config, specs []pool.Spec) (*ControlPlane, error) {
	if cfg.OpenRuntime == nil || cfg.Images == nil {
		return nil, errors.New("control plane: no runtime opener or image store")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	switch {
	case cfg.RefillDelay == 0:
		cfg.RefillDelay = RefillDelay
	case cfg.RefillDelay < 0:
		cfg.RefillDelay = 0
	}
	if cfg.PullTimeout <= 0 {
		cfg.PullTimeout = DefaultPullTimeout
	}
	cp := &ControlPlane{cfg: cfg, log: cfg.Log.With("component", "controlplane"), pools: map[string]*Pool{}}
	cp.prov.ctx, cp.prov.cancel = context.WithCancel(context.WithoutCancel(ctx))
	if err := cp.open(ctx, specs); err != nil {
		if cerr := cp.Close(context.WithoutCancel(ctx)); cerr != nil {
			cp.log.Error("closing after a failed start", "err", cerr)
		}
		return nil, err
	}
	return cp, nil
}

// open starts the store writer and the pools of New.
func (cp *ControlPlane) open(ctx context.Context, specs []pool.Spec) error {
	if cp.cfg.Store != nil {
		rec, err := store.NewAsync(cp.cfg.Store, store.AsyncOptions{OnError: func(err error) {
			cp.log.Error("writing the session store", "err", err)
		}})
		if err != nil {
			return fmt.Errorf("starting the session store writer: %w", err)
		}
		cp.rec = rec
		if err := cp.rec.Start(); err != nil {
			return fmt.Errorf("starting the session store writer: %w", err)
		}
	}
	for _, spec := range specs {
		if err := cp.start(ctx, spec); err != nil {
			return err
		}
	}
	cp.startManaged(ctx)
	return nil
}

// start builds and starts spec's pool and adds it. A CustomContainer pool is added at once
// and built once its image is pulled, in the background (container.go).
func (cp *ControlPlane) start(ctx context.Context, spec pool.Spec) error {
	rt, err := cp.cfg.OpenRuntime(spec.Runtime)
	if err != nil {
		return fmt.Errorf("pool %s: %w", spec.Name, err)
	}
	if spec.ContainerType == pool.CustomContainer {
		return cp.startContainer(spec, rt)
	}
	img, err := cp.cfg.Images.Get(ctx, spec.Image)
	if err != nil {
		if errkind.Is(err, errkind.NotFound) {
			return fmt.Errorf("pool %s: image %q not found (build it with: sessiond image build %s)", spec.Name, spec.Image, spec.Image)
		}
		return fmt.Errorf("pool %s: %w", spec.Name, err)
	}
	p, err := cp.build(ctx, spec, rt, img)
	if err != nil {
		return err
	}
	cp.mu.Lock()
	cp.pools[spec.Name] = p
	cp.order = append(cp.order, spec.Name)
	cp.mu.Unlock()
	return nil
}

// build builds and starts spec's pool on rt and img.
func (cp *ControlPlane) build(ctx context.Context, spec pool.Spec, rt sandbox.Runtime, img image.Image) (*Pool, error) {
	now := time.Now().UTC()
	p := &Pool{rt: rt, runtime: rt.Name(), image: img, created: now, updated: now, packages: packagesOf(img)}
	opts := pool.Options{Runtime: rt, RootFS: img.RootFS, Env: img.Config.Env, Log: cp.cfg.Log, Prepare: p.prepare(spec),
		RefillDelay: cp.cfg.RefillDelay, Observer: cp.cfg.Observer}
	if spec.ContainerType == pool.PythonLTS {
		opts.Kernel = "python3"
	}
	if spec.ContainerType == pool.CustomContainer {
		if err := containerOptions(&opts, spec, img); err != nil {
			return nil, fmt.Errorf("pool %s: %w", spec.Name, err)
		}
	}
	if cp.rec != nil {
		opts.Recorder = cp.rec
		recs, err := cp.cfg.Store.ListSessions(ctx, spec.Name)
		if err != nil {
			// Corrupt records are named in the error; the readable ones are still adopted.
			cp.log.Error("reading recorded sessions", "pool", spec.Name, "err", err)
		}
		opts.Recovered = recs
	}
	m, err := pool.New(spec, opts)
	if err != nil {
		return nil, err
	}
	p.Manager, p.spec = m, m.Spec()
	if err := m.Start(ctx); err != nil {
		return nil, fmt.Errorf("starting pool %s: %w", spec.Name, err)
	}
	if n := len(m.Sessions()); n > 0 {
		cp.log.Info("adopted sessions", "pool", spec.Name, "sessions", n)
	}
	cp.poolEvent(spec.Name, events.PoolStarted, fmt.Sprintf("%s pool on %s, image %s", spec.ContainerType, rt.Name(), img.Name), false)
	return p, nil
}

// poolEvent tells Config.PoolEvent, if set.
func (cp *ControlPlane) poolEvent(pool string, kind events.Kind, message string, forget bool) {
	if cp.cfg.PoolEvent != nil {
		cp.cfg.PoolEvent(pool, kind, message, forget)
	}
}

// Pool implements api.Pools.
func (cp *ControlPlane) Pool(name string) (api.Pool, bool) {
	p, ok := cp.Get(name)
	if !ok {
		return nil, false
	}
	return p, true
}

// Get returns the pool called name.
func (cp *ControlPlane) Get(name string) (*Pool, bool) {
	cp.mu.RLock()
	defer cp.mu.RUnlock()
	p, ok := cp.pools[name]
	return p, ok
}

// Names returns the pools' names in the order they started.
func (cp *ControlPlane) Names() []string {
	cp.mu.RLock()
	defer cp.mu.RUnlock()
	return slices.Clone(cp.order)
}

// Runtime returns the name of the runtime the pool's sandboxes run on.
func (p *Pool) Runtime() string { return p.runtime }

// Close stops every pool and destroys all its sandboxes, sessions included, and deletes
// their records.
func (cp *ControlPlane) Close(ctx context.Context) error {
	return cp.stop(ctx, (*pool.Manager).Close)
}

// Detach stops every pool for a restart: allocated sessions keep running, with their
// records, for the next process to adopt; ready sandboxes are destroyed.
func (cp *ControlPlane) Detach(ctx context.Context) error {
	return cp.stop(ctx, (*pool.Manager).Detach)
}

func (cp *ControlPlane) stop(ctx context.Context, stop func(*pool.Manager, context.Context) error) error {
	cp.prov.stop()
	cp.mu.Lock()
	pools, order := cp.pools, cp.order
	cp.pools, cp.order = map[string]*Pool{}, nil
	cp.mu.Unlock()
	var errs []error
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, name := range order {
		if pools[name].Manager == nil {
			continue // never provisioned: nothing runs
		}
		wg.Go(func() {
			if err := stop(pools[name].Manager, ctx); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("pool %s: %w", name, err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if cp.rec != nil {
		if err := cp.rec.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("flushing the session store: %w", err))
		}
	}
	return errors.Join(errs...)
}

// prepare returns the pool's Prepare hook, remembering the first kernel's info for Metadata.
func (p *Pool) prepare(spec pool.Spec) func(context.Context, sandbox.Info, *agentapi.Client) error {
	return WarmupHook(spec, func(ki agentapi.KernelInfo) {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.kernel == nil {
			p.kernel = &ki
		}
	})
}

// WarmupHook returns a pool's Prepare hook: a code-interpreter sandbox joins the ready
// queue only after its kernel answered and ran the warm-up code. onKernel, if not nil,
// receives the kernel's info.
func WarmupHook(spec pool.Spec, onKernel func(agentapi.KernelInfo)) func(context.Context, sandbox.Info, *agentapi.Client) error {
	return func(ctx context.Context, info sandbox.Info, ag *agentapi.Client) error {
		if spec.ContainerType != pool.PythonLTS {
			return nil
		}
		code := spec.WarmupCode
		if code == "" {
			code = "None"
		}
		res, err := ag.Execute(ctx, agentapi.ExecuteRequest{Code: code, TimeoutSeconds: int(WarmupTimeout / time.Second), Warmup: true})
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

// packagesOf returns a function that lists img's Python distributions on first use.
func packagesOf(img image.Image) func() []pool.NameVersion {
	return sync.OnceValue(func() []pool.NameVersion {
		var ps []pool.NameVersion
		for _, pk := range image.PythonPackages(img.RootFS) {
			ps = append(ps, pool.NameVersion{Name: pk.Name, Version: pk.Version})
		}
		return ps
	})
}

// Metadata implements api.Pool: the image's runtimes and packages, and the kernel.
func (p *Pool) Metadata(ctx context.Context) (pool.Metadata, error) {
	if p.Manager == nil {
		return p.pendingMetadata(ctx)
	}
	p.mu.Lock()
	packages := p.packages
	md := pool.Metadata{CreatedAt: p.created, UpdatedAt: p.updated}
	p.mu.Unlock()
	md.Packages = packages()
	p.mu.Lock()
	if p.kernel != nil {
		k := *p.kernel
		md.Kernel = &k
		md.Runtimes = append(md.Runtimes, pool.NameVersion{Name: k.Language, Version: k.LanguageVersion})
	}
	p.mu.Unlock()
	return md, nil
}
