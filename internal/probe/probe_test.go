package probe

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
)

// TestFieldNames decodes probes as an ARM template and a YAML pool file spell them.
func TestFieldNames(t *testing.T) {
	t.Parallel()
	const arm = `[
	  {"type": "Liveness", "httpGet": {"path": "/health", "port": 8080, "host": "app.local",
	    "httpHeaders": [{"name": "X-Probe", "value": "1"}], "scheme": "HTTP"},
	   "initialDelaySeconds": 3, "periodSeconds": 5, "timeoutSeconds": 2,
	   "failureThreshold": 4, "successThreshold": 1, "terminationGracePeriodSeconds": 30},
	  {"type": "Startup", "tcpSocket": {"port": 9000}}
	]`
	want := []Probe{
		{Type: Liveness, HTTPGet: &HTTPGet{Path: "/health", Port: 8080, Host: "app.local",
			HTTPHeaders: []HTTPHeader{{"X-Probe", "1"}}, Scheme: SchemeHTTP},
			InitialDelaySeconds: 3, PeriodSeconds: 5, TimeoutSeconds: 2, FailureThreshold: 4,
			SuccessThreshold: 1, TerminationGracePeriodSeconds: 30},
		{Type: Startup, TCPSocket: &TCPSocket{Port: 9000}},
	}
	var got []Probe
	dec := json.NewDecoder(strings.NewReader(arm))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&got); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("JSON (-want +got):\n%s", d)
	}
	const y = `
- type: Liveness
  httpGet: {path: /health, port: 8080, host: app.local, httpHeaders: [{name: X-Probe, value: "1"}], scheme: HTTP}
  initialDelaySeconds: 3
  periodSeconds: 5
  timeoutSeconds: 2
  failureThreshold: 4
  successThreshold: 1
  terminationGracePeriodSeconds: 30
- type: Startup
  tcpSocket: {port: 9000}
`
	got = nil
	yd := yaml.NewDecoder(strings.NewReader(y))
	yd.KnownFields(true)
	if err := yd.Decode(&got); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("YAML (-want +got):\n%s", d)
	}
	for _, p := range got {
		if err := p.Validate(); err != nil {
			t.Errorf("Validate(%+v) = %v", p, err)
		}
	}
}

func TestDefaults(t *testing.T) {
	t.Parallel()
	got := Probe{Type: "liveness", HTTPGet: &HTTPGet{Port: 80, Path: "healthz", Scheme: "https"}}.WithDefaults()
	want := Probe{Type: Liveness, HTTPGet: &HTTPGet{Port: 80, Path: "/healthz", Scheme: SchemeHTTPS},
		PeriodSeconds: 10, TimeoutSeconds: 1, FailureThreshold: 3, SuccessThreshold: 1}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("WithDefaults (-want +got):\n%s", d)
	}
	if d := (Probe{Type: Startup, TCPSocket: &TCPSocket{Port: 1}}).WithDefaults(); d.HTTPGet != nil || d.PeriodSeconds != DefaultPeriodSeconds {
		t.Errorf("tcpSocket defaults: %+v", d)
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	tcp := func(mod func(*Probe)) Probe {
		p := Probe{Type: Startup, TCPSocket: &TCPSocket{Port: 8080}}
		mod(&p)
		return p
	}
	get := func(mod func(*HTTPGet)) Probe {
		h := HTTPGet{Port: 8080, Path: "/h"}
		mod(&h)
		return Probe{Type: Liveness, HTTPGet: &h}
	}
	long := strings.Repeat("a", MaxHeaderBytes)
	for _, tc := range []struct {
		name  string
		p     Probe
		field string // in the error message; "" means valid
	}{
		{"minimal tcp", tcp(func(*Probe) {}), ""},
		{"minimal http", get(func(*HTTPGet) {}), ""},
		{"bounds", tcp(func(p *Probe) {
			p.InitialDelaySeconds, p.PeriodSeconds, p.TimeoutSeconds, p.FailureThreshold = 60, 240, 240, 10
			p.TerminationGracePeriodSeconds = 3600
		}), ""},
		{"query in path", get(func(h *HTTPGet) { h.Path = "/h?full=1" }), ""},
		{"host with port", get(func(h *HTTPGet) { h.Host = "app.example:8080" }), ""},
		{"no type", tcp(func(p *Probe) { p.Type = "" }), "type"},
		{"readiness", tcp(func(p *Probe) { p.Type = "Readiness" }), "type"},
		{"no action", Probe{Type: Startup}, "exactly one"},
		{"two actions", Probe{Type: Startup, TCPSocket: &TCPSocket{Port: 1}, HTTPGet: &HTTPGet{Port: 1}}, "exactly one"},
		{"delay", tcp(func(p *Probe) { p.InitialDelaySeconds = 61 }), "initialDelaySeconds"},
		{"negative delay", tcp(func(p *Probe) { p.InitialDelaySeconds = -1 }), "initialDelaySeconds"},
		{"period", tcp(func(p *Probe) { p.PeriodSeconds = 241 }), "periodSeconds"},
		{"timeout", tcp(func(p *Probe) { p.TimeoutSeconds = -1 }), "timeoutSeconds"},
		{"failures", tcp(func(p *Probe) { p.FailureThreshold = 11 }), "failureThreshold"},
		{"successes", tcp(func(p *Probe) { p.SuccessThreshold = 2 }), "successThreshold"},
		{"grace", tcp(func(p *Probe) { p.TerminationGracePeriodSeconds = 3601 }), "terminationGracePeriodSeconds"},
		{"tcp port 0", tcp(func(p *Probe) { p.TCPSocket.Port = 0 }), "tcpSocket.port"},
		{"tcp port high", tcp(func(p *Probe) { p.TCPSocket.Port = 65536 }), "tcpSocket.port"},
		{"tcp host", tcp(func(p *Probe) { p.TCPSocket.Host = "a b" }), "tcpSocket.host"},
		{"http port", get(func(h *HTTPGet) { h.Port = 0 }), "httpGet.port"},
		{"scheme", get(func(h *HTTPGet) { h.Scheme = "FTP" }), "httpGet.scheme"},
		{"space in path", get(func(h *HTTPGet) { h.Path = "/a b" }), "httpGet.path"},
		{"newline in path", get(func(h *HTTPGet) { h.Path = "/a\r\nX: y" }), "httpGet.path"},
		{"long path", get(func(h *HTTPGet) { h.Path = "/" + strings.Repeat("a", MaxPathBytes) }), "httpGet.path"},
		{"host", get(func(h *HTTPGet) { h.Host = "a/b" }), "httpGet.host"},
		{"header name", get(func(h *HTTPGet) { h.HTTPHeaders = []HTTPHeader{{"Bad Name", "v"}} }), "httpHeaders[0].name"},
		{"empty header name", get(func(h *HTTPGet) { h.HTTPHeaders = []HTTPHeader{{"", "v"}} }), "httpHeaders[0].name"},
		{"header value", get(func(h *HTTPGet) { h.HTTPHeaders = []HTTPHeader{{"X", "ok"}, {"Y", "a\r\nInjected: 1"}} }), "httpHeaders[1].value"},
		{"header size", get(func(h *HTTPGet) { h.HTTPHeaders = []HTTPHeader{{"X", long}} }), "httpHeaders[0]"},
		{"header count", get(func(h *HTTPGet) { h.HTTPHeaders = make([]HTTPHeader, MaxHTTPHeaders+1) }), "httpHeaders"},
	} {
		err := tc.p.Validate()
		switch {
		case tc.field == "" && err != nil:
			t.Errorf("%s: Validate = %v, want valid", tc.name, err)
		case tc.field != "" && !errkind.Is(err, errkind.Invalid):
			t.Errorf("%s: Validate = %v, want invalid", tc.name, err)
		case tc.field != "":
			if msg, _ := errkind.PublicMessage(err); !strings.Contains(msg, tc.field) {
				t.Errorf("%s: message %q does not name %s", tc.name, msg, tc.field)
			}
		}
	}
}

// recorder is an HTTP server in the test process (reachable on the Fake sandbox's
// loopback) that answers by path and keeps the last request's headers.
type recorder struct {
	mu   sync.Mutex
	last *http.Request // Guarded by mu.
}

func (rc *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rc.mu.Lock()
	rc.last = r
	rc.mu.Unlock()
	switch r.URL.Path {
	case "/ok":
		w.WriteHeader(http.StatusOK)
	case "/moved":
		http.Redirect(w, r, "http://elsewhere.invalid/", http.StatusMovedPermanently)
	case "/broken":
		w.WriteHeader(http.StatusInternalServerError)
	default:
		http.NotFound(w, r)
	}
}

func (rc *recorder) lastRequest() *http.Request {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.last
}

func TestCheckHTTPGet(t *testing.T) {
	t.Parallel()
	ag, _ := newSandbox(t)
	rc := &recorder{}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	tlsSrv := httptest.NewTLSServer(rc)
	defer tlsSrv.Close()
	port, tlsPort := portOf(t, srv.Listener.Addr().String()), portOf(t, tlsSrv.Listener.Addr().String())
	for _, tc := range []struct {
		path   string
		scheme Scheme
		fail   string // in the public message; "" for success
	}{
		{"/ok", SchemeHTTP, ""},
		{"/moved", SchemeHTTP, ""}, // 3xx succeeds, and is not followed
		{"/broken", SchemeHTTP, "answered 500"},
		{"/missing", SchemeHTTP, "answered 404"},
		{"/ok", SchemeHTTPS, ""},
		{"/broken", SchemeHTTPS, "answered 500"},
	} {
		p := port
		if tc.scheme == SchemeHTTPS {
			p = tlsPort
		}
		err := Check(ctxFor(t, 10*time.Second), ag, Probe{Type: Liveness, HTTPGet: &HTTPGet{Path: tc.path, Port: p, Scheme: tc.scheme}})
		msg, _ := errkind.PublicMessage(err)
		switch {
		case tc.fail == "" && err != nil:
			t.Errorf("%s %s: %v, want success", tc.scheme, tc.path, err)
		case tc.fail != "" && (!errkind.Is(err, errkind.Unavailable) || !strings.Contains(msg, tc.fail)):
			t.Errorf("%s %s: %v (public %q), want unavailable, %q", tc.scheme, tc.path, err, msg, tc.fail)
		}
		if r := rc.lastRequest(); r == nil || r.URL.Path != tc.path {
			t.Errorf("%s %s: the server saw %v", tc.scheme, tc.path, r)
		}
	}

	// Headers: the probe's own, a Host override, and our User-Agent.
	err := Check(ctxFor(t, 10*time.Second), ag, Probe{Type: Startup, HTTPGet: &HTTPGet{Path: "/ok?x=1", Port: port,
		HTTPHeaders: []HTTPHeader{{"X-Probe", "yes"}, {"host", "app.example"}}}})
	if err != nil {
		t.Fatal(err)
	}
	r := rc.lastRequest()
	if r.Host != "app.example" || r.Header.Get("X-Probe") != "yes" || r.Header.Get("User-Agent") != userAgent || r.URL.RawQuery != "x=1" {
		t.Errorf("request: host %q, headers %v, query %q", r.Host, r.Header, r.URL.RawQuery)
	}
	if err := Check(ctxFor(t, 10*time.Second), ag, Probe{Type: Startup, HTTPGet: &HTTPGet{Path: "/ok", Port: port, Host: "h.example"}}); err != nil {
		t.Fatal(err)
	}
	if r := rc.lastRequest(); r.Host != "h.example" {
		t.Errorf("httpGet.host: the server saw Host %q", r.Host)
	}
	if err := Check(ctxFor(t, 10*time.Second), ag, Probe{Type: Startup, HTTPGet: &HTTPGet{Path: "/ok", Port: port}}); err != nil {
		t.Fatal(err)
	}
	if r := rc.lastRequest(); r.Host != "127.0.0.1:"+strconv.Itoa(port) {
		t.Errorf("default Host %q", r.Host)
	}
}

func TestCheckTCPSocket(t *testing.T) {
	t.Parallel()
	ag, _ := newSandbox(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := Check(ctxFor(t, 10*time.Second), ag, Probe{Type: Startup, TCPSocket: &TCPSocket{Port: portOf(t, ln.Addr().String())}}); err != nil {
		t.Errorf("tcpSocket on a listening port: %v", err)
	}
	closed := freePort(t)
	err = Check(ctxFor(t, 10*time.Second), ag, Probe{Type: Startup, TCPSocket: &TCPSocket{Port: closed}})
	if msg, _ := errkind.PublicMessage(err); !errkind.Is(err, errkind.Unavailable) || !strings.Contains(msg, "nothing listens on port "+strconv.Itoa(closed)) {
		t.Errorf("tcpSocket on a closed port: %v (public %q)", err, msg)
	}
}

// TestCheckTimeout: a server that accepts but never answers fails the attempt after
// timeoutSeconds.
func TestCheckTimeout(t *testing.T) {
	t.Parallel()
	ag, _ := newSandbox(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	start := time.Now()
	err = Check(ctxFor(t, 30*time.Second), ag, Probe{Type: Liveness, TimeoutSeconds: 1, HTTPGet: &HTTPGet{Port: portOf(t, ln.Addr().String())}})
	d := time.Since(start)
	if msg, _ := errkind.PublicMessage(err); !errkind.Is(err, errkind.Timeout) || !strings.Contains(msg, "no answer within 1s") {
		t.Errorf("silent server: %v (kind %v, public %q), want a timeout", err, errkind.Of(err), msg)
	}
	if d < 900*time.Millisecond || d > 10*time.Second {
		t.Errorf("the attempt took %v, want about timeoutSeconds (1s)", d)
	}
}

func TestCheckSandboxGone(t *testing.T) {
	t.Parallel()
	ag := agentapi.NewClient(t.TempDir() + "/none.sock")
	defer ag.Close()
	if err := Check(ctxFor(t, 10*time.Second), ag, Probe{Type: Liveness, TCPSocket: &TCPSocket{Port: 80}}); !errkind.Is(err, errkind.Unavailable) {
		t.Errorf("probe of a sandbox without agent: %v, want unavailable", err)
	}
}
