package image

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/sessiond/sessiond/internal/errkind"
)

// This file holds what Pull needs of HTTP: the transport, and the translation of registry
// failures into error kinds with messages that name the registry.

// responseHeaderTimeout bounds the wait for a registry to start answering a request. Whole
// downloads are bounded only by the caller's context, since big layers take long.
const responseHeaderTimeout = time.Minute

// newTransport returns the HTTP transport of one pull. Call CloseIdleConnections on it
// when the pull is done.
func newTransport(insecure bool) *schemeGuard {
	t := remote.DefaultTransport.(*http.Transport).Clone()
	t.ResponseHeaderTimeout = responseHeaderTimeout
	if insecure {
		t.TLSClientConfig = &tls.Config{InsecureSkipVerify: true}
	}
	return &schemeGuard{next: t, insecure: insecure}
}

// schemeGuard upgrades plain-HTTP requests to HTTPS unless plain HTTP was allowed or the
// host is a loopback one. go-containerregistry itself picks plain HTTP for registries on
// private addresses (10/8, 172.16/12, 192.168/16), and a registry's redirect may point to
// plain HTTP; neither should send credentials or content unprotected unless asked to.
type schemeGuard struct {
	next     http.RoundTripper
	insecure bool
}

func (g *schemeGuard) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Scheme == "http" && !g.insecure && !isLoopback(r.URL.Hostname()) {
		r = r.Clone(r.Context())
		r.URL.Scheme = "https"
	}
	return g.next.RoundTrip(r)
}

// CloseIdleConnections closes the transport's idle connections.
func (g *schemeGuard) CloseIdleConnections() {
	if c, ok := g.next.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// registryError classifies err, which happened while doing what (e.g. "fetching the
// manifest") with the registry, and gives it a message naming the registry.
func (p *puller) registryError(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return ctxErr(ctx)
	}
	reg, repo := p.registry(), p.ref.Context().RepositoryStr()
	public := func(k errkind.Kind, format string, args ...any) error {
		return &errkind.Error{Kind: k, Msg: fmt.Sprintf(format, args...), Public: true, Err: err}
	}
	var te *transport.Error
	if errors.As(err, &te) {
		status := fmt.Sprintf("%d %s", te.StatusCode, http.StatusText(te.StatusCode))
		switch {
		case te.StatusCode == http.StatusUnauthorized && p.opts.Username == "":
			return public(errkind.Invalid, "registry %s requires credentials for %s (%s)", reg, repo, status)
		case te.StatusCode == http.StatusUnauthorized:
			return public(errkind.Invalid, "registry %s rejected the credentials of user %q for %s (%s)", reg, p.opts.Username, repo, status)
		case te.StatusCode == http.StatusForbidden:
			return public(errkind.Invalid, "registry %s denied access to %s (%s)", reg, repo, status)
		case te.StatusCode == http.StatusNotFound:
			return public(errkind.NotFound, "registry %s has no %s (%s while %s)", reg, p.ref.String(), status, what)
		case te.StatusCode == http.StatusTooManyRequests || te.StatusCode >= 500:
			return public(errkind.Unavailable, "registry %s failed %s (%s); try again later", reg, what, status)
		}
		return public(errkind.Invalid, "registry %s refused %s (%s)", reg, what, status)
	}
	var ne net.Error
	var oe *net.OpError
	if errors.As(err, &oe) || errors.As(err, &ne) {
		return public(errkind.Unavailable, "registry %s cannot be reached (%s)", reg, what)
	}
	return public(errkind.Unavailable, "registry %s: %s failed", reg, what)
}

// ctxErr returns why ctx ended: its cancellation cause, classified Timeout for a deadline.
func ctxErr(ctx context.Context) error {
	err := context.Cause(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		return errkind.Wrap(errkind.Timeout, err)
	}
	return err
}
