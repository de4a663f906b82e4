package api

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/auth"
	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/events"
	"github.com/sessiond/sessiond/internal/metrics"
)

// Observability: GET /metrics (Config.Metrics), a pool's lifecycle events
// (Config.Events) and a session's console log, the trace ID of each request, and the
// measurements the handlers report. All three routes need the Reader role when
// authentication is on: /metrics on every pool (it reports them all), the others on the
// pool of the path.
//
// sessiond's own management routes live under /v1; these two are:
//
//	GET /v1/pools/{pool}/events?tail=N&after=SEQ&category=Session|Pool&identifier=ID
//	GET /v1/pools/{pool}/sessions/{identifier}/logs?tail=N

// Console log requests.
const (
	// DefaultLogTail is how many lines of a session's console GET .../logs returns by
	// default, and MaxLogTail the most it returns (the agent keeps
	// agentapi.LogBufferSize bytes of it).
	DefaultLogTail = 100
	MaxLogTail     = 10000
)

// Trace headers.
const (
	// headerTraceparent is the W3C Trace Context header: a caller's trace ID is reused as
	// the request's.
	headerTraceparent = "traceparent"
	// headerClientRequestID is the Azure SDKs' request ID; Azure services echo it in the
	// response, and so does sessiond (it is also logged). The request's own ID stays the
	// traceId of the error envelope (azure-api.md §2.3, §2.4).
	headerClientRequestID = "x-ms-client-request-id"
	// maxClientRequestID bounds an echoed client request ID (Azure allows 1 KiB).
	maxClientRequestID = 1024
)

// observeRoutes are the observability routes, by their full pattern.
func (s *Server) observeRoutes() map[string]route {
	rts := map[string]route{
		"GET /v1/pools/{pool}/sessions/{identifier}/logs": {op: "SessionLogs_Get", scope: scopePool, management: true,
			versionOptional: true, role: auth.Reader, current: s.sessionLogs},
	}
	if s.cfg.Metrics != nil {
		rts["GET /metrics"] = route{op: "Metrics", scope: scopeServer, role: auth.Reader, current: s.metrics}
	}
	if s.cfg.Events != nil {
		rts["GET /v1/pools/{pool}/events"] = route{op: "PoolEvents_List", scope: scopePool, management: true,
			versionOptional: true, role: auth.Reader, current: s.poolEvents}
	}
	return rts
}

// registerObserve registers the observability routes; buildMux calls it.
func (s *Server) registerObserve(register func(pattern string, h http.Handler)) {
	for pattern, rt := range s.observeRoutes() {
		register(pattern, s.adapt(rt))
	}
}

// metrics serves GET /metrics.
func (s *Server) metrics(w http.ResponseWriter, r *http.Request) error {
	s.cfg.Metrics.Handler().ServeHTTP(w, r)
	return nil
}

// eventList is the body of GET .../events.
type eventList struct {
	Value []events.Event `json:"value"`
}

// poolEvents serves GET /v1/pools/{pool}/events: the pool's recent events, oldest first.
func (s *Server) poolEvents(w http.ResponseWriter, r *http.Request) error {
	c := callOf(r)
	var q events.Query
	var err error
	if q.Tail, err = intParam(c.query, "tail", 0, 1, events.DefaultSize*10); err != nil {
		return err
	}
	if v := c.query.get("after"); v != "" {
		if q.After, err = strconv.ParseUint(v, 10, 64); err != nil {
			return errInvalid("after", "The after query parameter must be an event's seq; got %q.", v)
		}
	}
	switch cat := c.query.get("category"); {
	case cat == "":
	case strings.EqualFold(cat, string(events.Session)):
		q.Category = events.Session
	case strings.EqualFold(cat, string(events.Pool)):
		q.Category = events.Pool
	default:
		return errInvalid("category", "The category query parameter must be %s or %s; got %q.", events.Session, events.Pool, cat)
	}
	if c.query.has("identifier") {
		q.Identifier = c.query.getLiteral("identifier")
		if err := validateIdentifier(q.Identifier); err != nil {
			return err
		}
	}
	evs := s.cfg.Events.List(c.poolName, q)
	if evs == nil {
		evs = []events.Event{}
	}
	return writeJSON(w, http.StatusOK, eventList{Value: evs})
}

// consoleLog is the body of GET .../logs.
type consoleLog struct {
	Pool       string `json:"pool"`
	Identifier string `json:"identifier"`
	// Lines are the last lines of the console, oldest first, without their newlines.
	Lines []string `json:"lines"`
	// Truncated: the console had more lines than were returned (or more than the agent
	// keeps).
	Truncated bool `json:"truncated"`
}

// sessionLogs serves GET /v1/pools/{pool}/sessions/{identifier}/logs: the last lines of
// the console (stdout and stderr, interleaved) of the session's main process, or of its
// kernel on code-interpreter pools. Reading them is a use of the session: its idle
// timer restarts, as for any request to it.
func (s *Server) sessionLogs(w http.ResponseWriter, r *http.Request) error {
	c := callOf(r)
	c.identifier = r.PathValue("identifier")
	if err := validateIdentifier(c.identifier); err != nil {
		return err
	}
	tail, err := intParam(c.query, "tail", DefaultLogTail, 1, MaxLogTail)
	if err != nil {
		return err
	}
	lease, err := c.pool.Get(r.Context(), c.identifier)
	if errkind.Is(err, errkind.NotFound) {
		return errNotFound("No session with identifier '%s' exists in session pool '%s'.", c.identifier, c.poolName)
	}
	if err != nil {
		return err
	}
	defer lease.Release()
	ctx, cancel := s.agentContext(r, false)
	defer cancel()
	b, err := lease.Agent.Logs(ctx, 0)
	if err != nil {
		return agentError(ctx, "reading the session's console", err)
	}
	lines, truncated := lastLines(b, tail)
	// A full buffer has lost its beginning.
	truncated = truncated || len(b) >= agentapi.LogBufferSize
	return writeJSON(w, http.StatusOK, consoleLog{Pool: c.poolName, Identifier: c.identifier, Lines: lines, Truncated: truncated})
}

// lastLines returns the last n lines of b, without their newlines (a last line without
// one counts), and whether there were more. Invalid UTF-8 becomes U+FFFD.
func lastLines(b []byte, n int) ([]string, bool) {
	b = bytes.TrimSuffix(b, []byte("\n"))
	if len(b) == 0 {
		return []string{}, false
	}
	// cut ends as the index of the n-th newline from the end, or -1 if there are fewer.
	cut := len(b)
	for range n {
		if cut = bytes.LastIndexByte(b[:cut], '\n'); cut < 0 {
			break
		}
	}
	out := make([]string, 0, min(n, 256))
	for line := range bytes.SplitSeq(b[cut+1:], []byte("\n")) {
		out = append(out, strings.ToValidUTF8(string(bytes.TrimSuffix(line, []byte("\r"))), "\uFFFD"))
	}
	return out, cut >= 0
}

// intParam reads an optional integer query parameter in [lo, hi]; def if absent.
func intParam(q query, name string, def, lo, hi int) (int, error) {
	v := q.get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, errInvalid(name, "The %s query parameter must be an integer from %d to %d; got %q.", name, lo, hi, v)
	}
	return n, nil
}

// startTrace returns the request's trace ID: the trace ID of a valid W3C traceparent
// header, or a new one. It echoes a client request ID in the response.
func startTrace(w http.ResponseWriter, r *http.Request) string {
	if id := clientRequestID(r); id != "" {
		w.Header().Set(headerClientRequestID, id)
	}
	if id, ok := parseTraceparent(r.Header.Get(headerTraceparent)); ok {
		return id
	}
	return newTraceID()
}

// clientRequestID returns the request's x-ms-client-request-id, or "" if it has none or
// one that is too long or not printable ASCII.
func clientRequestID(r *http.Request) string {
	id := r.Header.Get(headerClientRequestID)
	if len(id) > maxClientRequestID {
		return ""
	}
	for i := 0; i < len(id); i++ {
		if id[i] < 0x20 || id[i] > 0x7e {
			return ""
		}
	}
	return id
}

// parseTraceparent returns the trace ID of a W3C traceparent header
// (version-traceid-parentid-flags, lowercase hex). Versions after 00 may append fields;
// version ff and all-zero IDs are invalid.
func parseTraceparent(h string) (string, bool) {
	h = strings.TrimSpace(h)
	if len(h) < 55 || (len(h) > 55 && h[55] != '-') || h[2] != '-' || h[35] != '-' || h[52] != '-' {
		return "", false
	}
	version, traceID, parentID, flags := h[0:2], h[3:35], h[36:52], h[53:55]
	if !lowerHex(version) || version == "ff" || (version == "00" && len(h) != 55) ||
		!lowerHex(traceID) || !lowerHex(parentID) || !lowerHex(flags) ||
		strings.Trim(traceID, "0") == "" || strings.Trim(parentID, "0") == "" {
		return "", false
	}
	return traceID, true
}

func lowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// code returns the status the handler wrote (200 if it wrote nothing).
func (r *recorder) code() int {
	if r.status == 0 {
		return http.StatusOK
	}
	return r.status
}

// generation names an execution's API generation for metrics.
func generation(legacy bool) string {
	if legacy {
		return metrics.APILegacy
	}
	return metrics.APICurrent
}

// executionOutcome classifies an execution for metrics: the outcome o reports, or the
// error that kept it from running.
func executionOutcome(o outcome, err error) string {
	switch {
	case errors.Is(err, context.Canceled):
		return metrics.OutcomeCanceled
	case err != nil:
		return metrics.OutcomeError
	case o.shell && o.status == "0":
		return metrics.OutcomeSucceeded
	case o.shell && o.status == strconv.Itoa(exitTimedOut):
		return metrics.OutcomeTimeout
	case o.shell:
		return metrics.OutcomeFailed
	case o.status == agentapi.StatusFailed && o.failure != nil && o.failure.Name == "TimeoutError":
		return metrics.OutcomeTimeout
	}
	return o.status // Succeeded, Failed, Canceled, Running; anything else is "other"
}

// observeExecution reports an execution run in the call's session, which took d.
func (s *Server) observeExecution(c *call, legacy bool, o outcome, err error, d time.Duration) {
	s.cfg.Metrics.Execution(c.poolName, generation(legacy), executionOutcome(o, err), d)
}
