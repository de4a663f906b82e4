// Package api serves sessiond's data plane: the REST API of Azure Container Apps dynamic
// sessions, wire-compatible with the clients written for it (LangChain, LlamaIndex, Semantic
// Kernel for Python and .NET, AutoGen, LangChain.js, langchain4j, raw REST). It serves both
// generations of the code-interpreter API (legacy code/execute and files/upload, and the
// executions, files, session, listSessions and metadata of 2024-10-02-preview and later),
// the .management operations, and GET /healthz.
//
// The wire contract is ../../shared/azure-api.md (§13 is normative). routes.go holds the
// whole route table, which dispatches by path first and api-version second; envelope.go
// alone turns errors into Azure error codes and HTTP statuses; one file per operation group
// holds the handlers (codeexecute, executions, files, sessions, pools). Handlers return
// errors, and one adapter (handler.go) writes the error envelope and the request's log line.
//
// The package does not own pools or sandboxes: it consumes them through the Pools and Pool
// interfaces below and reaches a session's sandbox only through its lease's agent client.
// It does not authenticate yet (authentication is a later issue); until it does, the guard
// (guard.go: Config.AllowedHosts and the cross-site checks) keeps web pages from using a
// server on loopback through DNS rebinding or cross-site requests. Requests to
// custom-container pools are forwarded to the session's container (proxy.go, over
// internal/proxy), but for the .management operations. cmd/sessiond wires it; nothing else
// imports it.
package api

import (
	"context"
	"github.com/sessiond/sessiond/internal/auth"
	"log/slog"
	"net/http"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/events"
	"github.com/sessiond/sessiond/internal/metrics"
	"github.com/sessiond/sessiond/internal/pool"
	"github.com/sessiond/sessiond/internal/proxy"
)

// Pools finds pools by name.
type Pools interface {
	// Pool returns the pool named name, or false. Safe for concurrent use.
	Pool(name string) (Pool, bool)
}

// Pool is what the API needs of one pool. All methods are safe for concurrent use. Every
// lease returned must be released; the API releases each one before its request ends.
type Pool interface {
	// Spec returns the pool's definition.
	Spec() pool.Spec
	// Acquire returns a lease on the session bound to identifier, binding a new session
	// from the pool first if there is none. At the pool's cap it fails with
	// errkind.LimitExceeded.
	Acquire(ctx context.Context, identifier string) (*pool.Lease, error)
	// Get returns a lease on the session bound to identifier, or errkind.NotFound if there
	// is none; it never allocates.
	Get(ctx context.Context, identifier string) (*pool.Lease, error)
	// Delete destroys the session bound to identifier, or fails with errkind.NotFound if
	// there is none. A later Acquire of the identifier gets a fresh session.
	Delete(ctx context.Context, identifier string) error
	// Sessions returns the allocated sessions, in no particular order.
	Sessions() []pool.SessionInfo
	// Metadata describes what the pool's sessions run.
	Metadata(ctx context.Context) (pool.Metadata, error)
}

// DefaultMaxUploadBytes is Azure's upload limit (128 MB; HTTP 413 above it).
const DefaultMaxUploadBytes = agentapi.MaxUpload

// Config configures a Server. The zero value of every field but Pools works.
type Config struct {
	// Pools resolves the {pool} of request paths.
	Pools Pools
	// Log receives one line per request; nil discards.
	Log *slog.Logger
	// MaxUploadBytes caps one uploaded file (0: DefaultMaxUploadBytes). Larger uploads get
	// 413 and are never buffered: the file part streams to the sandbox and is cut off.
	MaxUploadBytes int64
	// AllowedHosts, when not empty, are the only hosts the server answers for: a request
	// whose Host header, without its port, is not one of them gets 421, and a
	// state-changing request from a browser page must come from one of them (Origin).
	// Entries are host names or IP addresses ("localhost", "127.0.0.1", "::1"), matched
	// case-insensitively; a port in an entry is ignored. Set it whenever the server is
	// reachable by browsers without authentication, to stop DNS rebinding (guard.go).
	// GET /healthz answers any host.
	AllowedHosts []string
	// RejectPropertiesWrapper makes POST executions answer 400 SessionPropertiesMissing to a
	// body wrapped in {"properties":{...}}, as live Azure does (azure-api.md §3.2.1). By
	// default the wrapper is accepted and unwrapped, because third-party guides and skills
	// still send it and nothing is gained by refusing them.
	RejectPropertiesWrapper bool
	// Auth, if set, authenticates every request but GET /healthz (401 without valid
	// credentials) and requires the SessionExecutor role on the pool of the path (403);
	// the observability routes require Reader instead (observe.go).
	// nil serves everyone: only for a server reachable from loopback alone.
	Auth *auth.Authenticator
	// Metrics, if set, receives the API's measurements (requests, executions, proxied
	// requests) and is served at GET /metrics (observe.go).
	Metrics *metrics.Metrics
	// Events, if set, is served at GET /v1/pools/{pool}/events (observe.go).
	Events *events.Log
	// Manage, if set, serves the management API under /v1/ (manage.go); nil: not served.
	Manage Manager
	// Proxy forwards requests to custom-container pools (its timeouts, the session
	// identifier header); nil means one with proxy's defaults, which Close closes.
	Proxy *proxy.Proxy
}

// Server is the data-plane HTTP handler. It is safe for concurrent use and holds no state
// between requests: executions live in the sandboxes' agents, sessions in the pools.
//
// The http.Server that serves it must allow long requests: a synchronous execution may
// run for the pool's execution timeout cap (220 s by default) before it answers, and an
// upload or download may take minutes.
type Server struct {
	cfg Config
	log *slog.Logger
	mux *http.ServeMux
	// allowedHosts is cfg.AllowedHosts normalized (hostOnly).
	allowedHosts []string
	// metadataTimeout and transferTimeout bound agent calls (files.go).
	metadataTimeout, transferTimeout time.Duration
	// fallbacks are the mux patterns that answer 404 or 405; written by buildMux only.
	fallbacks map[string]bool
	// proxy forwards to custom containers; ownProxy is set when New made it.
	proxy    *proxy.Proxy
	ownProxy bool
}

// New returns a Server for cfg. It has no side effects.
func New(cfg Config) *Server {
	if cfg.MaxUploadBytes <= 0 {
		cfg.MaxUploadBytes = DefaultMaxUploadBytes
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: log.With("component", "api"), allowedHosts: allowedHosts(cfg.AllowedHosts),
		metadataTimeout: metadataTimeout, transferTimeout: transferTimeout, proxy: cfg.Proxy}
	if s.proxy == nil {
		p, err := proxy.New(proxy.Config{Log: log})
		if err != nil {
			panic("api: the default proxy configuration is invalid: " + err.Error())
		}
		s.proxy, s.ownProxy = p, true
	}
	s.mux = s.buildMux()
	return s
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mux.ServeHTTP(w, withOriginalURL(normalize(r), r))
}

// Close closes the idle connections to custom containers of the proxy New made. Requests
// in flight are not affected.
func (s *Server) Close() {
	if s.ownProxy {
		s.proxy.Close()
	}
}
