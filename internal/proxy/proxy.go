// Package proxy forwards HTTP requests to a port inside a sandbox: the request proxying of
// custom-container session pools (azure-api.md §4.1). Each request goes over a tunnel
// through the sandbox's agent (agentapi.Client.DialTunnel), so ingress needs no IP
// networking on the host. It is net/http/httputil.ReverseProxy underneath: bodies stream
// both ways without being held whole, responses are flushed as they arrive (server-sent
// events), and protocol upgrades (WebSocket) are carried through.
//
// What the container receives: the method, the path the caller passes in (the pool prefix
// already stripped), the query string as sent (identifier and api-version included), the
// client's headers and Host, without hop-by-hop headers and sessiond's credentials, with
// X-Forwarded-For/-Host/-Proto describing the client's connection to sessiond (values the
// client sent in those are dropped), and the session identifier in
// SessionIdentifierHeader.
//
// It does not find sessions, authenticate or render errors: the caller resolves the
// session's sandbox and renders the errors Forward returns (in the Azure envelope). It
// imports agentapi and errkind.
package proxy

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
)

// SessionIdentifierHeader carries the session identifier to the container. Azure does not
// document one (azure-api.md §4.1); this name follows its x-ms- headers. A value the client
// sent in it is replaced.
const SessionIdentifierHeader = "X-Ms-Session-Identifier"

// strippedHeaders are the client's credentials for sessiond (every header internal/auth
// reads one from), which the container must not see. Proxy-Authorization goes as a
// hop-by-hop header.
var strippedHeaders = []string{"Authorization", "Api-Key", "X-Ms-Apikey"}

// Defaults of Config.
const (
	// DefaultResponseHeaderTimeout is how long the container gets to start its answer:
	// the request timeout of Azure Container Apps ingress. A streaming answer may last
	// longer once its headers are sent.
	DefaultResponseHeaderTimeout = 240 * time.Second
	// DefaultDialTimeout bounds opening a tunnel: reaching the agent and its connect to the
	// container's port.
	DefaultDialTimeout = 10 * time.Second
	// DefaultMaxIdleTunnels is how many idle tunnels are kept per sandbox and port for
	// keep-alive. They count against the agent's cap (agent.DefaultMaxTunnels).
	DefaultMaxIdleTunnels = 8
	// idleTunnelTimeout closes a kept tunnel nobody used for that long.
	idleTunnelTimeout = 30 * time.Second
	// maxResponseHeaderBytes caps the container's response headers.
	maxResponseHeaderBytes = 1 << 20
)

// Config configures a Proxy. The zero value takes the defaults.
type Config struct {
	// ResponseHeaderTimeout bounds the wait for the container's response headers after
	// the request (and its body) is sent; default DefaultResponseHeaderTimeout.
	ResponseHeaderTimeout time.Duration
	// DialTimeout bounds opening a tunnel; default DefaultDialTimeout.
	DialTimeout time.Duration
	// MaxIdleTunnels is how many idle tunnels are kept per sandbox and port; default
	// DefaultMaxIdleTunnels.
	MaxIdleTunnels int
	// IdentifierHeader names the header carrying the session identifier; default
	// SessionIdentifierHeader.
	IdentifierHeader string
	// Log receives what goes wrong after a response has started; nil discards it.
	Log *slog.Logger
}

// Target is where one request goes: a port on the loopback of the sandbox behind Agent,
// serving the session Identifier.
type Target struct {
	Agent      *agentapi.Client
	Port       int
	Identifier string
}

// Proxy forwards requests into sandboxes. It keeps idle tunnels per sandbox and port for
// keep-alive; one Proxy can serve every pool. It is safe for concurrent use.
type Proxy struct {
	cfg Config
	log *slog.Logger
	tr  *http.Transport
	rp  *httputil.ReverseProxy
}

// New returns a Proxy for cfg. Bad settings (negative durations, a header name that is not
// one) are Invalid errors.
func New(cfg Config) (*Proxy, error) {
	if cfg.ResponseHeaderTimeout == 0 {
		cfg.ResponseHeaderTimeout = DefaultResponseHeaderTimeout
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.MaxIdleTunnels == 0 {
		cfg.MaxIdleTunnels = DefaultMaxIdleTunnels
	}
	if cfg.IdentifierHeader == "" {
		cfg.IdentifierHeader = SessionIdentifierHeader
	}
	if cfg.ResponseHeaderTimeout < 0 || cfg.DialTimeout < 0 || cfg.MaxIdleTunnels < 0 {
		return nil, errkind.New(errkind.Invalid, "proxy: negative timeout or idle tunnel count in %+v", cfg)
	}
	if !validHeaderName(cfg.IdentifierHeader) {
		return nil, errkind.New(errkind.Invalid, "proxy: %q is not a header name", cfg.IdentifierHeader)
	}
	cfg.IdentifierHeader = http.CanonicalHeaderKey(cfg.IdentifierHeader)
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Proxy{cfg: cfg, log: log.With("component", "proxy")}
	p.tr = &http.Transport{
		DialContext:            p.dial,
		MaxIdleConnsPerHost:    cfg.MaxIdleTunnels,
		IdleConnTimeout:        idleTunnelTimeout,
		ResponseHeaderTimeout:  cfg.ResponseHeaderTimeout,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: maxResponseHeaderBytes,
		// The container's encoding passes through untouched.
		DisableCompression: true,
		WriteBufferSize:    32 << 10,
		ReadBufferSize:     32 << 10,
	}
	p.rp = &httputil.ReverseProxy{
		Rewrite:   p.rewrite,
		Transport: p.tr,
		// Every write is flushed at once: server-sent events and other streams reach
		// the client as the container writes them.
		FlushInterval: -1,
		ErrorHandler: func(_ http.ResponseWriter, r *http.Request, err error) {
			if c := callOf(r.Context()); c.err == nil {
				c.err = err
			}
		},
		ErrorLog: slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
	}
	return p, nil
}

// Close closes the idle tunnels. Requests in flight are not affected.
func (p *Proxy) Close() { p.tr.CloseIdleConnections() }

// call is one forwarded request's state, carried in its context to the Rewrite, dial and
// error hooks of the ReverseProxy.
type call struct {
	target Target
	// host names the target's connection pool: one per sandbox and port, so a kept tunnel
	// is never used for another sandbox.
	host string
	// err is the first error the ReverseProxy reported.
	err error
}

type callKey struct{}

func callOf(ctx context.Context) *call {
	c, _ := ctx.Value(callKey{}).(*call)
	return c
}

// Forward sends r to t and copies the answer to w. It returns nil once the answer has
// been sent (or at least started: a failure after that is logged, and a broken stream
// aborts the client's connection). Otherwise nothing has been written and the error says
// why, classified for the caller to render:
//
//   - Unavailable: nothing listens on the port, the sandbox's agent is gone, or the
//     container broke the connection or answered something that is not HTTP;
//   - Timeout: no tunnel within DialTimeout, or no response headers within
//     ResponseHeaderTimeout;
//   - LimitExceeded: the sandbox has its maximum of tunnels open;
//   - Internal: a bad Target.
//
// Messages are public and name no host path. When the client went away the error wraps
// context.Canceled. r's URL path is forwarded as is: strip any prefix before.
func (p *Proxy) Forward(w http.ResponseWriter, r *http.Request, t Target) error {
	if t.Agent == nil || !agentapi.ValidPort(t.Port) {
		return errkind.Wrap(errkind.Internal, fmt.Errorf("proxy: bad target: agent %v, port %d", t.Agent, t.Port))
	}
	c := &call{target: t, host: poolHost(t)}
	tw := &trackingWriter{ResponseWriter: w}
	p.rp.ServeHTTP(tw, r.WithContext(context.WithValue(r.Context(), callKey{}, c)))
	if c.err == nil {
		return nil
	}
	if tw.started {
		p.log.Debug("proxied response failed after it started", "port", t.Port, "err", c.err)
		return nil
	}
	return p.classify(r.Context(), c.err)
}

// Handler returns a handler that forwards each request to port in the sandbox resolve
// finds for it. When resolve or Forward fails, onError renders the error (nothing has
// been written then).
func (p *Proxy) Handler(port int, resolve func(*http.Request) (*agentapi.Client, string, error), onError func(http.ResponseWriter, *http.Request, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ag, id, err := resolve(r)
		if err == nil {
			err = p.Forward(w, r, Target{Agent: ag, Port: port, Identifier: id})
		}
		if err != nil {
			onError(w, r, err)
		}
	})
}

func (p *Proxy) rewrite(pr *httputil.ProxyRequest) {
	c := callOf(pr.In.Context())
	out := pr.Out
	out.URL.Scheme = "http"
	out.URL.Host = c.host
	out.Host = pr.In.Host // the container sees the Host the client sent
	if out.URL.Path == "" {
		out.URL.Path, out.URL.RawPath = "/", ""
	}
	pr.SetXForwarded()
	for _, h := range strippedHeaders {
		out.Header.Del(h)
	}
	out.Header.Del(p.cfg.IdentifierHeader)
	if c.target.Identifier != "" {
		out.Header.Set(p.cfg.IdentifierHeader, c.target.Identifier)
	}
}

// dial opens a tunnel to the target of the request that asked for the connection. The
// Transport only reuses the connection for requests with the same pool host, that is to
// the same sandbox and port.
func (p *Proxy) dial(ctx context.Context, _, _ string) (net.Conn, error) {
	c := callOf(ctx)
	if c == nil {
		return nil, errkind.Wrap(errkind.Internal, errors.New("proxy: dial outside a forwarded request"))
	}
	ctx, cancel := context.WithTimeout(ctx, p.cfg.DialTimeout)
	defer cancel()
	return c.target.Agent.DialTunnel(ctx, c.target.Port)
}

// poolHost names t's connection pool: a hash of the agent's socket, and the port.
func poolHost(t Target) string {
	sum := sha256.Sum256([]byte(t.Agent.Socket()))
	return hex.EncodeToString(sum[:12]) + ".sandbox:" + strconv.Itoa(t.Port)
}

// classify turns a failure of the ReverseProxy into an error for the caller.
func (p *Proxy) classify(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return errkind.Wrap(errkind.Unavailable, fmt.Errorf("proxy: the client went away: %w: %w", ctx.Err(), err))
	}
	var ke *errkind.Error
	if errors.As(err, &ke) && ke.Kind != errkind.Internal {
		// From the tunnel: the agent's message says what the sandbox did.
		msg, ok := errkind.PublicMessage(err)
		if !ok || msg == "" {
			msg = "the session's sandbox is not reachable"
		}
		msg = strings.TrimPrefix(msg, "tunnel: ")
		return &errkind.Error{Kind: ke.Kind, Public: true, Err: err, Msg: "The session's container cannot be reached: " + msg + "."}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return &errkind.Error{Kind: errkind.Timeout, Public: true, Err: err,
			Msg: fmt.Sprintf("The session's container did not answer within %v.", p.cfg.ResponseHeaderTimeout)}
	}
	return &errkind.Error{Kind: errkind.Unavailable, Public: true, Err: err,
		Msg: "The session's container closed the connection or did not answer with HTTP."}
}

// trackingWriter records whether the response has started, so that Forward knows whether
// an error can still be rendered. It keeps the writer's abilities: Flush through Unwrap,
// Hijack explicitly (to record it).
type trackingWriter struct {
	http.ResponseWriter
	started bool
}

func (w *trackingWriter) WriteHeader(code int) {
	if code >= 200 || code == http.StatusSwitchingProtocols {
		w.started = true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *trackingWriter) Write(b []byte) (int, error) {
	w.started = true
	return w.ResponseWriter.Write(b)
}

func (w *trackingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *trackingWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err == nil {
		w.started = true
	}
	return conn, brw, err
}

// validHeaderName reports whether s is an HTTP header name (RFC 9110 token).
func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("!#$%&'*+-.^_`|~", c)) {
			return false
		}
	}
	return true
}
