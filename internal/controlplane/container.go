package controlplane

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/api"
	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/image"
	"github.com/sessiond/sessiond/internal/pool"
	"github.com/sessiond/sessiond/internal/probe"
	"github.com/sessiond/sessiond/internal/sandbox"
)

// This file runs CustomContainer pools: the image is pulled from its registry once, when
// the pool is created (as Azure caches it at pool creation), in the background; the pool
// answers requests meanwhile (they wait, as for a cold start) and, if the pull fails,
// stays Failed with the reason. Each sandbox runs the image's entrypoint under the agent,
// joins the ready queue once its startup probes pass, and ends its session when its
// container exits or fails a liveness probe.

// Provisioning states of a pool: ARM's provisioningState, as the API spells them.
const (
	ProvisioningInProgress = api.ProvisioningInProgress
	ProvisioningSucceeded  = api.ProvisioningSucceeded
	ProvisioningFailed     = api.ProvisioningFailed
)

const (
	// DefaultPullTimeout bounds the pull of a CustomContainer pool's image.
	DefaultPullTimeout = 15 * time.Minute
	// ContainerHealthInterval is how often a custom container's sandbox is health-checked:
	// its session ends within about that long after its container exits.
	ContainerHealthInterval = time.Second
	// exitPoll is how often a starting container's agent is asked whether the container
	// exited, so that one that cannot start fails at once rather than after its probes.
	exitPoll = 200 * time.Millisecond
	// consoleTail is how much of a failed container's output its error quotes.
	consoleTail = 1024
)

// provisioner runs the pulls of one control plane's CustomContainer pools.
type provisioner struct {
	ctx    context.Context // ends when the control plane stops
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// stop cancels the pulls in flight and waits for their goroutines.
func (pv *provisioner) stop() {
	pv.cancel()
	pv.wg.Wait()
}

// provisioning is the state of a pool that is pulled in the background.
type provisioning struct {
	done chan struct{} // closed when the pull and the build have ended
	// Set before done is closed: the pool built, or why none could be.
	pool *Pool
	err  error
}

// startContainer adds a CustomContainer pool, InProgress, and pulls its image and builds
// it in the background.
func (cp *ControlPlane) startContainer(spec pool.Spec, rt sandbox.Runtime) error {
	spec, err := spec.Validate()
	if err != nil {
		return err
	}
	p := &Pool{spec: spec, rt: rt, runtime: rt.Name(), created: time.Now().UTC(), prov: &provisioning{done: make(chan struct{})}}
	cp.mu.Lock()
	if _, dup := cp.pools[spec.Name]; dup {
		cp.mu.Unlock()
		return errkind.New(errkind.AlreadyExists, "pool %s already exists", spec.Name)
	}
	cp.pools[spec.Name] = p
	cp.order = append(cp.order, spec.Name)
	cp.mu.Unlock()
	cp.prov.wg.Go(func() { cp.provision(p) })
	return nil
}

// provision pulls p's image, builds its pool and puts it in p's place; or records why it
// could not.
func (cp *ControlPlane) provision(p *Pool) {
	spec := p.spec
	log := cp.log.With("pool", spec.Name, "image", spec.Container.Image)
	ctx, cancel := context.WithTimeout(cp.prov.ctx, cp.cfg.PullTimeout)
	defer cancel()
	start := time.Now()
	log.Info("pulling the pool's image")
	img, err := cp.pull(ctx, spec.Container)
	var built *Pool
	if err == nil {
		log.Info("pulled the pool's image", "id", img.ShortID(), "digest", img.Digest, "duration", time.Since(start))
		built, err = cp.build(ctx, spec, p.rt, img)
	}
	if err == nil {
		built.created = p.created
		cp.mu.Lock()
		current := cp.pools[spec.Name] == p
		if current {
			cp.pools[spec.Name] = built
		}
		cp.mu.Unlock()
		if !current { // the pool was removed meanwhile
			built.Manager.Close(context.WithoutCancel(ctx))
			err = errkind.New(errkind.NotFound, "pool %s was removed while its image was pulled", spec.Name)
			built = nil
		}
	}
	if err != nil {
		if cp.prov.ctx.Err() != nil {
			log.Info("pull abandoned: the control plane is stopping", "err", err)
		} else {
			log.Error("the pool failed: it serves no sessions", "err", err)
		}
		err = failedError(spec.Name, err)
	}
	p.prov.pool, p.prov.err = built, err
	close(p.prov.done)
}

// failedError is the error every request to a Failed pool gets: Unavailable, with a
// public message naming the reason.
func failedError(name string, cause error) error {
	why, ok := errkind.PublicMessage(cause)
	if !ok || why == "" {
		why = "see the server's log"
	}
	return &errkind.Error{Kind: errkind.Unavailable, Public: true, Err: cause,
		Msg: fmt.Sprintf("Session pool %s failed to start (%s); correct it and create the pool again.", name, why)}
}

// pull fetches c's image, with the pool's registry credentials when they are for the
// image's registry.
func (cp *ControlPlane) pull(ctx context.Context, c *pool.ContainerSpec) (image.Image, error) {
	opts := image.PullOptions{Insecure: c.InsecureRegistry}
	if r := c.Registry; r != nil {
		if image.SameRegistry(c.Image, r.Server) {
			var err error
			if opts.Username, opts.Password, err = c.Credentials(); err != nil {
				return image.Image{}, err
			}
		} else {
			cp.log.Warn("the registry credentials are for another registry than the image's: pulling anonymously",
				"image", c.Image, "server", r.Server)
		}
	}
	return cp.cfg.Images.Pull(ctx, c.Image, opts)
}

// containerOptions sets what a CustomContainer pool's sandboxes run: the image's
// entrypoint (or the template's command) as the image's user, in its working directory,
// with its environment and the template's, behind startup probes, watched by liveness
// probes, and health-checked often enough that a container's exit ends its session soon.
//
// The image's user runs as that uid and gid inside the sandbox, root included: the
// sandbox's root is unprivileged on the host (runc maps it to the sandbox's own host uid
// range in a user namespace; under gVisor it is root of the sentry's kernel), and it keeps
// only the agent's reduced capabilities, under no_new_privs and, for runc, seccomp. Images
// written for root (most of them: no USER line) then work as they do under Docker, within
// what the sandbox allows; running them as the unprivileged user instead would break every
// image that writes where its root owns.
func containerOptions(opts *pool.Options, spec pool.Spec, img image.Image) error {
	c := spec.Container
	argv, err := c.Argv(img.Config.Entrypoint, img.Config.Cmd)
	if err != nil {
		return err
	}
	env, err := c.Environ(img.Config.Env)
	if err != nil {
		return err
	}
	uid, gid, err := img.ResolveUser()
	if err != nil {
		return err
	}
	dir := img.Config.WorkingDir
	if dir == "" {
		dir = "/"
	}
	opts.Command, opts.Env, opts.WorkingDir, opts.User = argv, env, dir, &sandbox.User{UID: uid, GID: gid}
	opts.Kernel = ""
	opts.Prepare = startupHook(c.StartupProbes())
	if ps := c.LivenessProbes(); len(ps) > 0 {
		opts.Watch = livenessWatch(ps)
	}
	opts.HealthInterval = ContainerHealthInterval
	return nil
}

// startupHook returns the Prepare hook of a custom container's pool: a sandbox joins the
// ready queue once every startup probe has passed. It fails as soon as one probe fails
// or the container exits, quoting the end of the container's output.
func startupHook(probes []probe.Probe) func(context.Context, sandbox.Info, *agentapi.Client) error {
	return func(ctx context.Context, info sandbox.Info, ag *agentapi.Client) error {
		ctx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		defer func() { cancel(); wg.Wait() }()
		results := make(chan error, len(probes)+1) // never blocks a sender
		for _, p := range probes {
			wg.Go(func() { results <- probe.WaitStartup(ctx, ag, p) })
		}
		wg.Go(func() {
			if err := waitExit(ctx, ag); err != nil {
				results <- err
			}
		})
		for passed := 0; passed < len(probes); passed++ {
			if err := <-results; err != nil {
				return fmt.Errorf("starting the container of sandbox %s: %w%s", info.ID, err, lastOutput(ctx, ag))
			}
		}
		return nil
	}
}

// waitExit polls ag's health until the container has exited (returning a
// *pool.ExitedError) or ctx ends (returning nil).
func waitExit(ctx context.Context, ag *agentapi.Client) error {
	t := time.NewTicker(exitPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if h, err := ag.Health(ctx); err == nil && h.Main != nil && !h.Main.Running {
			return &pool.ExitedError{State: *h.Main}
		}
	}
}

// lastOutput returns the end of the container's console output, quoted, for an error.
func lastOutput(ctx context.Context, ag *agentapi.Client) string {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	b, err := ag.Logs(ctx, consoleTail)
	if err != nil || len(b) == 0 {
		return ""
	}
	return fmt.Sprintf("; its last output: %q", strings.ToValidUTF8(string(b), "\uFFFD"))
}

// livenessWatch returns the pool's Watch: the liveness probes, run on the session's
// sandbox until it ends; the first to fail ends the session.
func livenessWatch(probes []probe.Probe) func(context.Context, pool.SessionInfo, *agentapi.Client) error {
	return func(ctx context.Context, _ pool.SessionInfo, ag *agentapi.Client) error {
		ctx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		defer func() { cancel(); wg.Wait() }()
		dead := make(chan error, len(probes)) // never blocks a sender
		for _, p := range probes {
			wg.Go(func() { probe.Watch(ctx, ag, p, func(err error) { dead <- err }) })
		}
		select {
		case err := <-dead:
			return err
		case <-ctx.Done():
			return nil
		}
	}
}

// Provisioning returns the pool's provisioning state (ProvisioningInProgress while a
// CustomContainer pool's image is pulled, ProvisioningFailed with the reason, or
// ProvisioningSucceeded).
func (p *Pool) Provisioning() (string, error) {
	if p.prov == nil {
		return ProvisioningSucceeded, nil
	}
	select {
	case <-p.prov.done:
	default:
		return ProvisioningInProgress, nil
	}
	if p.prov.err != nil {
		return ProvisioningFailed, p.prov.err
	}
	return ProvisioningSucceeded, nil
}

// WaitProvisioned waits until the pool is provisioned, or ctx ends, and returns the error
// that failed it (or ctx's).
func (p *Pool) WaitProvisioned(ctx context.Context) error {
	_, err := p.await(ctx)
	return err
}

// await waits until the pool is provisioned and returns the pool that serves it (p, or the
// one built in p's place).
func (p *Pool) await(ctx context.Context) (*Pool, error) {
	if p.Manager != nil {
		return p, nil
	}
	select {
	case <-p.prov.done:
	case <-ctx.Done():
		return nil, errkind.Wrap(errkind.Timeout, fmt.Errorf("waiting for session pool %s to pull its image: %w", p.spec.Name, ctx.Err()))
	}
	if p.prov.err != nil {
		return nil, p.prov.err
	}
	return p.prov.pool, nil
}

// manager returns the pool's manager, or the error why there is none yet (nil, nil while
// in progress).
func (p *Pool) manager() (*pool.Manager, error) {
	if p.Manager != nil {
		return p.Manager, nil
	}
	select {
	case <-p.prov.done:
	default:
		return nil, nil
	}
	if p.prov.err != nil {
		return nil, p.prov.err
	}
	return p.prov.pool.Manager, nil
}

// Spec implements api.Pool.
func (p *Pool) Spec() pool.Spec {
	if m := p.Manager; m != nil {
		return m.Spec() // an update may have changed it
	}
	return p.spec
}

// Acquire implements api.Pool. While the pool's image is pulled it waits (bounded by ctx),
// as for a cold start; a Failed pool answers with the reason.
func (p *Pool) Acquire(ctx context.Context, identifier string) (*pool.Lease, error) {
	q, err := p.await(ctx)
	if err != nil {
		return nil, err
	}
	return q.Manager.Acquire(ctx, identifier)
}

// Get implements api.Pool.
func (p *Pool) Get(ctx context.Context, identifier string) (*pool.Lease, error) {
	m, err := p.manager()
	if m == nil {
		return nil, cmpErr(err, errkind.New(errkind.NotFound, "session %q not found in session pool %s", identifier, p.spec.Name))
	}
	return m.Get(ctx, identifier)
}

// Delete implements api.Pool.
func (p *Pool) Delete(ctx context.Context, identifier string) error {
	m, err := p.manager()
	if m == nil {
		return cmpErr(err, errkind.New(errkind.NotFound, "session %q not found in session pool %s", identifier, p.spec.Name))
	}
	return m.Delete(ctx, identifier)
}

// cmpErr returns err, or otherwise if err is nil.
func cmpErr(err, otherwise error) error {
	if err != nil {
		return err
	}
	return otherwise
}

// Sessions implements api.Pool.
func (p *Pool) Sessions() []pool.SessionInfo {
	if m, _ := p.manager(); m != nil {
		return m.Sessions()
	}
	return nil
}

// Counts returns the pool's live numbers (zero before it is provisioned).
func (p *Pool) Counts() pool.Counts {
	if m, _ := p.manager(); m != nil {
		return m.Counts()
	}
	return pool.Counts{}
}

// LastError returns the error of the pool's last failed sandbox create, or why the pool
// failed.
func (p *Pool) LastError() error {
	m, err := p.manager()
	if m != nil {
		return m.LastError()
	}
	return err
}

// End ends the session served by sandbox id, whose container died (pool.Manager.End).
func (p *Pool) End(ctx context.Context, id string, err error) bool {
	if m, _ := p.manager(); m != nil {
		return m.End(ctx, id, err)
	}
	return false
}

// pendingMetadata is the metadata of a pool that has no manager of its own.
func (p *Pool) pendingMetadata(ctx context.Context) (pool.Metadata, error) {
	if m, err := p.manager(); err != nil {
		return pool.Metadata{}, err
	} else if m != nil {
		return p.prov.pool.Metadata(ctx)
	}
	return pool.Metadata{CreatedAt: p.created, UpdatedAt: p.created}, nil
}

// ConsoleLogs returns the last tail bytes (0: all that is kept) of the console output,
// stdout and stderr together, of the container serving identifier's session. The agent
// keeps agentapi.LogBufferSize bytes per session. NotFound if the identifier has no
// session. It does not touch the session's idle timer.
func (p *Pool) ConsoleLogs(ctx context.Context, identifier string, tail int) ([]byte, error) {
	for _, s := range p.Sessions() {
		if s.Identifier == identifier {
			b, err := p.rt.Agent(s.SandboxID).Logs(ctx, tail)
			if err != nil {
				return nil, fmt.Errorf("reading the console of session %q: %w", identifier, err)
			}
			return b, nil
		}
	}
	return nil, errkind.New(errkind.NotFound, "session %q not found in session pool %s", identifier, p.spec.Name)
}
