package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
)

// seen is what the container received of one request.
type seen struct {
	method, path, rawPath, query, host string
	header                             http.Header
	body                               string
}

// TestForward: method, path, query, headers and body reach the container as the brief of
// azure-api.md §4.1 asks, and its answer comes back whole.
func TestForward(t *testing.T) {
	t.Parallel()
	got := make(chan seen, 1)
	port := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- seen{r.Method, r.URL.Path, r.URL.RawPath, r.URL.RawQuery, r.Host, r.Header.Clone(), string(b)}
		w.Header().Set("X-Reply", "yes")
		w.Header().Set("Connection", "X-Reply-Hop")
		w.Header().Set("X-Reply-Hop", "dropped")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, "got %d bytes", len(b))
	}))
	s := newSandbox(t)
	f := newFront(t, newProxy(t, Config{}), port, to(s.ag))

	const query = "identifier=sess-1&api-version=2025-02-02-preview&x=a%20b"
	req, _ := http.NewRequestWithContext(ctxFor(t, 30*time.Second), http.MethodPut, f.URL+poolPrefix+"/api/files/a%2Fb?"+query, strings.NewReader("the body"))
	req.Header.Set("Authorization", "Bearer secret-token")
	req.Header.Set("api-key", "secret-key")
	req.Header.Set("x-ms-apikey", "secret-key")
	req.Header.Set("Proxy-Authorization", "Basic c2VjcmV0")
	req.Header.Set("X-Custom", "kept")
	req.Header.Set("X-Forwarded-For", "6.6.6.6")
	req.Header.Set("X-Forwarded-Host", "spoofed.example")
	req.Header.Set(SessionIdentifierHeader, "someone-else")
	req.Header.Set("Connection", "X-Hop")
	req.Header.Set("X-Hop", "dropped")
	resp, err := client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated || string(b) != "got 8 bytes" || resp.Header.Get("X-Reply") != "yes" || resp.Header.Get("X-Reply-Hop") != "" {
		t.Errorf("answer: %s %q headers %v", resp.Status, b, resp.Header)
	}
	r := <-got
	frontHost := strings.TrimPrefix(f.URL, "http://")
	if r.method != http.MethodPut || r.path != "/api/files/a/b" || r.rawPath != "/api/files/a%2Fb" || r.query != query || r.body != "the body" || r.host != frontHost {
		t.Errorf("container saw %s %s (raw %q) ?%s host %q body %q", r.method, r.path, r.rawPath, r.query, r.host, r.body)
	}
	for name, want := range map[string]string{
		"Authorization":         "",
		"Api-Key":               "",
		"X-Ms-Apikey":           "",
		"Proxy-Authorization":   "",
		"X-Hop":                 "",
		"X-Custom":              "kept",
		"X-Forwarded-For":       "127.0.0.1",
		"X-Forwarded-Host":      frontHost,
		"X-Forwarded-Proto":     "http",
		SessionIdentifierHeader: "sess-1",
	} {
		if v := strings.Join(r.header.Values(name), ","); v != want {
			t.Errorf("container saw %s: %q, want %q", name, v, want)
		}
	}

	// The pool endpoint itself forwards as "/".
	resp, err = client(t).Get(f.URL + poolPrefix + "?identifier=sess-1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if r := <-got; r.path != "/" || r.query != "identifier=sess-1" {
		t.Errorf("pool root: container saw %q ?%s", r.path, r.query)
	}
}

// TestServerSentEvents: each event reaches the client when the container sends it, not
// when the response ends.
func TestServerSentEvents(t *testing.T) {
	t.Parallel()
	next := make(chan struct{})
	port := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: one\n\n")
		http.NewResponseController(w).Flush()
		select {
		case <-next:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "data: two\n\n")
	}))
	s := newSandbox(t)
	f := newFront(t, newProxy(t, Config{}), port, to(s.ag))
	req, _ := http.NewRequestWithContext(ctxFor(t, 30*time.Second), http.MethodGet, f.URL+poolPrefix+"/events?identifier=sess-1", nil)
	resp, err := client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	readEvent := func() string {
		var ev strings.Builder
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("reading an event: %v (so far %q)", err, ev.String())
			}
			if line == "\n" {
				return ev.String()
			}
			ev.WriteString(line)
		}
	}
	// The container holds the second event until the first has arrived here.
	if ev := readEvent(); ev != "data: one\n" {
		t.Errorf("first event %q", ev)
	}
	close(next)
	if ev := readEvent(); ev != "data: two\n" {
		t.Errorf("second event %q", ev)
	}
	if resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Errorf("content type %q", resp.Header.Get("Content-Type"))
	}
}

func TestWebSocket(t *testing.T) {
	t.Parallel()
	port := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		c.SetReadLimit(2 << 20)
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if err := c.Write(r.Context(), typ, append([]byte("echo: "), msg...)); err != nil {
				return
			}
		}
	}))
	s := newSandbox(t)
	f := newFront(t, newProxy(t, Config{}), port, to(s.ag))
	ctx := ctxFor(t, 30*time.Second)
	c, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(f.URL, "http")+poolPrefix+"/ws?identifier=sess-1", &websocket.DialOptions{HTTPClient: client(t)})
	if err != nil {
		t.Fatalf("dial: %v (response %v)", err, resp)
	}
	defer c.CloseNow()
	c.SetReadLimit(2 << 20)
	for i := range 3 {
		msg := "hello " + strconv.Itoa(i)
		if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		typ, b, err := c.Read(ctx)
		if err != nil || typ != websocket.MessageText || string(b) != "echo: "+msg {
			t.Fatalf("read %v %q %v, want the echo of %q", typ, b, err, msg)
		}
	}
	big := bytes.Repeat([]byte{0xab}, 1<<20)
	if err := c.Write(ctx, websocket.MessageBinary, big); err != nil {
		t.Fatal(err)
	}
	if _, b, err := c.Read(ctx); err != nil || !bytes.Equal(b, append([]byte("echo: "), big...)) {
		t.Fatalf("binary echo: %d bytes, %v", len(b), err)
	}
	if err := c.Close(websocket.StatusNormalClosure, "done"); err != nil {
		t.Errorf("close: %v", err)
	}
}

// pattern is a stream of size bytes of a repeating pattern, never held whole: byte i is
// i mod 251 (a prime, so that misplaced blocks change the checksum).
type pattern struct{ n, size int64 }

// patternBlock holds the pattern from every possible phase on: block[k:] starts at phase k.
var patternBlock = func() []byte {
	b := make([]byte, 251*300)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}()

func (p *pattern) Read(b []byte) (int, error) {
	if p.n >= p.size {
		return 0, io.EOF
	}
	b = b[:min(int64(len(b)), p.size-p.n)]
	n := copy(b, patternBlock[p.n%251:])
	p.n += int64(n)
	return n, nil
}

// peakHeap samples the heap in use; add is called as bytes flow, and samples every 8 MB.
type peakHeap struct {
	mu   sync.Mutex
	seen int64  // bytes since the last sample. Guarded by mu.
	peak uint64 // Guarded by mu.
}

func (h *peakHeap) add(n int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seen += int64(n)
	if h.seen < 8<<20 {
		return
	}
	h.seen = 0
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	h.peak = max(h.peak, ms.HeapInuse)
}

// TestLargeTransfers: a 200 MB upload and a 200 MB download stream through the proxy,
// the agent and its tunnel with bounded memory on both sides: the test process's heap
// (proxy, front, container) and the agent's peak resident set.
func TestLargeTransfers(t *testing.T) {
	const size = 200 << 20
	heap := &peakHeap{}
	var checksum atomic.Uint32
	port := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			w.Header().Set("Content-Length", strconv.Itoa(size))
			io.Copy(w, &pattern{size: size})
			return
		}
		var n int64
		sum := crc32.NewIEEE()
		buf := make([]byte, 64<<10)
		for {
			k, err := r.Body.Read(buf)
			sum.Write(buf[:k])
			n += int64(k)
			heap.add(k)
			if err != nil {
				break
			}
		}
		checksum.Store(sum.Sum32())
		fmt.Fprint(w, n)
	}))
	s := newSandbox(t)
	f := newFront(t, newProxy(t, Config{}), port, to(s.ag))
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse

	start := time.Now()
	req, _ := http.NewRequestWithContext(ctxFor(t, 2*time.Minute), http.MethodPost, f.URL+poolPrefix+"/upload?identifier=sess-1", &pattern{size: size})
	req.ContentLength = size
	resp, err := client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(b) != strconv.Itoa(size) {
		t.Fatalf("upload: %s %q", resp.Status, b)
	}
	sum := crc32.NewIEEE()
	io.Copy(sum, &pattern{size: size})
	if want := sum.Sum32(); checksum.Load() != want {
		t.Errorf("upload: the container's checksum %d, want %d", checksum.Load(), want)
	}
	t.Logf("upload of %d MB: %v", size>>20, time.Since(start))

	start = time.Now()
	req, _ = http.NewRequestWithContext(ctxFor(t, 2*time.Minute), http.MethodGet, f.URL+poolPrefix+"/download?identifier=sess-1", nil)
	resp, err = client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	buf := make([]byte, 64<<10)
	for {
		k, err := resp.Body.Read(buf)
		n += int64(k)
		heap.add(k)
		if err != nil {
			break
		}
	}
	resp.Body.Close()
	if n != size || resp.ContentLength != size {
		t.Errorf("download: %d bytes (Content-Length %d), want %d", n, resp.ContentLength, size)
	}
	t.Logf("download of %d MB: %v", size>>20, time.Since(start))

	heap.mu.Lock()
	grew := int64(heap.peak) - int64(base)
	heap.mu.Unlock()
	t.Logf("heap growth %d KB, agent peak RSS %d KB", grew>>10, peakRSS(t, s.info.PID)>>10)
	if grew > 32<<20 {
		t.Errorf("the heap grew by %d MB while %d MB streamed through", grew>>20, size>>20)
	}
	if hwm := peakRSS(t, s.info.PID); hwm > 64<<20 {
		t.Errorf("the agent's peak resident set is %d MB", hwm>>20)
	}
}

// peakRSS reads a process's peak resident set size (VmHWM) in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmHWM")
	return 0
}

// get sends GET path through f and returns the status and body.
func get(t *testing.T, f *front, path string) (int, string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctxFor(t, 30*time.Second), http.MethodGet, f.URL+poolPrefix+path, nil)
	resp, err := client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// wantErr checks the last error f rendered.
func wantErr(t *testing.T, f *front, kind errkind.Kind, msgPart string) {
	t.Helper()
	err := f.lastErr()
	msg, _ := errkind.PublicMessage(err)
	if !errkind.Is(err, kind) || !strings.Contains(msg, msgPart) {
		t.Errorf("error %v (kind %v, public %q), want %v mentioning %q", err, errkind.Of(err), msg, kind, msgPart)
	}
}

func TestNoListener(t *testing.T) {
	t.Parallel()
	s := newSandbox(t)
	port := freePort(t)
	f := newFront(t, newProxy(t, Config{}), port, to(s.ag))
	if status, body := get(t, f, "/x?identifier=sess-1"); status != http.StatusServiceUnavailable {
		t.Errorf("status %d %q, want 503", status, body)
	}
	wantErr(t, f, errkind.Unavailable, "nothing listens on port "+itoa(port))
}

func TestResponseHeaderTimeout(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	defer close(release)
	port := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	s := newSandbox(t)
	f := newFront(t, newProxy(t, Config{ResponseHeaderTimeout: 300 * time.Millisecond}), port, to(s.ag))
	start := time.Now()
	if status, body := get(t, f, "/slow"); status != http.StatusGatewayTimeout {
		t.Errorf("status %d %q, want 504", status, body)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("the timeout took %v", d)
	}
	wantErr(t, f, errkind.Timeout, "did not answer within 300ms")
}

// TestSandboxGone: a destroyed sandbox's kept tunnels are not used for another sandbox,
// and a request to it fails clearly.
func TestSandboxGone(t *testing.T) {
	t.Parallel()
	port := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	a, b := newSandbox(t), newSandbox(t)
	p := newProxy(t, Config{})
	fa, fb := newFront(t, p, port, to(a.ag)), newFront(t, p, port, to(b.ag))
	for _, f := range []*front{fa, fb} {
		if status, body := get(t, f, "/"); status != http.StatusOK || body != "ok" {
			t.Fatalf("status %d %q", status, body)
		}
	}
	a.destroy()
	if status, _ := get(t, fa, "/"); status != http.StatusServiceUnavailable {
		t.Errorf("request to a destroyed sandbox: status %d, want 503", status)
	}
	wantErr(t, fa, errkind.Unavailable, "cannot be reached")
	if status, body := get(t, fb, "/"); status != http.StatusOK || body != "ok" {
		t.Errorf("the other sandbox: status %d %q", status, body)
	}
}

// TestTunnelCap: requests above the agent's tunnel cap fail with LimitExceeded, and
// succeed again once tunnels are free.
func TestTunnelCap(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	var held sync.WaitGroup
	held.Add(2)
	port := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			held.Done()
			<-release
		}
		io.WriteString(w, "ok")
	}))
	s := newSandbox(t, "-max-tunnels", "2")
	f := newFront(t, newProxy(t, Config{}), port, to(s.ag))
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			if status, body := get(t, f, "/hold"); status != http.StatusOK {
				t.Errorf("held request: %d %q", status, body)
			}
		})
	}
	held.Wait() // both tunnels are in use
	if status, _ := get(t, f, "/third"); status != http.StatusTooManyRequests {
		t.Errorf("third request: status %d, want 429", status)
	}
	wantErr(t, f, errkind.LimitExceeded, "maximum of 2 tunnels")
	close(release)
	wg.Wait()
	// The two tunnels are kept idle for reuse, so the next request gets one.
	if status, body := get(t, f, "/after"); status != http.StatusOK {
		t.Errorf("after the release: %d %q", status, body)
	}
}

func TestResolveError(t *testing.T) {
	t.Parallel()
	p := newProxy(t, Config{})
	want := errkind.New(errkind.LimitExceeded, "the pool is full")
	f := newFront(t, p, 80, func(*http.Request) (*agentapi.Client, string, error) { return nil, "", want })
	if status, body := get(t, f, "/"); status != http.StatusTooManyRequests || !strings.Contains(body, "the pool is full") {
		t.Errorf("status %d %q", status, body)
	}
	if err := f.lastErr(); !errors.Is(err, want) {
		t.Errorf("onError got %v, want the resolve error", err)
	}
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	for _, cfg := range []Config{
		{ResponseHeaderTimeout: -1},
		{DialTimeout: -time.Second},
		{MaxIdleTunnels: -1},
		{IdentifierHeader: "Bad Header"},
		{IdentifierHeader: "X:Y"},
	} {
		if _, err := New(cfg); !errkind.Is(err, errkind.Invalid) {
			t.Errorf("New(%+v) = %v, want invalid", cfg, err)
		}
	}
	p := newProxy(t, Config{IdentifierHeader: "x-session-id"})
	if p.cfg.IdentifierHeader != "X-Session-Id" || p.cfg.ResponseHeaderTimeout != DefaultResponseHeaderTimeout || p.cfg.DialTimeout != DefaultDialTimeout {
		t.Errorf("config with defaults: %+v", p.cfg)
	}
	if err := p.Forward(nil, nil, Target{Port: 80}); !errkind.Is(err, errkind.Internal) {
		t.Errorf("Forward without an agent: %v", err)
	}
}

// TestIdentifierHeaderConfigurable: the session identifier goes in the configured header.
func TestIdentifierHeaderConfigurable(t *testing.T) {
	t.Parallel()
	got := make(chan http.Header, 1)
	port := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got <- r.Header.Clone() }))
	s := newSandbox(t)
	f := newFront(t, newProxy(t, Config{IdentifierHeader: "X-Session"}), port, to(s.ag))
	get(t, f, "/")
	h := <-got
	if h.Get("X-Session") != "sess-1" || h.Get(SessionIdentifierHeader) != "" {
		t.Errorf("headers %v", h)
	}
}
