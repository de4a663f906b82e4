package api

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/sessiond/sessiond/internal/pool"
)

// TestAllowedHosts: with AllowedHosts set, a request for any other host (a DNS-rebinding
// page) gets 421 in the envelope; the port, case and a final dot do not matter; health
// probes pass whatever the host.
func TestAllowedHosts(t *testing.T) {
	srv := newStubServer(t, Config{AllowedHosts: []string{"LocalHost", "127.0.0.1", "[::1]", "sessiond.example:8443", " "}}, nil)
	open := newStubServer(t, Config{}, nil)
	list := pyPath + "/listSessions?" + v2025
	for _, tc := range []struct {
		srv    *httptest.Server
		target string
		host   string
		status int
		code   string
	}{
		{srv, list, "localhost:9999", 200, ""},
		{srv, list, "LOCALHOST", 200, ""},
		{srv, list, "localhost.", 200, ""},
		{srv, list, "127.0.0.1:1", 200, ""},
		{srv, list, "[::1]:8080", 200, ""},
		{srv, list, "sessiond.example", 200, ""},
		{srv, list, "attacker.example", 421, codeMisdirected},
		{srv, list, "attacker.example:8080", 421, codeMisdirected},
		{srv, list, "localhost.attacker.example", 421, codeMisdirected},
		{srv, list, "127.0.0.2", 421, codeMisdirected},
		{srv, "/pools/nope/files?" + v2025 + "&identifier=abcd", "attacker.example", 421, codeMisdirected},
		{srv, "/nothing", "attacker.example", 421, codeMisdirected},
		{srv, "/healthz", "attacker.example", 200, ""},
		{srv, "/healthz", "10.1.2.3:8080", 200, ""},
		{open, list, "attacker.example", 200, ""},
	} {
		req := newRequest(t, tc.srv, "GET", tc.target, "", "")
		req.Host = tc.host
		r := do(t, req)
		if r.status != tc.status || r.err.Code != tc.code {
			t.Errorf("GET %s Host %s: %d %q, want %d %q", tc.target, tc.host, r.status, r.err.Code, tc.status, tc.code)
		}
		if r.status == 421 && r.err.Target != "Host" {
			t.Errorf("GET %s Host %s: target %q, want Host", tc.target, tc.host, r.err.Target)
		}
	}
}

// TestCrossSiteRequests: a browser page of another site may not use the server: a
// request labelled Sec-Fetch-Site: cross-site is refused, and so is a state-changing one
// whose Origin is not an allowed host (or, without AllowedHosts, the request's own
// host). Requests with neither header, as every real client sends, pass.
func TestCrossSiteRequests(t *testing.T) {
	stop := "/.management/stopSession?" + v2025 + "&identifier=abcd" // 400 SessionWithIdentifierNotFound once past the guard
	list := "/listSessions?" + v2025
	open := newStubServer(t, Config{}, nil)
	allowed := newStubServer(t, Config{AllowedHosts: []string{"app.example", "127.0.0.1"}}, nil)
	for _, tc := range []struct {
		name    string
		srv     *httptest.Server
		method  string
		target  string
		host    string // "" for the server's own
		headers map[string]string
		status  int
		code    string
	}{
		{"no headers", open, "POST", stop, "", nil, 400, codeSessionNotFound},
		{"same origin", open, "POST", stop, "", map[string]string{"Origin": "http://127.0.0.1", "Sec-Fetch-Site": "same-origin"}, 400, codeSessionNotFound},
		{"same host, other port", open, "POST", stop, "", map[string]string{"Origin": "http://127.0.0.1:3000"}, 400, codeSessionNotFound},
		{"user-initiated", open, "POST", stop, "", map[string]string{"Sec-Fetch-Site": "none"}, 400, codeSessionNotFound},
		{"undici's fetch", open, "POST", stop, "", map[string]string{"Sec-Fetch-Mode": "cors"}, 400, codeSessionNotFound},
		{"other origin", open, "POST", stop, "", map[string]string{"Origin": "https://attacker.example"}, 403, codeForbidden},
		{"other origin, delete", open, "DELETE", pyPath + "/session?" + v2025 + "&identifier=abcd", "", map[string]string{"Origin": "https://attacker.example"}, 403, codeForbidden},
		{"opaque origin", open, "POST", stop, "", map[string]string{"Origin": "null"}, 403, codeForbidden},
		{"malformed origin", open, "POST", stop, "", map[string]string{"Origin": "::"}, 403, codeForbidden},
		{"cross-site post", open, "POST", stop, "", map[string]string{"Sec-Fetch-Site": "cross-site"}, 403, codeForbidden},
		{"cross-site get", open, "GET", pyPath + list, "", map[string]string{"Sec-Fetch-Site": "cross-site"}, 403, codeForbidden},
		{"other origin, get", open, "GET", pyPath + list, "", map[string]string{"Origin": "https://attacker.example"}, 200, ""},
		{"cross-site health", open, "GET", "/healthz", "", map[string]string{"Sec-Fetch-Site": "cross-site"}, 200, ""},
		{"allowed origin", allowed, "POST", stop, "app.example", map[string]string{"Origin": "https://app.example"}, 400, codeSessionNotFound},
		{"allowed origin, other allowed host", allowed, "POST", stop, "", map[string]string{"Origin": "https://app.example"}, 400, codeSessionNotFound},
		{"origin not allowed", allowed, "POST", stop, "app.example", map[string]string{"Origin": "http://localhost"}, 403, codeForbidden},
	} {
		target := tc.target
		if target == stop {
			target = pyPath + stop
		}
		req := newRequest(t, tc.srv, tc.method, target, "", "")
		if tc.host != "" {
			req.Host = tc.host
		}
		for k, v := range tc.headers {
			req.Header.Set(k, v)
		}
		r := do(t, req)
		if r.status != tc.status || r.err.Code != tc.code {
			t.Errorf("%s: %s %s: %d %q (%s), want %d %q", tc.name, tc.method, target, r.status, r.err.Code, r.err.Message, tc.status, tc.code)
		}
	}
}

// TestJSONContentType: the JSON endpoints refuse the body types a cross-site form can
// send, and take anything else, including no Content-Type at all.
func TestJSONContentType(t *testing.T) {
	entered := 0
	pools := stubPools{"python": {spec: testSpec("python", pool.PythonLTS), acquire: func(string) (*pool.Lease, error) {
		entered++
		return nil, errNotFound("stub")
	}}}
	srv := newStubServer(t, Config{}, pools)
	body := `{"properties":{"code":"1"}}`
	for _, target := range []string{
		pyPath + "/executions?" + v2025 + "&identifier=ct-test",
		pyPath + "/code/execute?" + v2024 + "&identifier=ct-test",
		pyPath + "/python/execute?identifier=ct-test",
	} {
		for _, tc := range []struct {
			ct     string
			refuse bool
		}{
			{"", false},
			{"application/json", false},
			{"application/json; charset=utf-8", false},
			{"Application/JSON;charset=UTF-8", false},
			{"text/json", false},
			{"application/octet-stream", false},
			{"text/plain", true},
			{"text/plain;charset=UTF-8", true},
			{" TEXT/PLAIN ", true},
			{"application/x-www-form-urlencoded", true},
			{"multipart/form-data; boundary=x", true},
		} {
			entered = 0
			r := send(t, srv, "POST", target, tc.ct, body)
			refused := r.status == 400 && r.err.Code == codeValidationFailed && r.err.Target == "Content-Type"
			if refused != tc.refuse || refused == (entered > 0) {
				t.Errorf("POST %s Content-Type %q: %d %+v (session acquired: %v), refused %v, want %v",
					target, tc.ct, r.status, r.err, entered > 0, refused, tc.refuse)
			}
		}
	}
}

func TestHostOnly(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"localhost", "localhost"},
		{"LocalHost:8080", "localhost"},
		{"example.com.", "example.com"},
		{"[::1]:80", "::1"},
		{"[::1]", "::1"},
		{"::1", "::1"},
		{"127.0.0.1:0", "127.0.0.1"},
		{"", ""},
	} {
		if got := hostOnly(tc.in); got != tc.want {
			t.Errorf("hostOnly(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{"https://app.example", "app.example"},
		{"http://127.0.0.1:3000", "127.0.0.1"},
		{"http://[::1]:3000", "::1"},
		{"null", ""},
		{"app.example", ""},
		{"", ""},
	} {
		if got := originHost(tc.in); got != tc.want {
			t.Errorf("originHost(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	if !stateChanging(http.MethodPatch) || stateChanging(http.MethodHead) {
		t.Error("stateChanging: PATCH must change state and HEAD must not")
	}
}
