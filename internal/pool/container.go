package pool

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/probe"
)

// This file holds what CustomContainer pools add to a pool: the container template, and
// the end of sessions whose container died (its main process exited, as the health checks
// see, or a liveness probe failed, as Options.Watch reports).

// ContainerSpec is a CustomContainer pool's container: ARM's customContainerTemplate (its
// one container, ingress and registry credentials) and the pool's secrets.
type ContainerSpec struct {
	// Image is the reference of the image, pulled when the pool is created:
	// "registry/repo:tag" or "registry/repo@sha256:<hex>".
	Image string
	// Command replaces the image's Entrypoint, and Args its Cmd, as in Kubernetes: with
	// Command set and Args not, the image's Cmd is dropped too.
	Command, Args []string
	// Env is added to the image's environment; an entry replaces the image's of the same
	// name.
	Env []EnvVar
	// TargetPort is the port inside the sandbox that requests are forwarded to
	// (ingress.targetPort).
	TargetPort int
	// Probes are the container's Startup and Liveness probes, at most one of each type.
	// Without a Startup probe, DefaultStartupProbe applies.
	Probes []probe.Probe
	// Registry, if set, holds the credentials for pulls from its server.
	Registry *RegistryCredentials
	// InsecureRegistry allows plain HTTP and unverified TLS for the image's registry
	// (sessiond's own setting; loopback registries need no such thing).
	InsecureRegistry bool
	// Secrets are the pool's secrets (properties.secrets), by name: the values env entries
	// and the registry password refer to. They are write-only: never shown back.
	Secrets map[string]string
}

// EnvVar is one environment entry of a container: a Value, or the value of the pool's
// secret named SecretRef.
type EnvVar struct {
	Name, Value, SecretRef string
}

// RegistryCredentials are the credentials for pulls from one registry.
type RegistryCredentials struct {
	// Server is the registry host ("myregistry.azurecr.io", "localhost:5000"): the
	// credentials are sent to that registry only.
	Server string
	// Username, and the pool's secret holding the password.
	Username, PasswordSecretRef string
}

// Defaults of the startup probe of a container that configures none: a TCP connect to
// the target port every second, for up to a minute (Azure's default probe is a TCP probe
// on the target port with a one-second period).
const (
	DefaultStartupPeriodSeconds    = 1
	DefaultStartupFailureThreshold = 60
)

// DefaultStartupProbe is the startup probe of a container that configures none.
func DefaultStartupProbe(targetPort int) probe.Probe {
	return probe.Probe{Type: probe.Startup, TCPSocket: &probe.TCPSocket{Port: targetPort},
		PeriodSeconds: DefaultStartupPeriodSeconds, FailureThreshold: DefaultStartupFailureThreshold}
}

// StartupProbes returns the probes a new sandbox must pass before it joins the ready
// queue: the configured Startup probes, or DefaultStartupProbe.
func (c *ContainerSpec) StartupProbes() []probe.Probe {
	ps := c.probes(probe.Startup)
	if len(ps) == 0 {
		ps = []probe.Probe{DefaultStartupProbe(c.TargetPort)}
	}
	return ps
}

// LivenessProbes returns the configured Liveness probes, with defaults applied.
func (c *ContainerSpec) LivenessProbes() []probe.Probe { return c.probes(probe.Liveness) }

func (c *ContainerSpec) probes(t probe.Type) []probe.Probe {
	var out []probe.Probe
	for _, p := range c.Probes {
		if p = p.WithDefaults(); p.Type == t {
			out = append(out, p)
		}
	}
	return out
}

// Argv returns the container's main command, given the image's Entrypoint and Cmd:
// Command (else the Entrypoint) followed by Args (else, unless Command is set, the Cmd).
// Invalid if that is empty.
func (c *ContainerSpec) Argv(entrypoint, cmd []string) ([]string, error) {
	argv := slices.Clone(entrypoint)
	if len(c.Command) > 0 {
		argv, cmd = slices.Clone(c.Command), nil
	}
	if len(c.Args) > 0 {
		cmd = c.Args
	}
	argv = append(argv, cmd...)
	if len(argv) == 0 || argv[0] == "" {
		return nil, errkind.New(errkind.Invalid,
			"image %s has no entrypoint or command, and the template sets no command", c.Image)
	}
	return argv, nil
}

// Environ returns the container's environment: imageEnv with the template's entries added
// (replacing the image's of the same name), secrets resolved.
func (c *ContainerSpec) Environ(imageEnv []string) ([]string, error) {
	env := slices.Clone(imageEnv)
	for _, e := range c.Env {
		v := e.Value
		if e.SecretRef != "" {
			s, ok := c.Secrets[e.SecretRef]
			if !ok {
				return nil, errkind.New(errkind.Invalid, "env %s: no secret named %q", e.Name, e.SecretRef)
			}
			v = s
		}
		kv := e.Name + "=" + v
		if i := slices.IndexFunc(env, func(x string) bool { return strings.HasPrefix(x, e.Name+"=") }); i >= 0 {
			env[i] = kv
		} else {
			env = append(env, kv)
		}
	}
	return env, nil
}

// Credentials returns the registry username and password, resolved from the pool's
// secrets; "", "" without registry credentials. They are meant for Registry.Server only.
func (c *ContainerSpec) Credentials() (username, password string, err error) {
	r := c.Registry
	if r == nil {
		return "", "", nil
	}
	pw, ok := c.Secrets[r.PasswordSecretRef]
	if !ok {
		return "", "", errkind.New(errkind.Invalid, "registryCredentials.passwordSecretRef: no secret named %q", r.PasswordSecretRef)
	}
	return r.Username, pw, nil
}

// validate checks c. Errors are Invalid and name the ARM property.
func (c *ContainerSpec) validate() error {
	bad := func(format string, args ...any) error {
		return errkind.New(errkind.Invalid, "customContainerTemplate.%s", fmt.Sprintf(format, args...))
	}
	switch {
	case c.Image == "":
		return bad("containers[0].image: required")
	case !agentapi.ValidPort(c.TargetPort):
		return bad("ingress.targetPort %d: want 1 to 65535", c.TargetPort)
	}
	for i, e := range c.Env {
		switch {
		case e.Name == "" || strings.ContainsAny(e.Name, "=\x00"):
			return bad("containers[0].env[%d].name %q: want a name without '=' or NUL", i, e.Name)
		case strings.ContainsRune(e.Value, 0):
			return bad("containers[0].env[%d].value: contains a NUL byte", i)
		case e.Value != "" && e.SecretRef != "":
			return bad("containers[0].env[%d]: set value or secretRef, not both", i)
		case e.SecretRef != "" && !hasKey(c.Secrets, e.SecretRef):
			return bad("containers[0].env[%d].secretRef %q: the pool has no such secret", i, e.SecretRef)
		}
	}
	seen := map[probe.Type]bool{}
	for i, p := range c.Probes {
		if err := p.Validate(); err != nil {
			return bad("containers[0].probes[%d]: %v", i, err)
		}
		t := p.WithDefaults().Type
		if seen[t] {
			return bad("containers[0].probes[%d].type: a second %s probe", i, t)
		}
		seen[t] = true
	}
	if r := c.Registry; r != nil {
		switch {
		case r.Server == "":
			return bad("registryCredentials.server: required")
		case r.Username == "" || r.PasswordSecretRef == "":
			return bad("registryCredentials: username and passwordSecretRef are required")
		case !hasKey(c.Secrets, r.PasswordSecretRef):
			return bad("registryCredentials.passwordSecretRef %q: the pool has no such secret", r.PasswordSecretRef)
		}
	}
	return nil
}

func hasKey(m map[string]string, k string) bool {
	_, ok := m[k]
	return ok
}

// Reasons a sandbox of a custom-container pool is retired.
const (
	// reasonExited: the container's main process exited (OnContainerExit's end, and under
	// Timed the end of the session too).
	reasonExited = "container-exited"
	// reasonLiveness: a liveness probe (Options.Watch) failed.
	reasonLiveness = "liveness"
)

// ExitedError reports that a sandbox's main process, its container, has exited.
type ExitedError struct {
	State agentapi.ProcessState
}

func (e *ExitedError) Error() string {
	if e.State.Signal != "" {
		return "the container was killed by " + e.State.Signal
	}
	code := -1
	if e.State.ExitCode != nil {
		code = *e.State.ExitCode
	}
	return fmt.Sprintf("the container exited with code %d", code)
}

// exited returns h's main process state as an ExitedError if it has exited, else nil.
func exited(h agentapi.Health) error {
	if h.Main == nil || h.Main.Running {
		return nil
	}
	return &ExitedError{State: *h.Main}
}

// End ends the session served by sandbox id, whose container died (err says how: an
// *ExitedError, or a failed probe), if that sandbox still serves it: the identifier is free
// at once and the sandbox is destroyed. A ready sandbox is taken out of the ready queue.
// It reports whether it ended anything. The sandbox ID, not the identifier, names the
// session, so that a report about an old sandbox never ends the identifier's next session.
func (m *Manager) End(ctx context.Context, id string, err error) bool {
	ended := false
	_ = m.do(ctx, func() bool {
		ended = m.died(id, err)
		return ended
	})
	return ended
}

// died retires sandbox id, ready or allocated, because its container died. Owner only.
func (m *Manager) died(id string, err error) bool {
	reason := reasonLiveness
	if ee := (*ExitedError)(nil); errors.As(err, &ee) {
		reason = reasonExited
	}
	b := m.st.byID[id]
	if b == nil || (b.State != StateReady && b.State != StateAllocated) {
		return false
	}
	if b.State == StateAllocated {
		m.log.Info("session ended: its container died", "sandbox", id, "reason", reason, "err", err)
	} else {
		m.log.Warn("ready sandbox discarded: its container died", "sandbox", id, "reason", reason, "err", err)
	}
	m.st.retire(b, reason, m.clock.Now())
	return true
}

// watchTransition starts Options.Watch for a session that became allocated, and stops it
// when the session is no longer this process's to serve. Owner only.
func (m *Manager) watchTransition(t transition) {
	if m.watch == nil {
		return
	}
	switch {
	case t.To == StateAllocated && t.From != StateAllocated:
		b := m.st.byID[t.ID]
		if b == nil || m.watching[t.ID] != nil {
			return
		}
		ctx, cancel := context.WithCancel(m.life)
		m.watching[t.ID] = cancel
		info, ag, id := m.st.info(b), m.rt.Agent(t.ID), t.ID
		m.workers.Add(1)
		go func() {
			defer m.workers.Done()
			err := m.watch(ctx, info, ag)
			if err == nil || ctx.Err() != nil {
				return
			}
			select {
			case m.events <- event{kind: evDied, id: id, err: err}:
			case <-m.done:
			}
		}()
	case t.From == StateAllocated && (t.To != StateAllocated || t.Reason == reasonDetached):
		if cancel := m.watching[t.ID]; cancel != nil {
			cancel()
			delete(m.watching, t.ID)
		}
	}
}
