package api

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/auth"
	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/pool"
	"github.com/sessiond/sessiond/internal/proxy"
)

// Custom-container pools (azure-api.md §4.1): every request under the pool endpoint, but
// the reserved .management/ operations, goes to the container's target port in the
// session of its identifier query parameter: the session is bound on first use, and its
// lease is held for the whole exchange (a WebSocket included), so that the session does
// not expire under it and its idle timer restarts when it ends. The container sees the
// path with the pool prefix stripped, exactly as the client sent it (no normalization),
// and the query string as sent; no api-version is asked for. Credentials for sessiond
// are removed; internal/proxy adds X-Forwarded-* and the session identifier header.

// proxyRoute names forwarded requests in the log.
var proxyRoute = route{op: "ContainerProxy", scope: scopePool, versionOptional: true}

// reservedSegment starts the paths sessiond answers itself on every pool.
const reservedSegment = ".management"

// exitCheckTimeout bounds the health checks that tell a container that exited from one
// that is only not listening.
const exitCheckTimeout = 2 * time.Second

// exitGrace is how long a container that closed a connection is watched for an exit: a
// process that is exiting closes its sockets before its parent (the agent) reaps it.
// exitPoll is the interval between the health checks in that time.
const (
	exitGrace = 300 * time.Millisecond
	exitPoll  = 20 * time.Millisecond
)

// sessionEnder is what a pool may offer to end a session whose container the proxy found
// exited (controlplane.Pool does); without it the pool's own health checks end it.
type sessionEnder interface {
	End(ctx context.Context, sandboxID string, err error) bool
}

type originalURLKey struct{}

// withOriginalURL records in r2, the normalized form of r, r's URL as the client sent it.
func withOriginalURL(r2, r *http.Request) *http.Request {
	if r2 == r {
		return r
	}
	return r2.WithContext(context.WithValue(r2.Context(), originalURLKey{}, r.URL))
}

// originalURL returns the URL of r as the client sent it, before normalize.
func originalURL(r *http.Request) *url.URL {
	if u, ok := r.Context().Value(originalURLKey{}).(*url.URL); ok {
		return u
	}
	return r.URL
}

// poolPath returns the part of escaped path p after the pool's mount ("/pools/{pool}" or
// the six segments of the Azure-shaped one), with its slashes as they are, from "/". Empty
// segments before and inside the mount are skipped, as the route table matched them.
func poolPath(p string) string {
	segs := strings.Split(p, "/")
	want := 6
	for _, s := range segs {
		if s != "" {
			if s == "pools" {
				want = 2
			}
			break
		}
	}
	for i, s := range segs {
		if s == "" {
			continue
		}
		if want--; want == 0 {
			return "/" + strings.Join(segs[i+1:], "/")
		}
	}
	return "/"
}

// isReserved reports whether r's path under its pool is one sessiond answers itself.
func isReserved(r *http.Request) bool {
	rest := strings.TrimPrefix(poolPath(r.URL.EscapedPath()), "/")
	return rest == reservedSegment || strings.HasPrefix(rest, reservedSegment+"/")
}

// forward serves a request to a custom-container pool: it sends it to the container of the
// identifier's session, allocating one on first use.
func (s *Server) forward(w http.ResponseWriter, r *http.Request, c *call) error {
	c.route = &proxyRoute
	ct := c.spec.Container
	if ct == nil {
		return errNotSupported("", "Session pool '%s' has no container to forward requests to.", c.poolName)
	}
	orig := originalURL(r)
	c.identifier = parseQuery(orig.RawQuery).getLiteral("identifier")
	if err := validateIdentifier(c.identifier); err != nil {
		return err
	}
	lease, err := c.pool.Acquire(r.Context(), c.identifier)
	if err != nil {
		return err
	}
	defer lease.Release()

	out := r.Clone(r.Context())
	rest := poolPath(orig.EscapedPath())
	u := &url.URL{Path: rest, RawPath: rest, RawQuery: orig.RawQuery}
	if p, err := url.PathUnescape(rest); err == nil {
		u.Path = p
	}
	out.URL, out.RequestURI = u, ""
	auth.StripCredentials(out.Header)
	err = s.proxy.Forward(w, out, proxy.Target{Agent: lease.Agent, Port: ct.TargetPort, Identifier: c.identifier})
	if err != nil && errkind.Is(err, errkind.Unavailable) && r.Context().Err() == nil {
		if ended := s.endIfExited(r.Context(), c, lease); ended != nil {
			return ended
		}
	}
	return err
}

// endIfExited checks, after the container could not be reached, whether it has exited or
// exits within exitGrace; if so it ends the session at once (so that the identifier's next
// request gets a new one) and returns the error that says so.
func (s *Server) endIfExited(ctx context.Context, c *call, lease *pool.Lease) error {
	ctx, cancel := context.WithTimeout(ctx, exitCheckTimeout)
	defer cancel()
	state, ok := exitedWithin(ctx, lease.Agent, exitGrace)
	if !ok {
		return nil
	}
	exit := &pool.ExitedError{State: state}
	if e, ok := c.pool.(sessionEnder); ok {
		e.End(ctx, lease.Session.SandboxID, exit)
	}
	return &errkind.Error{Kind: errkind.Unavailable, Public: true, Err: exit,
		Msg: fmt.Sprintf("The session's container has ended (%s), and the session with it; the next request with this identifier gets a new session.", exit)}
}

// exitedWithin polls ag's health until its main process has exited (returning its state)
// or grace has passed, a health check failed, or ctx ended (returning false).
func exitedWithin(ctx context.Context, ag *agentapi.Client, grace time.Duration) (agentapi.ProcessState, bool) {
	deadline := time.Now().Add(grace)
	for {
		h, err := ag.Health(ctx)
		if err != nil || h.Main == nil {
			return agentapi.ProcessState{}, false
		}
		if !h.Main.Running {
			return *h.Main, true
		}
		if time.Now().Add(exitPoll).After(deadline) {
			return agentapi.ProcessState{}, false
		}
		select {
		case <-ctx.Done():
			return agentapi.ProcessState{}, false
		case <-time.After(exitPoll):
		}
	}
}
