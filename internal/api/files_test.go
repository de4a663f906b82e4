package api

import (
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/pool"
)

// fakeAgent serves handler on a unix socket as a session's agent, and returns a stub
// server whose python pool leases sessions on it; released counts the leases released.
func fakeAgent(t *testing.T, handler http.HandlerFunc) (srv *Server, hs *httptest.Server, released *atomic.Int32) {
	t.Helper()
	dir, err := os.MkdirTemp("", "fa") // short: socket paths are limited to 107 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "s")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	as := &http.Server{Handler: handler}
	go as.Serve(ln)
	client := agentapi.NewClient(socket)
	released = new(atomic.Int32)
	pools := stubPools{"python": {spec: testSpec("python", pool.PythonLTS), acquire: func(id string) (*pool.Lease, error) {
		return pool.NewLease(pool.SessionInfo{Identifier: id}, false, client, func() { released.Add(1) }), nil
	}}}
	srv = New(Config{Pools: pools})
	hs = httptest.NewServer(srv)
	t.Cleanup(func() {
		hs.Close()
		client.Close()
		as.Close()
	})
	return srv, hs, released
}

// TestDownloadCannotRunScript: a file the sandbox wrote is served, on both generations,
// with nosniff and a sandboxing CSP, so an HTML or SVG file can never run script in the
// API's origin; error answers of a download carry them too.
func TestDownloadCannotRunScript(t *testing.T) {
	page := "<html><body><script>alert(document.domain)</script></body></html>"
	_, hs, _ := fakeAgent(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != agentapi.PathFilesContent || r.URL.Query().Get("path") == "missing.html" {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			json.NewEncoder(w).Encode(agentapi.ErrorBody{Error: agentapi.Error{Kind: "not_found", Message: "no such file"}})
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(page)))
		w.Write([]byte(page))
	})
	for _, tc := range []struct {
		target string
		status int
		ct     string
	}{
		{pyPath + "/files/content/page.html?" + v2024 + "&identifier=dl-test", 200, "text/html; charset=utf-8"},
		{pyPath + "/files/page.html/content?" + v2025 + "&identifier=dl-test", 200, "text/html; charset=utf-8"},
		{pyPath + "/files/image.svg/content?" + v2025 + "&identifier=dl-test", 200, "image/svg+xml"},
		{pyPath + "/files/noextension/content?" + v2025 + "&identifier=dl-test", 200, "text/html; charset=utf-8"}, // sniffed
		{pyPath + "/files/content/missing.html?" + v2024 + "&identifier=dl-test", 404, "application/json; charset=utf-8"},
		{pyPath + "/files/missing.html/content?" + v2025 + "&identifier=dl-test", 404, "application/json; charset=utf-8"},
	} {
		r := send(t, hs, "GET", tc.target, "", "")
		h := r.header
		if r.status != tc.status || h.Get("Content-Type") != tc.ct {
			t.Errorf("GET %s: %d %q, want %d %q", tc.target, r.status, h.Get("Content-Type"), tc.status, tc.ct)
		}
		if got := h.Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("GET %s: X-Content-Type-Options %q, want nosniff", tc.target, got)
		}
		if got := h.Get("Content-Security-Policy"); got != "sandbox" {
			t.Errorf("GET %s: Content-Security-Policy %q, want sandbox", tc.target, got)
		}
	}
}

// TestHungAgent: an agent that never answers cannot pin a files request, or the lease it
// holds: metadata calls and transfers have deadlines, and one that passes is a 504.
func TestHungAgent(t *testing.T) {
	stop := make(chan struct{})
	srv, hs, released := fakeAgent(t, func(w http.ResponseWriter, r *http.Request) {
		select { // hung: until the API gives up, or, with a body unread, the test ends
		case <-r.Context().Done():
		case <-stop:
		}
	})
	t.Cleanup(func() { close(stop) }) // runs before fakeAgent's cleanup
	srv.metadataTimeout, srv.transferTimeout = 100*time.Millisecond, 300*time.Millisecond
	upload := "--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.txt\"\r\n\r\nx\r\n--b--\r\n"
	for _, tc := range []struct {
		method, target, ct, body string
		min                      time.Duration
	}{
		{"GET", pyPath + "/files?" + v2025 + "&identifier=hung-1", "", "", srv.metadataTimeout},
		{"GET", pyPath + "/files?" + v2024 + "&identifier=hung-1", "", "", srv.metadataTimeout},
		{"GET", pyPath + "/files/x.txt?" + v2025 + "&identifier=hung-1", "", "", srv.metadataTimeout},
		{"DELETE", pyPath + "/files/x.txt?" + v2025 + "&identifier=hung-1", "", "", srv.metadataTimeout},
		{"GET", pyPath + "/files/x.txt/content?" + v2025 + "&identifier=hung-1", "", "", srv.transferTimeout},
		{"GET", pyPath + "/files/content/x.txt?" + v2024 + "&identifier=hung-1", "", "", srv.transferTimeout},
		{"POST", pyPath + "/files?" + v2025 + "&identifier=hung-1", "multipart/form-data; boundary=b", upload, srv.transferTimeout},
		{"POST", pyPath + "/files/upload?" + v2024 + "&identifier=hung-1", "multipart/form-data; boundary=b", upload, srv.transferTimeout},
	} {
		before := released.Load()
		start := time.Now()
		r := send(t, hs, tc.method, tc.target, tc.ct, tc.body)
		d := time.Since(start)
		if r.status != http.StatusGatewayTimeout || r.err.Code != codeTimeout {
			t.Errorf("%s %s: %d %+v, want 504 %s", tc.method, tc.target, r.status, r.err, codeTimeout)
		}
		if d < tc.min || d > tc.min+10*time.Second {
			t.Errorf("%s %s: answered after %v, want after its deadline of %v", tc.method, tc.target, d, tc.min)
		}
		if released.Load() != before+1 {
			t.Errorf("%s %s: the lease was not released", tc.method, tc.target)
		}
	}
}

// TestAgentErrorTimeout: a deadline of the call's own context is a Timeout with a public
// message; any other failure keeps its kind.
func TestAgentErrorTimeout(t *testing.T) {
	srv := New(Config{Pools: stubPools{}})
	req := httptest.NewRequest("GET", "/", nil)
	ctx, cancel := srv.agentContext(req, false)
	cancel()
	if err := agentError(ctx, "listing files", errors.New("boom")); err == nil || describeStatus(err) != http.StatusInternalServerError {
		t.Errorf("cancelled call: %v (status %d), want an internal error", err, describeStatus(err))
	}
	srv.metadataTimeout = time.Nanosecond
	ctx, cancel = srv.agentContext(req, false)
	defer cancel()
	<-ctx.Done()
	if err := agentError(ctx, "listing files", errors.New("boom")); describeStatus(err) != http.StatusGatewayTimeout {
		t.Errorf("call past its deadline: %v (status %d), want 504", err, describeStatus(err))
	}
}

func describeStatus(err error) int {
	status, _, _ := describe(err)
	return status
}
