package pool

import (
	"context"
	"slices"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/sandbox"
)

// Updates of a running pool (the management API's PUT and PATCH).
//
// Scale and lifecycle properties (MaxConcurrentSessions, ReadySessionInstances,
// LifecycleType, CooldownPeriod, MaxAlivePeriod, ExecutionTimeoutCap) apply in place: the
// next reconcile decides by them, for the sessions already allocated too (a shorter
// cooldown can expire an idle session at once; a lower cap refuses new identifiers until
// enough sessions have ended, and ends none).
//
// Template properties (Image with its root filesystem and environment, Limits,
// WarmupCode, EgressEnabled) start a new template generation. Allocated sessions keep
// their sandboxes and state. Ready sandboxes of older generations keep serving until
// sandboxes of the new one are ready to take their place, one for one (reconcile), so an
// update costs no cold start; meanwhile new identifiers get a sandbox of the new
// generation whenever one is ready. Name, ContainerType and Runtime cannot change.

// template is what a pool's new sandboxes are made from.
type template struct {
	image   string
	rootFS  string
	kernel  string
	env     []string
	limits  sandbox.Limits
	network sandbox.Network
	// command, workDir and user are a custom container's main process.
	command []string
	workDir string
	user    *sandbox.User
	prepare func(ctx context.Context, info sandbox.Info, agent *agentapi.Client) error
}

// UpdateOptions are what an update needs besides the Spec: what the (new) image resolves
// to. The zero value keeps the current root filesystem, environment and Prepare hook;
// with RootFS set, all three are replaced (Env and Prepare as given, nil included).
type UpdateOptions struct {
	// RootFS is the image's root filesystem (Options.RootFS).
	RootFS string
	// Env is the image's environment (Options.Env).
	Env []string
	// Prepare replaces Options.Prepare.
	Prepare func(ctx context.Context, info sandbox.Info, agent *agentapi.Client) error
}

// Update changes the running pool's spec (see the comment above for what applies how). It
// returns once the change is in effect; replacing ready sandboxes goes on in the
// background (Counts().Outdated counts those left). Errors: Invalid for a spec that does
// not validate, a change of Name, ContainerType or Runtime, or a new Image without its
// RootFS; Unavailable if the pool is not running.
func (m *Manager) Update(ctx context.Context, spec Spec, opts UpdateOptions) error {
	spec, err := spec.Validate()
	if err != nil {
		return err
	}
	if err := checkImmutable(m.spec, spec); err != nil {
		return err
	}
	var uerr error
	derr := m.do(ctx, func() bool {
		cur, t := m.pol.Spec, m.tmpl
		next := *t
		next.image, next.limits, next.network = spec.Image, spec.Limits, spec.Network
		if opts.RootFS != "" {
			next.rootFS, next.env, next.prepare = opts.RootFS, opts.Env, opts.Prepare
		} else if spec.Image != cur.Image {
			uerr = errkind.New(errkind.Invalid, "session pool %s: the image changes from %q to %q but its root filesystem was not given", spec.Name, cur.Image, spec.Image)
			return false
		}
		changed := templateChanged(cur, spec) || next.rootFS != t.rootFS || !slices.Equal(next.env, t.env)
		m.tmpl = &next
		m.pol.Spec = spec
		m.st.update(m.pol, changed)
		m.cur.Store(&spec)
		// Counts shows the sandboxes to replace as soon as Update returns (step, which
		// runs next, stores it again).
		m.snap.Store(&snapshot{counts: m.st.counts(), lastErr: m.st.lastErr})
		m.log.Info("session pool updated", "template_changed", changed, "generation", m.st.gen)
		return true
	})
	if derr != nil {
		return derr
	}
	return uerr
}

// checkImmutable refuses a change of what a pool cannot change while it runs.
func checkImmutable(cur, next Spec) error {
	bad := func(field string, from, to any) error {
		return errkind.New(errkind.Invalid, "session pool %s: %s cannot change (from %q to %q); delete the pool and create it again", cur.Name, field, from, to)
	}
	switch {
	case next.Name != cur.Name:
		return bad("name", cur.Name, next.Name)
	case containerTypeOf(next) != containerTypeOf(cur):
		return bad("containerType", containerTypeOf(cur), containerTypeOf(next))
	case next.Runtime != cur.Runtime:
		return bad("runtime", cur.Runtime, next.Runtime)
	}
	return nil
}

func containerTypeOf(s Spec) ContainerType {
	if s.ContainerType == "" {
		return PythonLTS
	}
	return s.ContainerType
}

// templateChanged reports whether sandboxes made for next differ from those made for cur.
func templateChanged(cur, next Spec) bool {
	return cur.Image != next.Image || cur.Limits != next.Limits || cur.WarmupCode != next.WarmupCode ||
		!sameNetwork(cur.Network, next.Network)
}

func sameNetwork(a, b sandbox.Network) bool {
	return a.Egress == b.Egress && slices.Equal(a.AllowCIDRs, b.AllowCIDRs) && slices.Equal(a.AllowDomains, b.AllowDomains)
}

// update applies a changed policy (Manager.Update). With template, the pool's template
// changed: sandboxes created from now on belong to a new generation, and reconcile
// replaces the ready ones of older generations as new ones become ready. Allocated
// sessions are not touched; their cooldown and maximum lifetime follow the new spec.
func (st *state) update(p policy, template bool) {
	st.pol = p
	if template {
		st.gen++
	}
}
