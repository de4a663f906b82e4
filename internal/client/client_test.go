package client_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/api"
	"github.com/sessiond/sessiond/internal/client"
	"github.com/sessiond/sessiond/internal/controlplane/controlplanetest"
	"github.com/sessiond/sessiond/internal/pool"
)

func TestMain(m *testing.M) { controlplanetest.VerifyTestMain(m) }

// server is a real control plane behind the real API, over Fake sandboxes.
func server(t *testing.T, specs ...pool.Spec) (*controlplanetest.Env, *client.Client) {
	t.Helper()
	e := controlplanetest.New(t, specs...)
	srv := httptest.NewServer(api.New(api.Config{Pools: e.CP, Manage: e.CP}))
	t.Cleanup(srv.Close)
	t.Cleanup(srv.Client().CloseIdleConnections)
	return e, &client.Client{Endpoint: srv.URL, HTTP: srv.Client()}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

const shellPool = `{"properties": {"containerType": "Shell", "scaleConfiguration": {"maxConcurrentSessions": 3, "readySessionInstances": 1},
  "dynamicPoolConfiguration": {"lifecycleConfiguration": {"cooldownPeriodInSeconds": 120}}}, "sessiond": {"image": "img-a"}}`

// TestPoolRoundTrip: create, read, put back, merge-patch and delete a pool over HTTP.
func TestPoolRoundTrip(t *testing.T) {
	_, c := server(t)
	p, created, err := c.PutPool(ctx(t), "shells", json.RawMessage(shellPool))
	if err != nil || !created {
		t.Fatalf("PutPool: %v, created %v", err, created)
	}
	if p.Name != "shells" || p.Status.Source != "api" || p.Properties["containerType"] != "Shell" ||
		!strings.HasSuffix(p.ManagementEndpoint(), "/subscriptions/local/resourceGroups/local/sessionPools/shells") {
		t.Errorf("created %+v", p)
	}
	got, err := c.GetPool(ctx(t), "shells")
	if err != nil {
		t.Fatal(err)
	}
	// What GET returns PUTs back: same definition, nothing created.
	again, created, err := c.PutPool(ctx(t), "shells", got)
	if err != nil || created {
		t.Fatalf("PutPool of the GET body: %v, created %v", err, created)
	}
	delete(again.Properties, "provisioningState") // state, not definition: it moves on
	delete(got.Properties, "provisioningState")
	if a, b := mustJSON(t, again.Properties), mustJSON(t, got.Properties); a != b {
		t.Errorf("properties changed by putting them back:\n%s\n%s", b, a)
	}
	// Merge patch: a change and a removal.
	p, err = c.PatchPool(ctx(t), "shells", map[string]any{"properties": map[string]any{
		"scaleConfiguration":       map[string]any{"readySessionInstances": 0},
		"dynamicPoolConfiguration": map[string]any{"lifecycleConfiguration": map[string]any{"cooldownPeriodInSeconds": nil}}}})
	if err != nil {
		t.Fatal(err)
	}
	lc := p.Properties["dynamicPoolConfiguration"].(map[string]any)["lifecycleConfiguration"].(map[string]any)
	sc := p.Properties["scaleConfiguration"].(map[string]any)
	if lc["cooldownPeriodInSeconds"] != 300.0 || sc["readySessionInstances"] != 0.0 || sc["maxConcurrentSessions"] != 3.0 {
		t.Errorf("patched: %s", mustJSON(t, p.Properties))
	}
	list, err := c.ListPools(ctx(t))
	if err != nil || len(list) != 1 || list[0].Name != "shells" {
		t.Errorf("ListPools = %+v, %v", list, err)
	}
	if err := c.DeletePool(ctx(t), "shells"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetPool(ctx(t), "shells"); !client.IsNotFound(err) {
		t.Errorf("GetPool after delete: %v", err)
	}
}

// TestPoolValidationOverHTTP: every property's bad value is a 400 whose target names it,
// for a create (PUT) and for an update (PATCH) alike.
func TestPoolValidationOverHTTP(t *testing.T) {
	_, c := server(t)
	if _, _, err := c.PutPool(ctx(t), "valid", json.RawMessage(`{"properties": {"containerType": "Shell", "scaleConfiguration": {"readySessionInstances": 0}}, "sessiond": {"image": "img-a"}}`)); err != nil {
		t.Fatal(err)
	}
	const lc = "properties.dynamicPoolConfiguration.lifecycleConfiguration"
	for _, tc := range []struct {
		patch, target string
	}{
		{`{"name": "other"}`, "name"},
		{`{"properties": {"containerType": "PythonLTS"}}`, "properties.containerType"},
		{`{"properties": {"containerType": "Cobol"}}`, "properties.containerType"},
		{`{"properties": {"poolManagementType": "Manual"}}`, "properties.poolManagementType"},
		{`{"properties": {"scaleConfiguration": {"maxConcurrentSessions": 0}}}`, "properties.scaleConfiguration.maxConcurrentSessions"},
		{`{"properties": {"scaleConfiguration": {"maxConcurrentSessions": "ten"}}}`, "properties.scaleConfiguration.maxConcurrentSessions"},
		{`{"properties": {"scaleConfiguration": {"readySessionInstances": -1}}}`, "properties.scaleConfiguration.readySessionInstances"},
		{`{"properties": {"dynamicPoolConfiguration": {"cooldownPeriodInSeconds": 0}}}`, "properties.dynamicPoolConfiguration.cooldownPeriodInSeconds"},
		{`{"properties": {"dynamicPoolConfiguration": {"executionType": "Session"}}}`, "properties.dynamicPoolConfiguration.executionType"},
		{`{"properties": {"dynamicPoolConfiguration": {"lifecycleConfiguration": {"lifecycleType": "Forever"}}}}`, lc + ".lifecycleType"},
		{`{"properties": {"dynamicPoolConfiguration": {"lifecycleConfiguration": {"cooldownPeriodInSeconds": 0}}}}`, lc + ".cooldownPeriodInSeconds"},
		{`{"properties": {"dynamicPoolConfiguration": {"lifecycleConfiguration": {"maxAlivePeriodInSeconds": -1}}}}`, lc + ".maxAlivePeriodInSeconds"},
		{`{"properties": {"sessionNetworkConfiguration": {"status": "Open"}}}`, "properties.sessionNetworkConfiguration.status"},
		{`{"sessiond": {"runtime": "runc"}}`, "sessiond.runtime"},
		{`{"sessiond": {"image": "no-such-image"}}`, "sessiond.image"},
		{`{"sessiond": {"cpu": 65}}`, "sessiond.cpu"},
		{`{"sessiond": {"memory": "1Ki"}}`, "sessiond.memory"},
		{`{"sessiond": {"disk": "lots"}}`, "sessiond.disk"},
		{`{"sessiond": {"pids": 1}}`, "sessiond.pids"},
		{`{"sessiond": {"warmupCode": "import os"}}`, "sessiond.warmupCode"},
		{`{"sessiond": {"executionTimeoutCapInSeconds": 0.5}}`, "sessiond.executionTimeoutCapInSeconds"},
		{`{"properties": {"scaleConfiguration": {"maxSession": 1}}}`, "properties.scaleConfiguration.maxSession"},
		{`{"sessionD": {"image": "img-a", "IMAGE": "img-b"}}`, "sessiond.image"},
		{`{"extra": true}`, "extra"},
	} {
		_, err := c.PatchPool(ctx(t), "valid", json.RawMessage(tc.patch))
		var e *client.Error
		if !errors.As(err, &e) || e.StatusCode != http.StatusBadRequest || e.Target != tc.target || !strings.HasPrefix(e.Message, tc.target+": ") {
			t.Errorf("PATCH %s: %#v, want 400 about %s", tc.patch, err, tc.target)
		}
	}
	// The same through PUT, as creates of new pools: nothing is created.
	_, _, err := c.PutPool(ctx(t), "new-pool", json.RawMessage(`{"properties": {"scaleConfiguration": {"readySessionInstances": 1001}}}`))
	var e *client.Error
	if !errors.As(err, &e) || e.StatusCode != 400 || e.Target != "properties.scaleConfiguration.readySessionInstances" {
		t.Errorf("PUT with a bad value: %v", err)
	}
	if _, err := c.GetPool(ctx(t), "new-pool"); !client.IsNotFound(err) {
		t.Errorf("a refused create left a pool: %v", err)
	}
}

// TestDataPlane runs commands and moves files through the client, and manages the
// session it made.
func TestDataPlane(t *testing.T) {
	e, c := server(t)
	if _, _, err := c.PutPool(ctx(t), "shells", json.RawMessage(shellPool)); err != nil {
		t.Fatal(err)
	}
	e.WaitReady(t, "shells", 1)
	x, err := c.Execute(ctx(t), "shells", "user/1", client.ExecuteRequest{Code: "echo out; echo err >&2; exit 3"})
	if err != nil {
		t.Fatal(err)
	}
	if x.Succeeded() || x.Status != "3" || x.Result == nil || x.Result.Stdout != "out\n" || x.Result.Stderr != "err\n" {
		t.Errorf("Execute = %+v %+v", x, x.Result)
	}
	content := "a,b\n1,2\n"
	f, err := c.UploadFile(ctx(t), "shells", "user/1", "dir/data.csv", strings.NewReader(content))
	if err != nil || f.SizeInBytes != int64(len(content)) {
		t.Fatalf("UploadFile = %+v, %v", f, err)
	}
	x, err = c.Execute(ctx(t), "shells", "user/1", client.ExecuteRequest{Code: "cat dir/data.csv"})
	if err != nil || !x.Succeeded() || x.Result.Stdout != content {
		t.Errorf("reading the uploaded file: %+v, %v", x, err)
	}
	files, err := c.ListFiles(ctx(t), "shells", "user/1")
	if err != nil || len(files) != 1 || files[0].Name != "dir" || files[0].Type != "Directory" {
		t.Errorf("ListFiles = %+v, %v", files, err)
	}
	var buf bytes.Buffer
	if n, err := c.DownloadFile(ctx(t), "shells", "user/1", "dir/data.csv", &buf); err != nil || n != int64(len(content)) || buf.String() != content {
		t.Errorf("DownloadFile = %d %q, %v", n, buf.String(), err)
	}
	if err := c.DeleteFile(ctx(t), "shells", "user/1", "dir/data.csv"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DownloadFile(ctx(t), "shells", "user/1", "dir/data.csv", &buf); !client.IsNotFound(err) {
		t.Errorf("download after delete: %v", err)
	}

	sessions, err := c.ListSessions(ctx(t), "shells")
	if err != nil || len(sessions) != 1 || sessions[0].Identifier != "user/1" || sessions[0].State != "Allocated" {
		t.Fatalf("ListSessions = %+v, %v", sessions, err)
	}
	s, err := c.GetSession(ctx(t), "shells", "user/1")
	if err != nil || s != sessions[0] {
		t.Errorf("GetSession = %+v, %v", s, err)
	}
	if err := c.StopSession(ctx(t), "shells", "user/1"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetSession(ctx(t), "shells", "user/1"); !client.IsNotFound(err) {
		t.Errorf("GetSession after stop: %v", err)
	}
	if err := c.StopSession(ctx(t), "shells", "user/1"); !client.IsNotFound(err) {
		t.Errorf("stopping again: %v", err)
	}
}

func TestErrors(t *testing.T) {
	_, c := server(t)
	_, err := c.GetPool(ctx(t), "missing")
	var e *client.Error
	if !errors.As(err, &e) || e.StatusCode != 404 || e.Code != "SessionPoolNotFound" || e.TraceID == "" ||
		e.Error() != "Session pool 'missing' does not exist. (SessionPoolNotFound)" {
		t.Errorf("GetPool(missing) = %#v", err)
	}
	bad := &client.Client{Endpoint: "http://127.0.0.1:1"}
	if _, err := bad.ListPools(ctx(t)); err == nil || errors.As(err, &e) {
		t.Errorf("unreachable server: %v", err)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
