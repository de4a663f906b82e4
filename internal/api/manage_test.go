package api

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/sessiond/sessiond/internal/auth"
	"github.com/sessiond/sessiond/internal/config"
	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/pool"
)

// testManager is a double of the control plane's management side: pools are documents
// validated by the real config rules, held in memory. Pool "file-pool" stands for a pool
// of the configuration file, which the API cannot change.
type testManager struct {
	mu    sync.Mutex
	pools map[string]PoolStatus
}

func newTestManager() *testManager {
	m := &testManager{pools: map[string]PoolStatus{}}
	spec := testSpec("file-pool", pool.Shell)
	m.pools["file-pool"] = PoolStatus{Name: "file-pool", Document: config.Document(spec), Source: SourceConfig, State: ProvisioningSucceeded}
	return m
}

func (m *testManager) ListPools(ctx context.Context) ([]PoolStatus, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []PoolStatus
	for _, p := range m.pools {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (m *testManager) GetPool(ctx context.Context, name string) (PoolStatus, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, ok := m.pools[name]
	if !ok {
		return p, errkind.New(errkind.NotFound, "no pool %q", name)
	}
	return p, nil
}

func (m *testManager) PutPool(ctx context.Context, name string, doc json.RawMessage) (PoolStatus, bool, error) {
	spec, err := config.PoolFromJSON(name, doc)
	if err != nil {
		return PoolStatus{}, false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	old, exists := m.pools[name]
	if exists && old.Source == SourceConfig {
		return PoolStatus{}, false, errkind.New(errkind.AlreadyExists, "pool %q is the configuration file's", name)
	}
	st := PoolStatus{Name: name, Document: config.Document(spec), Source: SourceAPI, Runtime: "fake", State: ProvisioningSucceeded,
		Counts: pool.Counts{Ready: spec.ReadySessionInstances}}
	m.pools[name] = st
	return st, !exists, nil
}

func (m *testManager) PatchPool(ctx context.Context, name string, patch json.RawMessage) (PoolStatus, error) {
	st, err := m.GetPool(ctx, name)
	if err != nil {
		return st, err
	}
	var doc, p map[string]any
	json.Unmarshal(st.Document, &doc)
	if err := json.Unmarshal(patch, &p); err != nil {
		return st, errkind.New(errkind.Invalid, "bad patch")
	}
	for k, v := range p { // a shallow merge is enough for the double
		doc[k] = v
	}
	b, _ := json.Marshal(doc)
	st, _, err = m.PutPool(ctx, name, b)
	return st, err
}

func (m *testManager) DeletePool(ctx context.Context, name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, ok := m.pools[name]
	switch {
	case !ok:
		return errkind.New(errkind.NotFound, "no pool %q", name)
	case p.Source == SourceConfig:
		return errkind.New(errkind.AlreadyExists, "pool %q is the configuration file's", name)
	}
	delete(m.pools, name)
	return nil
}

func newManageServer(t *testing.T, cfg Config) (*httptest.Server, *testManager) {
	t.Helper()
	m := newTestManager()
	cfg.Manage = m
	return newStubServer(t, cfg, nil), m
}

// TestOpenAPIDocumentsEveryRoute: the OpenAPI document lists every management and
// data-plane route the server registers, and nothing else.
func TestOpenAPIDocumentsEveryRoute(t *testing.T) {
	srv, _ := newManageServer(t, Config{})
	r := send(t, srv, "GET", "/v1/openapi.json", "", "")
	if r.status != 200 {
		t.Fatalf("GET /v1/openapi.json: %d %s", r.status, r.body)
	}
	var doc struct {
		OpenAPI string
		Paths   map[string]map[string]json.RawMessage
	}
	if err := json.Unmarshal(r.body, &doc); err != nil || !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("not an OpenAPI 3 document: %v", err)
	}
	documented := map[string]bool{}
	for path, ops := range doc.Paths {
		for method := range ops {
			if method != "parameters" {
				documented[strings.ToUpper(method)+" "+path] = true
			}
		}
	}
	s := New(Config{Manage: newTestManager()})
	registered := map[string]bool{"GET /healthz": true}
	for _, rt := range s.manageRoutes() {
		registered[rt.method+" /"+rt.path] = true
	}
	for _, rt := range s.routes() {
		registered[rt.method+" /pools/{pool}/"+strings.ReplaceAll(rt.path, "{path...}", "{path}")] = true
	}
	for r := range registered {
		if !documented[r] {
			t.Errorf("route %s is not in openapi.json", r)
		}
	}
	for d := range documented {
		if !registered[d] {
			t.Errorf("openapi.json documents %s, which is not a route", d)
		}
	}
}

func TestManageNotServedWithoutManager(t *testing.T) {
	srv := newStubServer(t, Config{}, nil)
	for _, p := range []string{"/v1/pools", "/v1/pools/python", "/v1/openapi.json"} {
		if r := send(t, srv, "GET", p, "", ""); r.status != 404 {
			t.Errorf("GET %s without a Manager: %d", p, r.status)
		}
	}
}

// TestManagePools drives the pool operations over HTTP: shapes, statuses and errors.
func TestManagePools(t *testing.T) {
	srv, _ := newManageServer(t, Config{})
	doc := `{"properties": {"containerType": "Shell", "scaleConfiguration": {"maxConcurrentSessions": 3, "readySessionInstances": 1}}}`
	r := send(t, srv, "PUT", "/v1/pools/my-pool", "application/json", doc)
	if r.status != 201 || r.header.Get("Location") != "/v1/pools/my-pool" {
		t.Fatalf("PUT: %d %v %s", r.status, r.header, r.body)
	}
	var res struct {
		ID, Name, Type string
		Properties     map[string]any
		Sessiond       map[string]any
		Status         map[string]any
	}
	if err := json.Unmarshal(r.body, &res); err != nil {
		t.Fatal(err)
	}
	if res.ID != "/subscriptions/local/resourceGroups/local/providers/Microsoft.App/sessionPools/my-pool" || res.Name != "my-pool" ||
		res.Type != "Microsoft.App/sessionPools" || res.Properties["poolManagementEndpoint"] != srv.URL+"/subscriptions/local/resourceGroups/local/sessionPools/my-pool" ||
		res.Properties["provisioningState"] != "Succeeded" || res.Properties["containerType"] != "Shell" ||
		res.Sessiond["image"] != "python" || res.Status["source"] != "api" || res.Status["ready"] != 1.0 {
		t.Errorf("PUT answered %s", r.body)
	}
	got := send(t, srv, "GET", "/v1/pools/my-pool", "", "")
	if got.status != 200 || string(got.body) != string(r.body) {
		t.Errorf("GET: %d %s", got.status, got.body)
	}
	// The GET body PUTs back unchanged.
	again := send(t, srv, "PUT", "/v1/pools/my-pool", "application/json; charset=utf-8", string(got.body))
	if again.status != 200 || string(again.body) != string(got.body) {
		t.Errorf("PUT of the GET body: %d %s", again.status, again.body)
	}
	p := send(t, srv, "PATCH", "/v1/pools/my-pool", "application/merge-patch+json", `{"sessiond": {"image": "python-small"}}`)
	if p.status != 200 || !strings.Contains(string(p.body), `"image":"python-small"`) {
		t.Errorf("PATCH: %d %s", p.status, p.body)
	}
	list := send(t, srv, "GET", "/v1/pools", "", "")
	var l struct{ Value []struct{ Name string } }
	json.Unmarshal(list.body, &l)
	if list.status != 200 || len(l.Value) != 2 || l.Value[0].Name != "file-pool" || l.Value[1].Name != "my-pool" {
		t.Errorf("GET /v1/pools: %d %s", list.status, list.body)
	}
	if r := send(t, srv, "DELETE", "/v1/pools/my-pool", "", ""); r.status != 204 || len(r.body) != 0 {
		t.Errorf("DELETE: %d %s", r.status, r.body)
	}
	if r := send(t, srv, "GET", "/v1/pools/my-pool", "", ""); r.status != 404 || r.err.Code != codePoolNotFound {
		t.Errorf("GET after DELETE: %d %+v", r.status, r.err)
	}
	if r := send(t, srv, "DELETE", "/v1/pools/file-pool", "", ""); r.status != 409 || !strings.Contains(r.err.Message, "configuration file") {
		t.Errorf("DELETE of the file's pool: %d %+v", r.status, r.err)
	}
}

// TestManageBadRequests: every malformed request is refused with a clear envelope.
func TestManageBadRequests(t *testing.T) {
	srv, _ := newManageServer(t, Config{})
	for _, tc := range []struct {
		method, path, ct, body string
		status                 int
		code, target           string
	}{
		{"PUT", "/v1/pools/pool-1", "text/plain", `{}`, 415, codeUnsupportedMediaType, "Content-Type"},
		{"PUT", "/v1/pools/pool-1", "", `{}`, 415, codeUnsupportedMediaType, "Content-Type"},
		{"PATCH", "/v1/pools/file-pool", "application/x-www-form-urlencoded", `a=b`, 415, codeUnsupportedMediaType, "Content-Type"},
		{"PUT", "/v1/pools/pool-1", "application/json", `[1]`, 400, codeValidationFailed, "body"},
		{"PUT", "/v1/pools/pool-1", "application/json", `{"properties": `, 400, codeValidationFailed, "body"},
		{"PUT", "/v1/pools/pool-1", "application/json", `{"sessiond": {"imag": "x"}}`, 400, codeValidationFailed, "sessiond.imag"},
		{"PUT", "/v1/pools/pool-1", "application/json", `{"properties": {"scaleConfiguration": {"maxConcurrentSessions": 0}}}`, 400, codeValidationFailed, "properties.scaleConfiguration.maxConcurrentSessions"},
		{"PUT", "/v1/pools/Bad_Name", "application/json", `{}`, 400, codeValidationFailed, "name"},
		{"PUT", "/v1/pools/pool-1", "application/json", `{"sessiond": {"warmupCode": "` + strings.Repeat("x", maxManageBody) + `"}}`, 413, codeTooLarge, ""},
		{"PUT", "/v1/pools/file-pool", "application/json", `{}`, 409, codeConflict, ""},
		{"PATCH", "/v1/pools/nope", "application/json", `{}`, 404, codePoolNotFound, ""},
		{"POST", "/v1/pools/pool-1", "application/json", `{}`, 405, codeMethodNotAllowed, ""},
		{"DELETE", "/v1/pools", "", ``, 405, codeMethodNotAllowed, ""},
		{"GET", "/v1/pools/pool-1/nothing", "", ``, 404, codeNotFound, ""},
		{"GET", "/v1/pools/python/sessions/ab", "", ``, 400, codeValidationFailed, "identifier"},
		{"GET", "/v1/pools/nope/sessions", "", ``, 404, codePoolNotFound, ""},
		{"GET", "/v1/pools/python/sessions/good-id/executions/bad%20id", "", ``, 400, codeValidationFailed, "executionId"},
	} {
		r := send(t, srv, tc.method, tc.path, tc.ct, tc.body)
		if r.status != tc.status || r.err.Code != tc.code || r.err.Target != tc.target {
			t.Errorf("%s %s (%s): %d %+v, want %d %s target %q", tc.method, tc.path, tc.ct, r.status, r.err, tc.status, tc.code, tc.target)
		}
		if tc.status == 405 && r.header.Get("Allow") == "" {
			t.Errorf("%s %s: 405 without Allow", tc.method, tc.path)
		}
	}
}

// TestManageAuth: reads need Reader, writes Contributor, executions SessionExecutor; the
// list shows the pools the caller may read.
func TestManageAuth(t *testing.T) {
	keys := map[string][]string{ // key → roles
		"reader-key-0123456789":      {"Reader"},
		"contributor-key-0123456789": {"Contributor"},
		"executor-key-0123456789":    {"SessionExecutor"},
	}
	var cfg auth.Config
	for k, roles := range keys {
		cfg.APIKeys = append(cfg.APIKeys, auth.APIKeyConfig{Name: roles[0], Hash: auth.HashAPIKey(k), Roles: roles})
	}
	cfg.APIKeys = append(cfg.APIKeys, auth.APIKeyConfig{Name: "scoped", Hash: auth.HashAPIKey("scoped-key-0123456789"),
		Roles: []string{"Reader"}, Pools: []string{"file-pool"}})
	authn, err := auth.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, _ := newManageServer(t, Config{Auth: authn})
	as := func(key, method, path, body string) response {
		req := newRequest(t, srv, method, path, "application/json", body)
		if key != "" {
			req.Header.Set("api-key", key)
		}
		return do(t, req)
	}
	const doc = `{"properties": {"containerType": "Shell"}}`
	for _, tc := range []struct {
		key, method, path, body string
		status                  int
	}{
		{"", "GET", "/v1/pools", "", 401},
		{"", "GET", "/v1/pools/file-pool", "", 401},
		{"reader-key-0123456789", "GET", "/v1/pools/file-pool", "", 200},
		{"reader-key-0123456789", "PUT", "/v1/pools/new-pool", doc, 403},
		{"executor-key-0123456789", "GET", "/v1/pools/file-pool", "", 403},
		{"contributor-key-0123456789", "PUT", "/v1/pools/new-pool", doc, 201},
		{"contributor-key-0123456789", "GET", "/v1/pools/new-pool", "", 200},
		{"reader-key-0123456789", "PATCH", "/v1/pools/new-pool", `{}`, 403},
		{"reader-key-0123456789", "DELETE", "/v1/pools/new-pool", "", 403},
		{"reader-key-0123456789", "GET", "/v1/pools/shell/sessions", "", 200},
		{"reader-key-0123456789", "POST", "/v1/pools/shell/sessions/some-id/stop", "", 403},
		{"reader-key-0123456789", "GET", "/v1/pools/python/sessions/some-id/executions/x1", "", 403},
		{"executor-key-0123456789", "GET", "/v1/pools/python/sessions/some-id/executions/x1", "", 404},
		{"scoped-key-0123456789", "GET", "/v1/pools/new-pool", "", 403},
		{"", "GET", "/v1/openapi.json", "", 200},
		{"contributor-key-0123456789", "DELETE", "/v1/pools/new-pool", "", 204},
	} {
		if r := as(tc.key, tc.method, tc.path, tc.body); r.status != tc.status {
			t.Errorf("%s %s with %q: %d %s, want %d", tc.method, tc.path, tc.key, r.status, r.body, tc.status)
		}
	}
	// Listing shows what the caller may read.
	as("contributor-key-0123456789", "PUT", "/v1/pools/other-pool", doc)
	for key, want := range map[string][]string{
		"reader-key-0123456789": {"file-pool", "other-pool"},
		"scoped-key-0123456789": {"file-pool"},
	} {
		r := as(key, "GET", "/v1/pools", "")
		var l struct{ Value []struct{ Name string } }
		json.Unmarshal(r.body, &l)
		var names []string
		for _, v := range l.Value {
			names = append(names, v.Name)
		}
		if r.status != 200 || !slices.Equal(names, want) {
			t.Errorf("GET /v1/pools as %s: %d %v, want %v", key, r.status, names, want)
		}
	}
}

// TestManageSessions lists, reads and stops sessions of a pool on real agents.
func TestManageSessions(t *testing.T) {
	pools := newTestPools(t, false)
	s := New(Config{Pools: pools, Manage: newTestManager()})
	srv := httptest.NewServer(s)
	defer srv.Close()
	l, err := pools["shell"].Acquire(context.Background(), "sess/one")
	if err != nil {
		t.Fatal(err)
	}
	l.Release()
	r := sendTo(t, srv, "GET", "/v1/pools/shell/sessions")
	var list struct {
		Value []struct{ Identifier, SandboxID, State, CreatedAt, ExpiresAt string }
	}
	json.Unmarshal(r.body, &list)
	if r.status != 200 || len(list.Value) != 1 || list.Value[0].Identifier != "sess/one" || list.Value[0].State != "Allocated" ||
		list.Value[0].SandboxID != l.Session.SandboxID || list.Value[0].ExpiresAt == "" {
		t.Fatalf("list: %d %s", r.status, r.body)
	}
	if r := sendTo(t, srv, "GET", "/v1/pools/shell/sessions/sess%2Fone"); r.status != 200 || !strings.Contains(string(r.body), `"identifier":"sess/one"`) {
		t.Errorf("get: %d %s", r.status, r.body)
	}
	if r := sendTo(t, srv, "GET", "/v1/pools/shell/sessions/sess%2Fone/executions/x1"); r.status != 404 {
		t.Errorf("execution on a Shell pool: %d %s", r.status, r.body)
	}
	if r := sendTo(t, srv, "POST", "/v1/pools/shell/sessions/sess%2Fone/stop"); r.status != 204 {
		t.Errorf("stop: %d %s", r.status, r.body)
	}
	for _, m := range []string{"GET", "POST"} {
		path := "/v1/pools/shell/sessions/sess%2Fone"
		if m == "POST" {
			path += "/stop"
		}
		if r := sendTo(t, srv, m, path); r.status != 404 {
			t.Errorf("%s %s after stop: %d %s", m, path, r.status, r.body)
		}
	}
}

func sendTo(t *testing.T, srv *httptest.Server, method, path string) response {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	return do(t, req)
}
