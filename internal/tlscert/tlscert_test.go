package tlscert

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// pair is a self-signed certificate for 127.0.0.1 and its key, in PEM.
type pair struct {
	name      string
	cert, key []byte
	x509      *x509.Certificate
}

func newPair(t *testing.T, name string) pair {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pair{name: name, x509: c,
		cert: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		key:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})}
}

// install writes data to path by rename, as certificate tools do.
func install(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// files is a certificate and key file pair in a test directory.
type files struct{ cert, key string }

func newFiles(t *testing.T, p pair) files {
	dir := t.TempDir()
	f := files{filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")}
	f.put(t, p)
	return f
}

func (f files) put(t *testing.T, p pair) {
	install(t, f.cert, p.cert)
	install(t, f.key, p.key)
}

// logBuffer collects a logger's output.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *logBuffer) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// serve runs an http.Server with r's configuration and returns its address: through
// ServeTLS(l, "", ""), or, with ownListener, through Serve on a tls.NewListener (where
// HTTP/2 depends on the configuration's NextProtos alone).
func serve(t *testing.T, r *Reloader, ownListener ...bool) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok")) }),
		TLSConfig:         r.TLSConfig(),
		ReadHeaderTimeout: 10 * time.Second,
	}
	done := make(chan error, 1)
	if len(ownListener) > 0 && ownListener[0] {
		go func() { done <- srv.Serve(tls.NewListener(ln, r.TLSConfig())) }()
	} else {
		go func() { done <- srv.ServeTLS(ln, "", "") }()
	}
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("ServeTLS: %v", err)
		}
	})
	return ln.Addr().String()
}

// get makes one request on a new connection, trusting the given certificates, and
// returns the response's protocol major version and the served certificate's name.
func get(t *testing.T, addr string, h2only bool, trust ...pair) (proto int, name string) {
	t.Helper()
	roots := x509.NewCertPool()
	for _, p := range trust {
		roots.AddCert(p.x509)
	}
	tr := &http.Transport{}
	tr.TLSClientConfig = tlsClientConfig(roots)
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetHTTP2(true)
	if !h2only {
		tr.Protocols.SetHTTP1(true)
	}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 30 * time.Second}).Get("https://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %s", resp.Status)
	}
	return resp.ProtoMajor, resp.TLS.PeerCertificates[0].Subject.CommonName
}

func TestServesAndReloads(t *testing.T) {
	a, b, c, d := newPair(t, "a"), newPair(t, "b"), newPair(t, "c"), newPair(t, "d")
	trust := []pair{a, b, c, d}
	f := newFiles(t, a)
	var logs logBuffer
	r, err := New(f.cert, f.key, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	r.interval = 0 // look at the files on every handshake
	addr := serve(t, r)

	if _, name := get(t, addr, false, trust...); name != "a" {
		t.Fatalf("serving %q, want a", name)
	}

	f.put(t, b)
	if _, name := get(t, addr, false, trust...); name != "b" {
		t.Fatalf("after replacing the files: serving %q, want b", name)
	}
	if !strings.Contains(logs.String(), "reloaded the TLS certificate") {
		t.Errorf("no reload logged: %s", logs.String())
	}

	// A corrupt certificate keeps the previous pair serving, and says so once.
	install(t, f.cert, []byte("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n"))
	for range 3 {
		if _, name := get(t, addr, false, trust...); name != "b" {
			t.Fatalf("after a corrupt certificate: serving %q, want b", name)
		}
	}
	if n := strings.Count(logs.String(), "cannot reload the TLS certificate"); n != 1 {
		t.Errorf("the bad pair was reported %d times, want once: %s", n, logs.String())
	}

	// So does a certificate that does not match its key (a pair half replaced)...
	install(t, f.cert, c.cert)
	if _, name := get(t, addr, false, trust...); name != "b" {
		t.Fatalf("after a mismatched pair: serving %q, want b", name)
	}
	// ... until the key arrives.
	install(t, f.key, c.key)
	if _, name := get(t, addr, false, trust...); name != "c" {
		t.Fatalf("after the key arrived: serving %q, want c", name)
	}

	// Files that disappear keep the pair serving, and are loaded when they return.
	os.Remove(f.cert)
	os.Remove(f.key)
	if _, name := get(t, addr, false, trust...); name != "c" {
		t.Fatalf("after removing the files: serving %q, want c", name)
	}
	if !strings.Contains(logs.String(), "cannot read the TLS certificate files") {
		t.Errorf("missing files not logged: %s", logs.String())
	}
	f.put(t, d)
	if _, name := get(t, addr, false, trust...); name != "d" {
		t.Fatalf("after restoring the files: serving %q, want d", name)
	}
}

func TestCheckInterval(t *testing.T) {
	a, b := newPair(t, "a"), newPair(t, "b")
	f := newFiles(t, a)
	r, err := New(f.cert, f.key, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	r.now = func() time.Time { return now }
	f.put(t, b)
	if got := certName(t, r); got != "a" {
		t.Fatalf("within the check interval: serving %q, want a", got)
	}
	now = now.Add(CheckInterval)
	if got := certName(t, r); got != "b" {
		t.Fatalf("after the check interval: serving %q, want b", got)
	}
	if r.Certificate().Leaf.Subject.CommonName != "b" {
		t.Error("Certificate() is not the served certificate")
	}
}

func certName(t *testing.T, r *Reloader) string {
	c, err := r.GetCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	return c.Leaf.Subject.CommonName
}

func TestHTTP2(t *testing.T) {
	a := newPair(t, "a")
	f := newFiles(t, a)
	r, err := New(f.cert, f.key, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, own := range []bool{false, true} {
		addr := serve(t, r, own)
		if proto, _ := get(t, addr, true, a); proto != 2 {
			t.Errorf("own listener %v: an HTTP/2 client got HTTP/%d", own, proto)
		}
		if proto, _ := get(t, addr, false, a); proto != 2 {
			t.Errorf("own listener %v: a client offering HTTP/2 and HTTP/1.1 got HTTP/%d", own, proto)
		}
	}
	cfg := r.TLSConfig()
	if cfg.MinVersion != 0x0303 {
		t.Errorf("MinVersion %#x, want TLS 1.2", cfg.MinVersion)
	}
}

func TestNewErrors(t *testing.T) {
	a, b := newPair(t, "a"), newPair(t, "b")
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		install(t, p, data)
		return p
	}
	for _, tc := range []struct {
		name, cert, key, want string
	}{
		{"missing cert", filepath.Join(dir, "none.crt"), write("a.key", a.key), "TLS certificate"},
		{"missing key", write("a.crt", a.cert), filepath.Join(dir, "none.key"), "TLS key"},
		{"garbage cert", write("g.crt", []byte("garbage")), write("a2.key", a.key), "loading TLS certificate"},
		{"mismatched", write("a3.crt", a.cert), write("b.key", b.key), "loading TLS certificate"},
		{"key as cert", write("k.crt", a.key), write("a4.key", a.key), "loading TLS certificate"},
	} {
		if _, err := New(tc.cert, tc.key, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: New = %v, want an error about %q", tc.name, err, tc.want)
		}
	}
}

func tlsClientConfig(roots *x509.CertPool) *tls.Config {
	return &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
}
