package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/sessiond/sessiond/internal/auth"
	"log/slog"
	"net/http"
	"net/url"
	"runtime/debug"
	"strings"
	"time"

	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/pool"
)

// handlerFunc is an operation's handler. It writes a response and returns nil, or returns
// an error and writes nothing: the adapter turns the error into the Azure envelope.
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

// call is what the adapter established about a request before its handler runs.
type call struct {
	route *route
	// poolName, pool and spec are set for scopePool and scopeSession routes.
	poolName string
	pool     Pool
	spec     pool.Spec
	// apiVersion is the api-version query parameter ("" where optional and absent).
	apiVersion string
	// identifier is the validated session identifier (scopeSession only).
	identifier string
	query      query
	traceID    string
	// principal is the authenticated caller (nil without Config.Auth).
	principal *auth.Principal
}

type callKey struct{}

// callOf returns the request's call. Only handlers run by adapt may use it.
func callOf(r *http.Request) *call { return r.Context().Value(callKey{}).(*call) }

// adapt turns a route into an http.Handler: it applies the guard (guard.go), resolves the
// pool, checks api-version and identifier as the route's scope requires, runs the handler
// (picking the generation by api-version), writes the envelope for a returned error, and
// logs one line.
func (s *Server) adapt(rt route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		c := &call{route: &rt, query: parseQuery(r.URL.RawQuery), traceID: startTrace(w, r)}
		rec := &recorder{ResponseWriter: w}
		r = r.WithContext(context.WithValue(r.Context(), callKey{}, c))
		err := s.run(rec, r, c)
		if err != nil {
			if r.Context().Err() != nil && errors.Is(err, context.Canceled) {
				rec.status = statusClientClosed // the client is gone; nothing to write
			} else if rec.status == 0 {
				writeError(rec, err, c.traceID)
			}
		}
		d := time.Since(start)
		s.logRequest(r, c, rec, d, err)
		s.cfg.Metrics.Request(rt.op, rec.code(), d)
	})
}

// statusClientClosed is logged for requests whose client went away (nginx's 499).
const statusClientClosed = 499

// run establishes the call and runs the handler, converting a panic into an internal error.
func (s *Server) run(w http.ResponseWriter, r *http.Request, c *call) (err error) {
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				panic(v)
			}
			err = errkind.Wrap(errkind.Internal, fmt.Errorf("panic: %v\n%s", v, debug.Stack()))
		}
	}()
	rt := c.route
	if err := s.checkRequest(r, rt); err != nil {
		return err
	}
	if s.cfg.Auth != nil && !rt.anyHost {
		// Before the pool is looked up: without credentials, nothing is learnt about
		// which pools exist.
		var err error
		role := rt.role
		if role == "" {
			role = auth.SessionExecutor
		}
		if name := r.PathValue("pool"); name != "" {
			c.principal, err = s.cfg.Auth.Check(r, name, role)
		} else if rt.role != "" {
			c.principal, err = s.cfg.Auth.Check(r, "", role) // the role on every pool
		} else {
			c.principal, err = s.cfg.Auth.Authenticate(r.Context(), r)
		}
		if err != nil {
			return err
		}
	}
	if rt.scope >= scopePool {
		c.poolName = r.PathValue("pool")
		p, ok := s.cfg.Pools.Pool(c.poolName)
		if !ok {
			return errPoolNotFound(c.poolName)
		}
		c.pool, c.spec = p, p.Spec()
		if !rt.management && c.spec.ContainerType == pool.CustomContainer && !isReserved(r) {
			return s.forward(w, r, c) // proxy.go
		}
	}
	c.apiVersion = c.query.get("api-version")
	if rt.scope >= scopePool && !rt.versionOptional && c.apiVersion == "" {
		return errInvalid("api-version", "The api-version query parameter is required.")
	}
	if rt.scope == scopeSession {
		// Identifiers keep a literal '+': some clients do not encode them, and a space is
		// never valid in one anyway.
		c.identifier = c.query.getLiteral("identifier")
		if err := validateIdentifier(c.identifier); err != nil {
			return err
		}
	}
	h := rt.current
	if rt.legacy != nil && isLegacyVersion(c.apiVersion) {
		h = rt.legacy
	}
	return h(w, r)
}

// logRequest writes the request's one log line. Identifiers are logged only at debug
// level (though a server error's text may name one); tokens and bodies never.
func (s *Server) logRequest(r *http.Request, c *call, rec *recorder, d time.Duration, err error) {
	status := rec.code()
	level := slog.LevelInfo
	if status >= 500 && status != statusClientClosed {
		level = slog.LevelError
	}
	ctx := r.Context()
	if !s.log.Enabled(ctx, level) {
		return
	}
	attrs := []slog.Attr{
		slog.String("method", r.Method),
		slog.String("route", r.Pattern),
		slog.String("op", c.route.op),
		slog.String("pool", c.poolName),
		slog.Int("status", status),
		slog.Duration("duration", d),
		slog.String("trace_id", c.traceID),
	}
	if id := clientRequestID(r); id != "" {
		attrs = append(attrs, slog.String("client_request_id", id))
	}
	debug := s.log.Enabled(ctx, slog.LevelDebug)
	if c.identifier != "" && debug {
		attrs = append(attrs, slog.String("session", c.identifier))
	}
	if err != nil {
		_, d, _ := describe(err)
		attrs = append(attrs, slog.String("code", d.Code))
		// A client error's text names what the client sent (identifiers among it): it is
		// logged at debug level only. A server error's text is the only record of its cause.
		if status >= 500 || debug {
			attrs = append(attrs, slog.String("err", err.Error()))
		}
	}
	s.log.LogAttrs(ctx, level, "request", attrs...)
}

// recorder remembers the status a handler wrote.
type recorder struct {
	http.ResponseWriter
	status int
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// newTraceID returns 32 random hex digits (a W3C trace ID).
func newTraceID() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// query is a parsed query string. Parsing is more tolerant than url.ParseQuery: pairs are
// split on '&' only (a ';' stays in the value), names match case-insensitively, the first
// of repeated names wins, and a value that is not valid percent-encoding is taken as
// written (clients such as Semantic Kernel and AutoGen do not encode identifiers).
type query map[string]string

func parseQuery(raw string) query {
	q := query{}
	for pair := range strings.SplitSeq(raw, "&") {
		if pair == "" {
			continue
		}
		k, v, _ := strings.Cut(pair, "=")
		if name, err := url.QueryUnescape(k); err == nil {
			k = name
		}
		k = strings.ToLower(k)
		if _, dup := q[k]; !dup {
			q[k] = v
		}
	}
	return q
}

// get returns the named value decoded as a form value ('+' is a space).
func (q query) get(name string) string {
	v := q[name]
	if d, err := url.QueryUnescape(v); err == nil {
		return d
	}
	return v
}

// getLiteral returns the named value percent-decoded, with '+' kept as written.
func (q query) getLiteral(name string) string {
	v := q[name]
	if d, err := url.PathUnescape(v); err == nil {
		return d
	}
	return v
}

// has reports whether the named parameter is present.
func (q query) has(name string) bool {
	_, ok := q[name]
	return ok
}
