package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/pool"
)

// stubPool is a Pool without sandboxes, for tests of everything before a session is
// reached. Function fields steer it; nil ones fail as a pool with no sessions would.
type stubPool struct {
	spec    pool.Spec
	acquire func(identifier string) (*pool.Lease, error)
	del     func(identifier string) error
}

func (p *stubPool) Spec() pool.Spec { return p.spec }

func (p *stubPool) Acquire(ctx context.Context, identifier string) (*pool.Lease, error) {
	if p.acquire != nil {
		return p.acquire(identifier)
	}
	return nil, errkind.New(errkind.Unavailable, "stub pool has no sandboxes")
}

func (p *stubPool) Get(ctx context.Context, identifier string) (*pool.Lease, error) {
	return nil, errkind.New(errkind.NotFound, "no session %q", identifier)
}

func (p *stubPool) Delete(ctx context.Context, identifier string) error {
	if p.del != nil {
		return p.del(identifier)
	}
	return errkind.New(errkind.NotFound, "no session %q", identifier)
}

func (p *stubPool) Sessions() []pool.SessionInfo { return nil }

func (p *stubPool) Metadata(ctx context.Context) (pool.Metadata, error) {
	return pool.Metadata{CreatedAt: testEpoch, UpdatedAt: testEpoch}, nil
}

type stubPools map[string]*stubPool

func (p stubPools) Pool(name string) (Pool, bool) {
	sp, ok := p[name]
	if !ok {
		return nil, false
	}
	return sp, true
}

func newStubServer(t *testing.T, cfg Config, pools stubPools) *httptest.Server {
	t.Helper()
	if pools == nil {
		pools = stubPools{}
	}
	for _, n := range []struct {
		name string
		ct   pool.ContainerType
	}{{"python", pool.PythonLTS}, {"shell", pool.Shell}, {"custom", pool.CustomContainer}} {
		if _, ok := pools[n.name]; !ok {
			pools[n.name] = &stubPool{spec: testSpec(n.name, n.ct)}
		}
	}
	cfg.Pools = pools
	srv := httptest.NewServer(New(cfg))
	t.Cleanup(srv.Close)
	return srv
}

// call sends a request and returns the status, headers and decoded error envelope.
type response struct {
	status int
	header http.Header
	body   []byte
	err    errorDetail
}

func send(t *testing.T, srv *httptest.Server, method, target, contentType, body string) response {
	t.Helper()
	req := newRequest(t, srv, method, target, contentType, body)
	return do(t, req)
}

func newRequest(t *testing.T, srv *httptest.Server, method, target, contentType, body string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+target, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	return req
}

// do sends req and returns the status, headers and decoded error envelope.
func do(t *testing.T, req *http.Request) response {
	t.Helper()
	method, target := req.Method, req.URL.RequestURI()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	r := response{status: resp.StatusCode, header: resp.Header, body: b}
	if resp.StatusCode >= 300 {
		var eb errorBody
		if err := json.Unmarshal(b, &eb); err != nil {
			t.Fatalf("%s %s: %d with a body that is not the envelope: %s", method, target, resp.StatusCode, b)
		}
		r.err = eb.Error
		if got := resp.Header.Get("x-ms-error-code"); got != eb.Error.Code {
			t.Errorf("%s %s: x-ms-error-code %q, envelope code %q", method, target, got, eb.Error.Code)
		}
		if !traceIDPattern.MatchString(eb.Error.TraceID) {
			t.Errorf("%s %s: traceId %q", method, target, eb.Error.TraceID)
		}
	}
	return r
}

const (
	pyPath    = "/subscriptions/s/resourceGroups/rg/sessionPools/python"
	shellPath = "/pools/shell"
	v2024     = "api-version=2024-02-02-preview"
	v2025     = "api-version=2025-10-02-preview"
)

func TestValidateIdentifier(t *testing.T) {
	for _, tc := range []struct {
		id   string
		ok   bool
		want string // in the message
	}{
		{"abcd", true, ""},
		{"8c6a2cbe-6f0a-4bd2-9f1e-2d3c4b5a6978", true, ""},
		{strings.Repeat("a", 128), true, ""},
		{`_-|}{[]:"';<>?/.,@#$%^&*()+=!~` + "`", true, ""},
		{"", false, "required"},
		{"abc", false, "3 characters long"},
		{strings.Repeat("a", 129), false, "129 characters long"},
		{"has space", false, "' ' at position 4"},
		{"tab\there", false, `'\t' at position 4`},
		{"héllo", false, "'é' at position 2"},
		{"nul\x00byte", false, `'\x00' at position 4`},
		{"back\\slash", false, `'\\' at position 5`},
	} {
		err := validateIdentifier(tc.id)
		if (err == nil) != tc.ok {
			t.Errorf("validateIdentifier(%q) = %v, want ok %v", tc.id, err, tc.ok)
			continue
		}
		if err == nil {
			continue
		}
		status, d, _ := describe(err)
		if status != 400 || d.Code != codeValidationFailed || d.Target != "identifier" || !strings.Contains(d.Message, tc.want) {
			t.Errorf("validateIdentifier(%q): %d %+v, want 400 %s naming %q", tc.id, status, d, codeValidationFailed, tc.want)
		}
		if tc.id != "" && !strings.Contains(d.Message, "4 to 128") {
			t.Errorf("validateIdentifier(%q): message %q does not state the rule", tc.id, d.Message)
		}
	}
}

func TestParseEnum(t *testing.T) {
	for _, in := range []string{"inline", "Inline", "INLINE", " inline "} {
		if got, err := parseEnum("codeInputType", in, "Inline", "InlineBase64"); err != nil || got != "Inline" {
			t.Errorf("parseEnum(%q) = %q, %v", in, got, err)
		}
	}
	if got, err := parseEnum("f", "", "A"); err != nil || got != "" {
		t.Errorf(`parseEnum("") = %q, %v`, got, err)
	}
	if _, err := parseEnum("executionType", "sometimes", "Synchronous", "Asynchronous"); err == nil {
		t.Error("parseEnum accepted an unknown value")
	}
}

// TestParseExecRequest covers the tolerances of §3.1.1 and §3.2.1.
func TestParseExecRequest(t *testing.T) {
	type want struct {
		Async         bool
		ExecutionType string
		Code          string
		Timeout       int
		StreamLimit   int
		EmptyKernel   bool
		JupyterFormat bool
		Shell         string
		Argv          []string
		Stdin         string
	}
	py := testSpec("python", pool.PythonLTS)
	py.ExecutionTimeoutCap = 220 * time.Second
	sh := testSpec("shell", pool.Shell)
	for _, tc := range []struct {
		name    string
		spec    pool.Spec
		version string
		legacy  bool
		body    string
		want    want
		errCode string // "" for success
	}{
		{name: "minimal", spec: py, version: "2024-10-02-preview", body: `{"code":"1"}`,
			want: want{ExecutionType: "Synchronous", Code: "1", Timeout: 120}},
		{name: "lowercase enums", spec: py, version: "2024-10-02-preview", body: `{"codeInputType":"inline","executionType":"asynchronous","code":"1"}`,
			want: want{Async: true, ExecutionType: "Asynchronous", Code: "1", Timeout: 120}},
		{name: "legacy is synchronous", spec: py, legacy: true, body: `{"executionType":"Asynchronous","code":"1"}`,
			want: want{ExecutionType: "Asynchronous", Code: "1", Timeout: 120}},
		{name: "pythonCode alias", spec: py, body: `{"pythonCode":"2"}`,
			want: want{ExecutionType: "Synchronous", Code: "2", Timeout: 120}},
		{name: "code wins over pythonCode", spec: py, body: `{"code":"1","pythonCode":"2"}`,
			want: want{ExecutionType: "Synchronous", Code: "1", Timeout: 120}},
		{name: "field names in any case", spec: py, body: `{"CODE":"1","TimeoutInSeconds":7}`,
			want: want{ExecutionType: "Synchronous", Code: "1", Timeout: 7}},
		{name: "timeout capped", spec: py, body: `{"code":"1","timeoutInSeconds":600}`,
			want: want{ExecutionType: "Synchronous", Code: "1", Timeout: 220}},
		{name: "timeout as a string", spec: py, body: `{"code":"1","timeoutInSeconds":"30"}`,
			want: want{ExecutionType: "Synchronous", Code: "1", Timeout: 30}},
		{name: "timeout 0 is the default", spec: py, body: `{"code":"1","timeoutInSeconds":0}`,
			want: want{ExecutionType: "Synchronous", Code: "1", Timeout: 120}},
		{name: "timeout null is the default", spec: py, body: `{"code":"1","timeoutInSeconds":null}`,
			want: want{ExecutionType: "Synchronous", Code: "1", Timeout: 120}},
		{name: "stream default from 2025-10-02", spec: py, version: "2025-10-02-preview", body: `{"code":"1"}`,
			want: want{ExecutionType: "Synchronous", Code: "1", Timeout: 120, StreamLimit: 4096}},
		{name: "stream default for a future version", spec: py, version: "2027-01-01", body: `{"code":"1"}`,
			want: want{ExecutionType: "Synchronous", Code: "1", Timeout: 120, StreamLimit: 4096}},
		{name: "no stream default before 2025-10-02", spec: py, version: "2025-02-02-preview", body: `{"code":"1"}`,
			want: want{ExecutionType: "Synchronous", Code: "1", Timeout: 120}},
		{name: "no stream default on legacy", spec: py, version: "2025-10-02-preview", legacy: true, body: `{"code":"1"}`,
			want: want{ExecutionType: "Synchronous", Code: "1", Timeout: 120}},
		{name: "stream limit capped", spec: py, body: `{"code":"1","outputStreamsMaxLength":1e12}`,
			want: want{ExecutionType: "Synchronous", Code: "1", Timeout: 120, StreamLimit: agentapi.MaxStreamLimit}},
		{name: "kernel flags", spec: py, body: `{"code":"1","useEmptyKernel":true,"returnJupyterFormatExecutionResult":"true"}`,
			want: want{ExecutionType: "Synchronous", Code: "1", Timeout: 120, EmptyKernel: true, JupyterFormat: true}},
		{name: "misspelled jupyter flag", spec: py, body: `{"code":"1","returnJupyterFormat":true}`,
			want: want{ExecutionType: "Synchronous", Code: "1", Timeout: 120, JupyterFormat: true}},
		{name: "base64", spec: py, body: `{"codeInputType":"inlinebase64","code":"cHJp\nbnQoMSk="}`,
			want: want{ExecutionType: "Synchronous", Code: "print(1)", Timeout: 120}},
		{name: "unknown fields", spec: py, body: `{"code":"1","identifier":"x","networkStatus":"on","nested":{"a":[1]}}`,
			want: want{ExecutionType: "Synchronous", Code: "1", Timeout: 120}},
		{name: "shell command", spec: sh, body: `{"shellCommand":"ls","stdin":"x"}`,
			want: want{ExecutionType: "Synchronous", Timeout: 120, Shell: "ls", Stdin: "x"}},
		{name: "shell argv", spec: sh, body: `{"execCommandAndArgs":["ls","-a"],"codeInputType":"inline","executionType":"synchronous"}`,
			want: want{ExecutionType: "Synchronous", Timeout: 120, Argv: []string{"ls", "-a"}}},
		{name: "shell code fallback", spec: sh, body: `{"code":"echo hi"}`,
			want: want{ExecutionType: "Synchronous", Code: "echo hi", Timeout: 120, Shell: "echo hi"}},

		{name: "no code", spec: py, body: `{"codeInputType":"inline"}`, errCode: codeValidationFailed},
		{name: "bad enum", spec: py, body: `{"code":"1","executionType":"later"}`, errCode: codeValidationFailed},
		{name: "negative timeout", spec: py, body: `{"code":"1","timeoutInSeconds":-1}`, errCode: codeValidationFailed},
		{name: "fractional timeout", spec: py, body: `{"code":"1","timeoutInSeconds":1.5}`, errCode: codeValidationFailed},
		{name: "zero stream limit", spec: py, body: `{"code":"1","outputStreamsMaxLength":0}`, errCode: codeValidationFailed},
		{name: "code not a string", spec: py, body: `{"code":42}`, errCode: codeValidationFailed},
		{name: "bad base64", spec: py, body: `{"codeInputType":"InlineBase64","code":"%%%"}`, errCode: codeValidationFailed},
		{name: "code too long", spec: py, body: `{"code":"` + strings.Repeat("x", agentapi.MaxCodeBytes+1) + `"}`, errCode: codeValidationFailed},
		{name: "shell field on python", spec: py, body: `{"code":"1","stdin":"x"}`, errCode: codeNotSupported},
		{name: "shell async", spec: sh, body: `{"shellCommand":"ls","executionType":"Asynchronous"}`, errCode: codeNotSupported},
		{name: "shell both", spec: sh, body: `{"shellCommand":"ls","execCommandAndArgs":["ls"]}`, errCode: codeValidationFailed},
		{name: "shell nothing", spec: sh, body: `{"stdin":"x"}`, errCode: codeValidationFailed},
		{name: "shell empty argv", spec: sh, body: `{"execCommandAndArgs":[]}`, errCode: codeValidationFailed},
		{name: "shell argv not strings", spec: sh, body: `{"execCommandAndArgs":[1,2]}`, errCode: codeValidationFailed},
		{name: "shell NUL", spec: sh, body: `{"shellCommand":"a\u0000b"}`, errCode: codeValidationFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := objectFields([]byte(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			if tc.version == "" {
				tc.version = "2024-10-02-preview"
			}
			c := &call{spec: tc.spec, poolName: tc.spec.Name, apiVersion: tc.version}
			r := httptest.NewRequest("POST", "/", nil)
			x, err := parseExecRequest(f, r, c, tc.legacy)
			if tc.errCode != "" {
				if _, d, _ := describe(err); err == nil || d.Code != tc.errCode {
					t.Fatalf("error %v, want code %s", err, tc.errCode)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := want{Async: x.async, ExecutionType: x.executionType, Code: x.code, Timeout: x.timeout,
				StreamLimit: x.streamLimit, EmptyKernel: x.emptyKernel, JupyterFormat: x.jupyterFormat,
				Shell: x.shell, Argv: x.argv, Stdin: x.stdin}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			if !uuidPattern.MatchString(x.id) {
				t.Errorf("generated id %q is not a UUID", x.id)
			}
		})
	}
}

func TestExecutionID(t *testing.T) {
	for _, tc := range []struct {
		header string
		want   string
		ok     bool
	}{
		{"op-1.2_3", "op-1.2_3", true},
		{strings.Repeat("a", 128), strings.Repeat("a", 128), true},
		{strings.Repeat("a", 129), "", false},
		{"has/slash", "", false},
		{"has space", "", false},
	} {
		r := httptest.NewRequest("POST", "/", nil)
		r.Header.Set("operation-id", tc.header)
		got, err := executionID(r)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("executionID(%q) = %q, %v", tc.header, got, err)
		}
	}
}

// TestEnvelope checks that each error kind from a pool becomes its status and code, that
// public messages reach the client and internal ones never do.
func TestEnvelope(t *testing.T) {
	for _, tc := range []struct {
		err        error
		status     int
		code       string
		message    string
		retryAfter string
	}{
		{errkind.New(errkind.Invalid, "bad thing"), 400, codeValidationFailed, "bad thing", ""},
		{errkind.New(errkind.NotFound, "no such thing"), 404, codeNotFound, "no such thing", ""},
		{errkind.New(errkind.AlreadyExists, "twice"), 409, codeConflict, "twice", ""},
		{errkind.New(errkind.LimitExceeded, "session pool python is at its maximum of 10 concurrent sessions"), 429, codeTooManyRequests,
			"session pool python is at its maximum of 10 concurrent sessions", "5"},
		{errkind.New(errkind.Unavailable, "warming up"), 503, codeUnavailable, "warming up", ""},
		{errkind.New(errkind.Timeout, "too slow"), 504, codeTimeout, "too slow", ""},
		{errkind.Wrap(errkind.Unavailable, errors.New("dial unix /var/lib/secret.sock")), 503, codeUnavailable, kindErrors[errkind.Unavailable].message, ""},
		{errors.New("open /etc/shadow: permission denied"), 500, codeInternal, "internal error", ""},
		{&errkind.Error{Kind: errkind.Internal, Msg: "a public but internal message", Public: true}, 500, codeInternal, "internal error", ""},
		{errkind.Wrap(errkind.Internal, errors.New("secret detail")), 500, codeInternal, "internal error", ""},
	} {
		pools := stubPools{"python": {spec: testSpec("python", pool.PythonLTS),
			acquire: func(string) (*pool.Lease, error) { return nil, tc.err }}}
		srv := newStubServer(t, Config{}, pools)
		r := send(t, srv, "POST", pyPath+"/code/execute?"+v2024+"&identifier=env-test", "application/json",
			`{"properties":{"code":"1"}}`)
		if r.status != tc.status || r.err.Code != tc.code || r.err.Message != tc.message {
			t.Errorf("%v: got %d %+v, want %d %s %q", tc.err, r.status, r.err, tc.status, tc.code, tc.message)
		}
		if got := r.header.Get("Retry-After"); got != tc.retryAfter {
			t.Errorf("%v: Retry-After %q, want %q", tc.err, got, tc.retryAfter)
		}
		if strings.Contains(string(r.body), "secret") || strings.Contains(string(r.body), "/etc/") {
			t.Errorf("%v: internal detail leaked: %s", tc.err, r.body)
		}
	}
}

// TestPoolAtCap: every session-scoped operation that allocates answers 429 with
// Retry-After when the pool is at its cap.
func TestPoolAtCap(t *testing.T) {
	full := func(string) (*pool.Lease, error) {
		return nil, errkind.New(errkind.LimitExceeded, "session pool python is at its maximum of 10 concurrent sessions")
	}
	srv := newStubServer(t, Config{}, stubPools{"python": {spec: testSpec("python", pool.PythonLTS), acquire: full}})
	upload := "--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.txt\"\r\n\r\nx\r\n--b--\r\n"
	for _, tc := range []struct{ method, target, ct, body string }{
		{"POST", pyPath + "/code/execute?" + v2024 + "&identifier=cap-test", "application/json", `{"properties":{"code":"1"}}`},
		{"POST", pyPath + "/executions?" + v2025 + "&identifier=cap-test", "application/json", `{"code":"1"}`},
		{"GET", pyPath + "/files?" + v2025 + "&identifier=cap-test", "", ""},
		{"POST", pyPath + "/files/upload?" + v2024 + "&identifier=cap-test", "multipart/form-data; boundary=b", upload},
		{"GET", pyPath + "/files/x.txt/content?" + v2025 + "&identifier=cap-test", "", ""},
	} {
		r := send(t, srv, tc.method, tc.target, tc.ct, tc.body)
		if r.status != 429 || r.header.Get("Retry-After") == "" || r.err.Code != codeTooManyRequests {
			t.Errorf("%s %s: %d %+v Retry-After %q, want 429", tc.method, tc.target, r.status, r.err, r.header.Get("Retry-After"))
		}
	}
}

func TestRouting(t *testing.T) {
	srv := newStubServer(t, Config{}, nil)
	for _, tc := range []struct {
		method, target string
		status         int
		code           string
		allow          string
	}{
		{"GET", "/healthz", 200, "", ""},
		{"GET", "/", 404, codeNotFound, ""},
		{"GET", "/pools", 404, codeNotFound, ""},
		{"GET", "/pools/python", 404, codeNotFound, ""},
		{"GET", "/pools/nope/files?" + v2025 + "&identifier=abcd", 404, codePoolNotFound, ""},
		{"PUT", "/pools/nope/files", 404, codePoolNotFound, ""},
		{"GET", pyPath + "/nothing", 404, codeNotFound, ""},
		{"PUT", pyPath + "/executions", 405, codeMethodNotAllowed, "POST"},
		{"PATCH", pyPath + "/session", 405, codeMethodNotAllowed, "GET, DELETE"},
		{"POST", pyPath + "/files/x.txt", 405, codeMethodNotAllowed, "GET, DELETE"},
		{"GET", pyPath + "/.management/stopSession", 405, codeMethodNotAllowed, "POST"},
		{"PUT", pyPath + "/files", 405, codeMethodNotAllowed, "GET, POST"},
		{"DELETE", pyPath + "/files", 405, codeMethodNotAllowed, "GET, POST"},
		{"DELETE", pyPath + "/files/", 405, codeMethodNotAllowed, "GET, POST"},
		{"GET", pyPath + "/executions", 405, codeMethodNotAllowed, "POST"},
		// Custom-container pools forward everything but .management (the stub has no
		// sandbox to forward to: 503), with no api-version needed, but an identifier.
		{"POST", "/pools/custom/executions?" + v2025 + "&identifier=abcd", 503, codeUnavailable, ""},
		{"GET", "/pools/custom/files?identifier=abcd", 503, codeUnavailable, ""},
		{"PUT", "/pools/custom/any/path?identifier=abcd", 503, codeUnavailable, ""},
		{"GET", "/pools/custom", 400, codeValidationFailed, ""},
		{"GET", "/pools/custom/.management/stopSession", 405, codeMethodNotAllowed, "POST"},
		{"POST", "/pools/custom/.management/nothing?identifier=abcd", 404, codeNotFound, ""},
		{"POST", "/pools/custom/.management?identifier=abcd", 404, codeNotFound, ""},
		{"GET", pyPath + "/files?identifier=abcd", 400, codeValidationFailed, ""},
		{"GET", pyPath + "/listSessions", 400, codeValidationFailed, ""},
		{"GET", pyPath + "/listSessions?" + v2025, 200, "", ""},
		{"GET", pyPath + "/metadata?" + v2025, 200, "", ""},
		{"DELETE", pyPath + "/session?" + v2025 + "&identifier=abcd", 204, "", ""},
		{"GET", pyPath + "/session?" + v2025 + "&identifier=abcd", 400, codeSessionNotFound, ""},
		{"POST", pyPath + "/.management/stopSession?" + v2025 + "&identifier=abcd", 400, codeSessionNotFound, ""},
		{"GET", pyPath + "/executions/op1?" + v2025 + "&identifier=abcd", 404, codeNotFound, ""},
		{"GET", pyPath + "/executions/op1?" + v2025, 400, codeValidationFailed, ""},
	} {
		r := send(t, srv, tc.method, tc.target, "", "")
		if r.status != tc.status || r.err.Code != tc.code || r.header.Get("Allow") != tc.allow {
			t.Errorf("%s %s: %d %q Allow %q, want %d %q Allow %q", tc.method, tc.target, r.status, r.err.Code,
				r.header.Get("Allow"), tc.status, tc.code, tc.allow)
		}
	}
}

func TestStrictPropertiesWrapper(t *testing.T) {
	srv := newStubServer(t, Config{RejectPropertiesWrapper: true}, nil)
	r := send(t, srv, "POST", pyPath+"/executions?"+v2025+"&identifier=strict-1", "application/json",
		`{"properties":{"code":"1"}}`)
	if r.status != 400 || r.err.Code != codePropertiesMissing {
		t.Errorf("got %d %+v, want 400 %s", r.status, r.err, codePropertiesMissing)
	}
	// The legacy execute keeps its wrapper.
	r = send(t, srv, "POST", pyPath+"/code/execute?"+v2024+"&identifier=strict-1", "application/json",
		`{"properties":{"code":"1"}}`)
	if r.err.Code == codePropertiesMissing {
		t.Errorf("code/execute refused its own wrapper")
	}
}

// TestUploadTooLarge checks both 413 paths: a declared Content-Length above the limit is
// refused before a session is touched, and a chunked body is cut off while it streams,
// leaving no file.
func TestUploadTooLarge(t *testing.T) {
	acquired := false
	pools := stubPools{"python": {spec: testSpec("python", pool.PythonLTS), acquire: func(string) (*pool.Lease, error) {
		acquired = true
		return nil, errkind.New(errkind.Unavailable, "no")
	}}}
	srv := newStubServer(t, Config{MaxUploadBytes: 1000}, pools)
	body := "--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.bin\"\r\n\r\n" + strings.Repeat("x", 2000000) + "\r\n--b--\r\n"
	r := send(t, srv, "POST", pyPath+"/files?"+v2025+"&identifier=big-upload", "multipart/form-data; boundary=b", body)
	if r.status != 413 || r.err.Code != codeTooLarge || acquired {
		t.Errorf("got %d %+v (acquired %v), want 413 before allocation", r.status, r.err, acquired)
	}

	tp := newTestPools(t, false)
	srv = httptest.NewServer(New(Config{Pools: tp, MaxUploadBytes: 1000}))
	defer srv.Close()
	for _, size := range []int{1000, 1001, 100000} {
		req, _ := http.NewRequest("POST", srv.URL+shellPath+"/files?"+v2025+"&identifier=big-upload",
			io.MultiReader(strings.NewReader("--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.bin\"\r\n\r\n"+
				strings.Repeat("x", size)+"\r\n--b--\r\n")))
		req.Header.Set("Content-Type", "multipart/form-data; boundary=b")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		want := http.StatusRequestEntityTooLarge
		if size <= 1000 {
			want = http.StatusOK
		}
		if resp.StatusCode != want {
			t.Errorf("chunked upload of %d bytes: %d %s, want %d", size, resp.StatusCode, b, want)
		}
	}
	// The agent removes the temporary file of a cut-off upload once it sees the body end;
	// until then a listing shows it (an agent detail the API does not hide).
	deadline := time.Now().Add(5 * time.Second)
	for {
		r = send(t, srv, "GET", shellPath+"/files?"+v2025+"&identifier=big-upload", "", "")
		var l fileList
		json.Unmarshal(r.body, &l)
		if len(l.Value) == 1 && l.Value[0].Name == "x.bin" && l.Value[0].SizeInBytes == 1000 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the uploads: %s, want only the 1000-byte file", r.body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestNormalize(t *testing.T) {
	for _, tc := range []struct{ in, path, query string }{
		{"/pools/p/code/execute?a=1", "/pools/p/code/execute", "a=1"},
		{"/pools/p//code/execute/?a=1", "/pools/p/code/execute", "a=1"},
		{"//pools/p/files/", "/pools/p/files", ""},
		{"/pools/p/identifier/sid/code/execute?api-version=v", "/pools/p/code/execute", "api-version=v&identifier=sid"},
		{"/pools/p/identifier/sid/code/execute?identifier=other", "/pools/p/code/execute", "identifier=other"},
		{"/pools/p/identifier/x", "/pools/p/identifier/x", ""},
		{"/pools/p/python/execute/code/execute", "/pools/p/code/execute", ""},
		{"/pools/p/python/execute", "/pools/p/python/execute", ""},
		{"/Subscriptions/s/RESOURCEGROUPS/r/SessionPools/p/files", "/subscriptions/s/resourceGroups/r/sessionPools/p/files", ""},
		{"/pools/p/files/../x", "/pools/p/files/../x", ""},
		{"/pools/p/files/a%2Fb/content", "/pools/p/files/a/b/content", ""},
		{"/other//path/", "/other/path", ""},
	} {
		r := normalize(httptest.NewRequest("GET", tc.in, nil))
		if r.URL.Path != tc.path || r.URL.RawQuery != tc.query {
			t.Errorf("normalize(%q) = %q ? %q, want %q ? %q", tc.in, r.URL.Path, r.URL.RawQuery, tc.path, tc.query)
		}
	}
	// An escaped slash stays inside its segment.
	r := normalize(httptest.NewRequest("GET", "/pools/p/files/a%2Fb/content", nil))
	if r.URL.EscapedPath() != "/pools/p/files/a%2Fb/content" {
		t.Errorf("escaped path %q", r.URL.EscapedPath())
	}
}

func TestParseQuery(t *testing.T) {
	q := parseQuery("identifier=a+b%7Cc;d&API-Version=2024-02-02-preview&identifier=second&path=a+b&bad=%zz&flag")
	for _, tc := range []struct{ got, want string }{
		{q.getLiteral("identifier"), "a+b|c;d"},
		{q.get("api-version"), "2024-02-02-preview"},
		{q.get("path"), "a b"},
		{q.get("bad"), "%zz"},
		{q.getLiteral("bad"), "%zz"},
		{q.get("missing"), ""},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
	if !q.has("flag") || q.has("missing") {
		t.Error("has")
	}
}

func TestVersions(t *testing.T) {
	for _, tc := range []struct {
		v              string
		legacy, stream bool
	}{
		{"2024-02-02-preview", true, false},
		{"2024-08-02-preview", true, false},
		{"2024-10-02-preview", false, false},
		{"2025-02-02-preview", false, false},
		{"2025-10-02-preview", false, true},
		{"2026-01-01", false, true},
		{"latest", false, true},
		{"", false, true},
	} {
		if got := isLegacyVersion(tc.v); got != tc.legacy {
			t.Errorf("isLegacyVersion(%q) = %v", tc.v, got)
		}
		if got := versionAtLeast(tc.v, streamLimitVersion); got != tc.stream {
			t.Errorf("versionAtLeast(%q) = %v", tc.v, got)
		}
	}
}

func TestDataPath(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string
		abs  bool
		ok   bool
	}{
		{"x.txt", "x.txt", false, true},
		{"/mnt/data/x.txt", "x.txt", true, true},
		{"/mnt/data", "", true, true},
		{"/mnt/data/", "", true, true},
		{"a//b/./c", "a/b/c", false, true},
		{"sub dir/é.txt", "sub dir/é.txt", false, true},
		{"", "", false, true},
		{"../x", "", false, false},
		{"a/../../x", "", false, false},
		{"/mnt/datax/y", "", false, false},
		{"/etc/passwd", "", false, false},
		{"a\x00b", "", false, false},
		{"a\nb", "", false, false},
		{"\xff", "", false, false},
		{strings.Repeat("a", 256), "", false, false},
		{strings.Repeat("a/", 2100), "", false, false},
	} {
		got, abs, err := dataPath("name", tc.in)
		if (err == nil) != tc.ok || got != tc.want || abs != tc.abs {
			t.Errorf("dataPath(%q) = %q, %v, %v; want %q, %v, ok %v", tc.in, got, abs, err, tc.want, tc.abs, tc.ok)
		}
	}
	for _, tc := range []struct{ dir, name, want string }{
		{"", "x", "x"},
		{"d", "x", "d/x"},
		{"d", "/mnt/data/x", "x"},
		{"d", "s/x", "d/s/x"},
	} {
		if got, err := filePath("name", tc.dir, tc.name); err != nil || got != tc.want {
			t.Errorf("filePath(%q, %q) = %q, %v", tc.dir, tc.name, got, err)
		}
	}
	if _, err := filePath("name", "d", "/mnt/data"); err == nil {
		t.Error("filePath accepted /mnt/data itself as a file")
	}
}

func TestSplitFileGet(t *testing.T) {
	for _, tc := range []struct {
		rest     string
		legacy   bool
		name     string
		download bool
	}{
		{"content/x.txt", true, "x.txt", true},
		{"content/x.txt", false, "x.txt", true},
		{"x.txt/content", false, "x.txt", true},
		{"x.txt/content", true, "x.txt", true},
		{"content/sub/x.txt", true, "sub/x.txt", true},
		{"sub/x.txt/content", false, "sub/x.txt", true},
		{"content/content", true, "content", true},
		{"content/x/content", true, "x/content", true},
		{"content/x/content", false, "content/x", true},
		{"x.txt", false, "x.txt", false},
		{"content", false, "content", false},
		{"sub/x.txt", true, "sub/x.txt", false},
	} {
		name, dl := splitFileGet(tc.rest, tc.legacy)
		if name != tc.name || dl != tc.download {
			t.Errorf("splitFileGet(%q, %v) = %q, %v; want %q, %v", tc.rest, tc.legacy, name, dl, tc.name, tc.download)
		}
	}
}

func bufioReader(s string) *bufio.Reader { return bufio.NewReader(strings.NewReader(s)) }

func TestMultipartBoundary(t *testing.T) {
	for _, tc := range []struct{ ct, body, want string }{
		{"multipart/form-data; boundary=abc", "", "abc"},
		{`multipart/form-data; boundary="a:b c"`, "", "a:b c"},
		{"application/json", "--sk123\r\nContent-Disposition: form-data\r\n", "sk123"},
		{"", "\r\n--nohdr\r\n", "nohdr"},
		{"multipart/form-data", "--undeclared\r\n", "undeclared"},
		{"application/json", `{"a":1}`, ""},
		{"text/plain", "--\r\n", ""},
	} {
		got, err := multipartBoundary(tc.ct, bufioReader(tc.body))
		if (err == nil) != (tc.want != "") || got != tc.want {
			t.Errorf("multipartBoundary(%q, %q) = %q, %v; want %q", tc.ct, tc.body, got, err, tc.want)
		}
	}
}

// TestInternalErrorsAreHidden: a panic in a handler is a 500 with "internal error" and a
// trace ID, logged with the detail; the detail never reaches the client.
func TestInternalErrorsAreHidden(t *testing.T) {
	var logs bytes.Buffer
	pools := stubPools{"python": {spec: testSpec("python", pool.PythonLTS), acquire: func(string) (*pool.Lease, error) {
		panic("secret panic detail")
	}}}
	srv := newStubServer(t, Config{Log: slog.New(slog.NewJSONHandler(&logs, nil))}, pools)
	r := send(t, srv, "POST", pyPath+"/executions?"+v2025+"&identifier=panic-1", "application/json", `{"code":"1"}`)
	if r.status != 500 || r.err.Message != "internal error" || strings.Contains(string(r.body), "secret") {
		t.Errorf("got %d %s", r.status, r.body)
	}
	if !strings.Contains(logs.String(), "secret panic detail") || !strings.Contains(logs.String(), r.err.TraceID) {
		t.Errorf("the log lacks the panic or the trace ID: %s", logs.String())
	}
}

// TestLogLine: one line per request with method, route, pool, status, duration and trace
// ID; the identifier only at debug level.
func TestLogLine(t *testing.T) {
	for _, level := range []slog.Level{slog.LevelInfo, slog.LevelDebug} {
		var logs bytes.Buffer
		srv := newStubServer(t, Config{Log: slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: level}))}, nil)
		send(t, srv, "GET", pyPath+"/session?"+v2025+"&identifier=log-ident-1", "", "")
		lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
		if len(lines) != 1 {
			t.Fatalf("%d log lines, want 1:\n%s", len(lines), logs.String())
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(lines[0]), &m); err != nil {
			t.Fatal(err)
		}
		for k, want := range map[string]any{"msg": "request", "method": "GET", "pool": "python", "status": float64(400),
			"route": "GET /subscriptions/{sub}/resourceGroups/{rg}/sessionPools/{pool}/session", "op": "SessionManagement_Get"} {
			if m[k] != want {
				t.Errorf("level %v: %s = %v, want %v", level, k, m[k], want)
			}
		}
		if _, ok := m["duration"]; !ok || !traceIDPattern.MatchString(m["trace_id"].(string)) {
			t.Errorf("level %v: no duration or trace_id: %v", level, m)
		}
		if got := strings.Contains(lines[0], "log-ident-1"); got != (level == slog.LevelDebug) {
			t.Errorf("level %v: identifier logged: %v", level, got)
		}
		if m["code"] != codeSessionNotFound {
			t.Errorf("level %v: code = %v", level, m["code"])
		}
	}
}
