package api

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/sessiond/sessiond/internal/auth"
	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/pool"
)

// The management API (issue 7), served under /v1/ when Config.Manage is set: pools
// (list, create or replace, merge-patch, get, delete), their sessions (list, get, stop)
// and a session's executions (get), and GET /v1/openapi.json, the OpenAPI document of
// this API and of the data plane. JSON only; errors in the Azure envelope.
//
// A pool is read and written as an ARM Microsoft.App/sessionPools resource:
//
//	{"id": "/subscriptions/local/resourceGroups/local/providers/Microsoft.App/sessionPools/NAME",
//	 "name": "NAME", "type": "Microsoft.App/sessionPools",
//	 "properties": {ARM properties, with read-only poolManagementEndpoint and provisioningState},
//	 "sessiond":   {sessiond's own properties},
//	 "status":     {read-only: source, runtime, live counts, message, createdAt, updatedAt}}
//
// and PUT takes the same document (its read-only parts are ignored), so a GET body PUTs
// back unchanged. PATCH takes a JSON merge patch (RFC 7396) of it: null removes a field,
// which then takes its default.
//
// Roles, when Config.Auth is set: reading pools and sessions needs Reader on the pool,
// changing them Contributor; GET /v1/pools lists the pools the caller may read. Reading an
// execution needs SessionExecutor: its output is the session's data, which the management
// roles do not see into (auth.Role).

// Manager is the control plane as the management API sees it (controlplane.ControlPlane
// implements it). Its methods are safe for concurrent use. Errors are errkind errors; an
// error with a FieldPath() string method names the field at fault (the envelope's target).
type Manager interface {
	// ListPools returns every pool, sorted by name.
	ListPools(ctx context.Context) ([]PoolStatus, error)
	// GetPool returns the pool called name, or errkind.NotFound.
	GetPool(ctx context.Context, name string) (PoolStatus, error)
	// PutPool creates the pool called name from doc (a pool document: {"properties",
	// "sessiond"}), or replaces the definition of the existing one; created reports which.
	PutPool(ctx context.Context, name string, doc json.RawMessage) (st PoolStatus, created bool, err error)
	// PatchPool applies a JSON merge patch to the pool's document.
	PatchPool(ctx context.Context, name string, patch json.RawMessage) (PoolStatus, error)
	// DeletePool deletes the pool, destroying its sessions.
	DeletePool(ctx context.Context, name string) error
}

// PoolStatus is one pool as the control plane reports it.
type PoolStatus struct {
	Name string
	// Document is the pool's definition with every default spelled out:
	// {"properties": {...}, "sessiond": {...}}.
	Document json.RawMessage
	// Source is where the pool is defined: SourceConfig or SourceAPI.
	Source string
	// Runtime is the sandbox runtime the pool's sandboxes run on ("" if it did not start).
	Runtime string
	// State is the ARM provisioningState: ProvisioningSucceeded, ProvisioningInProgress
	// or ProvisioningFailed; Message says why it failed.
	State   string
	Message string
	Counts  pool.Counts
	// CreatedAt and UpdatedAt are when the pool was defined and last changed.
	CreatedAt, UpdatedAt time.Time
}

// Pool sources and provisioning states.
const (
	SourceConfig = "config"
	SourceAPI    = "api"

	ProvisioningSucceeded  = "Succeeded"
	ProvisioningInProgress = "InProgress"
	ProvisioningFailed     = "Failed"
)

// maxManageBody bounds a management request's body.
const maxManageBody = 1 << 20

// codeUnsupportedMediaType answers a body that is not JSON (415).
const codeUnsupportedMediaType = "UnsupportedMediaType"

// manageRoutes are the management API's routes, relative to the server root.
func (s *Server) manageRoutes() []route {
	return []route{
		{method: "GET", path: "v1/openapi.json", op: "OpenAPI", anyHost: true, current: s.openAPI},
		// Any authenticated caller; the list holds the pools it may read.
		{method: "GET", path: "v1/pools", op: "Pools_List", current: s.listPools},
		{method: "GET", path: "v1/pools/{pool}", op: "Pools_Get", role: auth.Reader, current: s.getPool},
		{method: "PUT", path: "v1/pools/{pool}", op: "Pools_CreateOrReplace", role: auth.Contributor, current: s.putPool},
		{method: "PATCH", path: "v1/pools/{pool}", op: "Pools_Update", role: auth.Contributor, current: s.patchPool},
		{method: "DELETE", path: "v1/pools/{pool}", op: "Pools_Delete", role: auth.Contributor, current: s.deletePool},
		{method: "GET", path: "v1/pools/{pool}/sessions", op: "Sessions_List", role: auth.Reader, current: s.manageListSessions},
		{method: "GET", path: "v1/pools/{pool}/sessions/{identifier}", op: "Sessions_Get", role: auth.Reader, current: s.manageGetSession},
		{method: "POST", path: "v1/pools/{pool}/sessions/{identifier}/stop", op: "Sessions_Stop", role: auth.Contributor, current: s.manageStopSession},
		{method: "GET", path: "v1/pools/{pool}/sessions/{identifier}/executions/{id}", op: "Executions_Get", role: auth.SessionExecutor, current: s.manageGetExecution},
	}
}

// poolResource is a pool as the management API renders it.
type poolResource struct {
	ID         string          `json:"id"`
	Name       string          `json:"name"`
	Type       string          `json:"type"`
	Properties map[string]any  `json:"properties"`
	Sessiond   json.RawMessage `json:"sessiond,omitempty"`
	Status     poolStatusView  `json:"status"`
}

// poolStatusView is the read-only status block.
type poolStatusView struct {
	Source    string `json:"source"`
	Runtime   string `json:"runtime,omitempty"`
	Ready     int    `json:"ready"`
	Pending   int    `json:"pending"`
	Allocated int    `json:"allocated"`
	Deleting  int    `json:"deleting"`
	Waiting   int    `json:"waiting"`
	// Outdated counts ready and pending sandboxes of an older template, being replaced.
	Outdated  int    `json:"outdated"`
	Message   string `json:"message,omitempty"`
	CreatedAt string `json:"createdAt,omitempty"`
	UpdatedAt string `json:"updatedAt,omitempty"`
}

// poolList is GET /v1/pools.
type poolList struct {
	Value []poolResource `json:"value"`
}

// poolEndpointPath is the Azure-shaped path of a pool's endpoint.
func poolEndpointPath(name string) string {
	return "/subscriptions/local/resourceGroups/local/sessionPools/" + url.PathEscape(name)
}

// baseURL is the server's URL as the request reached it.
func baseURL(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

func (s *Server) resource(r *http.Request, st PoolStatus) (poolResource, error) {
	var doc struct {
		Properties map[string]any  `json:"properties"`
		Sessiond   json.RawMessage `json:"sessiond"`
	}
	if err := json.Unmarshal(st.Document, &doc); err != nil {
		return poolResource{}, errkind.Wrap(errkind.Internal, fmt.Errorf("decoding the document of pool %s: %w", st.Name, err))
	}
	if doc.Properties == nil {
		doc.Properties = map[string]any{}
	}
	doc.Properties["poolManagementEndpoint"] = baseURL(r) + poolEndpointPath(st.Name)
	doc.Properties["provisioningState"] = st.State
	c := st.Counts
	return poolResource{
		ID:   "/subscriptions/local/resourceGroups/local/providers/Microsoft.App/sessionPools/" + st.Name,
		Name: st.Name, Type: "Microsoft.App/sessionPools", Properties: doc.Properties, Sessiond: doc.Sessiond,
		Status: poolStatusView{Source: st.Source, Runtime: st.Runtime, Ready: c.Ready, Pending: c.Pending,
			Allocated: c.Allocated, Deleting: c.Deleting, Waiting: c.Waiting, Outdated: c.Outdated,
			Message: st.Message, CreatedAt: formatTime(st.CreatedAt), UpdatedAt: formatTime(st.UpdatedAt)},
	}, nil
}

// listPools serves GET /v1/pools: the pools the caller may read.
func (s *Server) listPools(w http.ResponseWriter, r *http.Request) error {
	c := callOf(r)
	pools, err := s.cfg.Manage.ListPools(r.Context())
	if err != nil {
		return err
	}
	out := poolList{Value: []poolResource{}}
	for _, st := range pools {
		if s.cfg.Auth != nil && !c.principal.Allowed(st.Name, auth.Reader) {
			continue
		}
		res, err := s.resource(r, st)
		if err != nil {
			return err
		}
		out.Value = append(out.Value, res)
	}
	return writeJSON(w, http.StatusOK, out)
}

func (s *Server) getPool(w http.ResponseWriter, r *http.Request) error {
	name, err := poolName(r)
	if err != nil {
		return err
	}
	st, err := s.cfg.Manage.GetPool(r.Context(), name)
	if err != nil {
		return manageError(err, name)
	}
	return s.writePool(w, r, http.StatusOK, st)
}

func (s *Server) writePool(w http.ResponseWriter, r *http.Request, status int, st PoolStatus) error {
	res, err := s.resource(r, st)
	if err != nil {
		return err
	}
	return writeJSON(w, status, res)
}

// putPool serves PUT /v1/pools/{pool}: 201 when it created the pool, 200 when it
// replaced its definition.
func (s *Server) putPool(w http.ResponseWriter, r *http.Request) error {
	name, err := poolName(r)
	if err != nil {
		return err
	}
	body, err := readManageBody(r, "application/json")
	if err != nil {
		return err
	}
	st, created, err := s.cfg.Manage.PutPool(r.Context(), name, body)
	if err != nil {
		return manageError(err, name)
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
		w.Header().Set("Location", "/v1/pools/"+url.PathEscape(name))
	}
	return s.writePool(w, r, status, st)
}

// patchPool serves PATCH /v1/pools/{pool}: a JSON merge patch (RFC 7396).
func (s *Server) patchPool(w http.ResponseWriter, r *http.Request) error {
	name, err := poolName(r)
	if err != nil {
		return err
	}
	body, err := readManageBody(r, "application/merge-patch+json", "application/json")
	if err != nil {
		return err
	}
	st, err := s.cfg.Manage.PatchPool(r.Context(), name, body)
	if err != nil {
		return manageError(err, name)
	}
	return s.writePool(w, r, http.StatusOK, st)
}

// deletePool serves DELETE /v1/pools/{pool}: 204.
func (s *Server) deletePool(w http.ResponseWriter, r *http.Request) error {
	name, err := poolName(r)
	if err != nil {
		return err
	}
	if err := s.cfg.Manage.DeletePool(r.Context(), name); err != nil {
		return manageError(err, name)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// managedSession is a session as the management API renders it.
type managedSession struct {
	Identifier     string `json:"identifier"`
	SandboxID      string `json:"sandboxId"`
	State          string `json:"state"`
	CreatedAt      string `json:"createdAt"`
	LastAccessedAt string `json:"lastAccessedAt"`
	ExpiresAt      string `json:"expiresAt"`
}

func managedSessionOf(si pool.SessionInfo) managedSession {
	return managedSession{Identifier: si.Identifier, SandboxID: si.SandboxID, State: string(si.State),
		CreatedAt: formatTime(si.CreatedAt), LastAccessedAt: formatTime(si.LastAccessedAt), ExpiresAt: formatTime(si.ExpiresAt)}
}

// runningPool resolves the path's pool among the running pools.
func (s *Server) runningPool(r *http.Request) (string, Pool, error) {
	name, err := poolName(r)
	if err != nil {
		return "", nil, err
	}
	p, ok := s.cfg.Pools.Pool(name)
	if !ok {
		return "", nil, errPoolNotFound(name)
	}
	return name, p, nil
}

// pathIdentifier returns the path's session identifier, validated.
func pathIdentifier(r *http.Request) (string, error) {
	id := r.PathValue("identifier")
	if err := validateIdentifier(id); err != nil {
		return "", err
	}
	return id, nil
}

// manageListSessions serves GET /v1/pools/{pool}/sessions, sorted by identifier.
func (s *Server) manageListSessions(w http.ResponseWriter, r *http.Request) error {
	_, p, err := s.runningPool(r)
	if err != nil {
		return err
	}
	sessions := p.Sessions()
	slices.SortFunc(sessions, func(a, b pool.SessionInfo) int { return strings.Compare(a.Identifier, b.Identifier) })
	out := struct {
		Value []managedSession `json:"value"`
	}{Value: []managedSession{}}
	for _, si := range sessions {
		out.Value = append(out.Value, managedSessionOf(si))
	}
	return writeJSON(w, http.StatusOK, out)
}

// manageGetSession serves GET /v1/pools/{pool}/sessions/{identifier}. It reads the
// session without touching it: looking does not postpone its expiry.
func (s *Server) manageGetSession(w http.ResponseWriter, r *http.Request) error {
	_, p, err := s.runningPool(r)
	if err != nil {
		return err
	}
	id, err := pathIdentifier(r)
	if err != nil {
		return err
	}
	for _, si := range p.Sessions() {
		if si.Identifier == id {
			return writeJSON(w, http.StatusOK, managedSessionOf(si))
		}
	}
	return errNotFound("No session with identifier '%s' exists in session pool '%s'.", id, r.PathValue("pool"))
}

// manageStopSession serves POST /v1/pools/{pool}/sessions/{identifier}/stop: the session
// is destroyed (204); the identifier's next use gets a new one.
func (s *Server) manageStopSession(w http.ResponseWriter, r *http.Request) error {
	name, p, err := s.runningPool(r)
	if err != nil {
		return err
	}
	id, err := pathIdentifier(r)
	if err != nil {
		return err
	}
	if err := p.Delete(r.Context(), id); err != nil {
		if errkind.Is(err, errkind.NotFound) {
			return errNotFound("No session with identifier '%s' exists in session pool '%s'.", id, name)
		}
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// manageGetExecution serves GET /v1/pools/{pool}/sessions/{identifier}/executions/{id}:
// an execution as the data plane's GET executions/{id} renders it.
func (s *Server) manageGetExecution(w http.ResponseWriter, r *http.Request) error {
	name, p, err := s.runningPool(r)
	if err != nil {
		return err
	}
	identifier, err := pathIdentifier(r)
	if err != nil {
		return err
	}
	id := r.PathValue("id")
	if !validExecutionID(id) {
		return errInvalid("executionId", "Execution IDs are 1 to %d characters of letters, digits, '.', '_' and '-'.", maxExecutionID)
	}
	if p.Spec().ContainerType != pool.PythonLTS && p.Spec().ContainerType != "" {
		return errNotFound("Execution '%s' was not found: only code-interpreter pools keep executions.", id)
	}
	exe, err := s.sessionExecution(r, p, identifier, id,
		fmt.Sprintf("Execution '%s' was not found: no session has identifier '%s' in session pool '%s'.", id, identifier, name))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, kernelOutcome(exe, 0).resource(identifier, ""))
}

//go:embed openapi.json
var openAPIDocument []byte

// openAPI serves GET /v1/openapi.json.
func (s *Server) openAPI(w http.ResponseWriter, r *http.Request) error {
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	_, err := w.Write(openAPIDocument)
	return err
}

// poolName returns the path's pool name.
func poolName(r *http.Request) (string, error) {
	name := r.PathValue("pool")
	if name == "" || len(name) > 63 {
		return "", errInvalid("pool", "The pool name must be 3 to 63 characters.")
	}
	return name, nil
}

// manageError turns a control plane error into the envelope's terms: a NotFound about the
// pool is SessionPoolNotFound, and an error naming a field targets it.
func manageError(err error, name string) error {
	if errkind.Is(err, errkind.NotFound) {
		return errPoolNotFound(name)
	}
	var fe interface{ FieldPath() string }
	if errkind.Is(err, errkind.Invalid) && errors.As(err, &fe) {
		msg, _ := errkind.PublicMessage(err)
		return &apiError{status: http.StatusBadRequest, code: codeValidationFailed, msg: msg, target: fe.FieldPath(), err: err}
	}
	return err
}

// readManageBody reads a management request's JSON body (at most maxManageBody bytes)
// whose Content-Type is one of types.
func readManageBody(r *http.Request, types ...string) (json.RawMessage, error) {
	ct := r.Header.Get("Content-Type")
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil || !slices.Contains(types, strings.ToLower(mt)) {
		return nil, &apiError{status: http.StatusUnsupportedMediaType, code: codeUnsupportedMediaType, target: "Content-Type",
			msg: fmt.Sprintf("The request body must be JSON, with Content-Type %s; got %q.", strings.Join(types, " or "), ct)}
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, maxManageBody+1))
	if err != nil {
		return nil, fmt.Errorf("reading the request body: %w", err)
	}
	if len(b) > maxManageBody {
		return nil, errTooLarge("request body", maxManageBody, nil)
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '{' || !json.Valid(b) {
		return nil, errInvalid("body", "The request body must be a JSON object.")
	}
	return b, nil
}
