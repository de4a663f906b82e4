package api

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestPoolPath(t *testing.T) {
	for in, want := range map[string]string{
		"/pools/p":          "/",
		"/pools/p/":         "/",
		"//pools//p//a//b/": "//a//b/",
		"/pools/p/a%2Fb/c/": "/a%2Fb/c/",
		"/subscriptions/s/resourceGroups/rg/sessionPools/p/api/items": "/api/items",
		"/Subscriptions/s/ResourceGroups/rg/SESSIONPOOLS/p":           "/",
	} {
		if got := poolPath(in); got != want {
			t.Errorf("poolPath(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestForwardToContainer sends requests to a custom pool over the Fake runtime, whose
// "container" is the test's echo server on the host's loopback, and checks what reached it.
func TestForwardToContainer(t *testing.T) {
	tp := newTestPools(t, false)
	s := New(Config{Pools: tp})
	t.Cleanup(s.Close)
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	azure := "/subscriptions/s/resourceGroups/rg/sessionPools/custom"
	for _, tc := range []struct {
		method, target string
		header         map[string]string
		wantPath       string
		wantQuery      string
	}{
		// The path exactly as sent below the pool, slashes and escapes kept; no api-version.
		{"GET", "/pools/custom/api/items/?identifier=sess-1&b=2&a=1", nil, "/api/items/", "identifier=sess-1&b=2&a=1"},
		{"GET", "/pools/custom?identifier=sess-1", nil, "/", "identifier=sess-1"},
		{"PUT", azure + "/a%2Fb//c?identifier=sess-1", nil, "/a%2Fb//c", "identifier=sess-1"},
		{"DELETE", azure + "/session?api-version=2025-02-02-preview&identifier=sess-1", nil, "/session", "api-version=2025-02-02-preview&identifier=sess-1"},
		{"PATCH", "/pools/custom/python/execute/x?identifier=sess-1", map[string]string{"Authorization": "Bearer t", "X-Ms-Apikey": "k", "Api-Key": "k"},
			"/python/execute/x", "identifier=sess-1"},
	} {
		req, _ := http.NewRequest(tc.method, srv.URL+tc.target, strings.NewReader("body of "+tc.method))
		for k, v := range tc.header {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var got struct{ Method, Path, Query, Body, Identifier, Authorization string }
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err := json.Unmarshal(b, &got); err != nil || resp.StatusCode != 200 {
			t.Errorf("%s %s: %s %s", tc.method, tc.target, resp.Status, b)
			continue
		}
		if got.Method != tc.method || got.Path != tc.wantPath || got.Query != tc.wantQuery || got.Body != "body of "+tc.method ||
			got.Identifier != "sess-1" || got.Authorization != "" {
			t.Errorf("%s %s reached the container as %+v", tc.method, tc.target, got)
		}
	}
	if n := len(tp["custom"].Sessions()); n != 1 {
		t.Errorf("%d sessions after requests for one identifier", n)
	}
	// The reserved .management paths are answered by sessiond, with its envelope.
	r := send(t, srv, "POST", "/pools/custom/.management/getSession?api-version=2025-02-02-preview&identifier=sess-1", "", "")
	if r.status != 200 || !strings.Contains(string(r.body), `"identifier":"sess-1"`) {
		t.Errorf(".management/getSession: %d %s", r.status, r.body)
	}
	if r := send(t, srv, "GET", "/pools/custom/api", "", ""); r.status != 400 || r.err.Target != "identifier" {
		t.Errorf("no identifier: %d %+v", r.status, r.err)
	}
}
