package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/auth"
)

// TestServeTLS runs `sessiond serve -tls-cert -tls-key` on a loopback port: HTTPS with
// HTTP/2 negotiated, plain HTTP refused, and a certificate replaced on disk served to new
// connections without a restart.
func TestServeTLS(t *testing.T) {
	env := newRealEnv(t)
	dir := t.TempDir()
	ca := newTestCA(t)
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	ca.issue(t, 1, certFile, keyFile)
	cfg := writeServeConfig(t, env, dir, "")

	base, stop := startServe(t, env, "-listen", "127.0.0.1:0", "-config", cfg, "-tls-cert", certFile, "-tls-key", keyFile)
	if !strings.HasPrefix(base, "https://127.0.0.1:") {
		t.Fatalf("serving at %s, want https on loopback", base)
	}
	client := ca.client()
	resp, body := get(t, client, base+"/healthz", nil)
	if resp.StatusCode != 200 || resp.Proto != "HTTP/2.0" {
		t.Errorf("healthz over TLS: %s %s %s, want 200 over HTTP/2.0", resp.Status, resp.Proto, body)
	}
	if n := resp.TLS.PeerCertificates[0].SerialNumber.Int64(); n != 1 {
		t.Errorf("served certificate %d, want 1", n)
	}
	resp, body = get(t, client, base+"/pools/tls-pool/listSessions?api-version=2025-02-02-preview", nil)
	if resp.StatusCode != 200 || resp.Proto != "HTTP/2.0" {
		t.Errorf("data plane over TLS: %s %s %s", resp.Status, resp.Proto, body)
	}
	// Plain HTTP to the TLS port gets nothing of the API.
	if resp, err := http.Get("http://" + strings.TrimPrefix(base, "https://") + "/healthz"); err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 400 || strings.Contains(string(b), "ok") {
			t.Errorf("plain HTTP to the TLS port: %s %s", resp.Status, b)
		}
	}

	// Renewal: the new pair is renamed into place, as certificate tools and Kubernetes
	// secret mounts do; new connections get it.
	ca.issue(t, 2, certFile+".new", keyFile+".new")
	if err := os.Rename(keyFile+".new", keyFile); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(certFile+".new", certFile); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, _ := get(t, ca.client(), base+"/healthz", nil)
		if n := resp.TLS.PeerCertificates[0].SerialNumber.Int64(); n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the renewed certificate is not served after 30 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := stop(); err != nil {
		t.Errorf("serve returned %v after its context ended", err)
	}
}

// TestServeListenBeyondLoopback: without authentication serve refuses an address beyond
// loopback; with an auth section it serves there, and requires credentials.
func TestServeListenBeyondLoopback(t *testing.T) {
	g := &globals{DataDir: t.TempDir(), Stdout: io.Discard, Stderr: io.Discard, Log: slog.New(slog.DiscardHandler)}
	err := cmdServe(context.Background(), g, []string{"-listen", "0.0.0.0:0"})
	var ue usageError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "without authentication") {
		t.Errorf("serve -listen 0.0.0.0:0 without auth: %v, want a usage error", err)
	}
	for _, addr := range []string{"[::]:0", "192.0.2.1:0", "example.com:0"} {
		if err := cmdServe(context.Background(), g, []string{"-listen", addr}); !errors.As(err, &ue) {
			t.Errorf("serve -listen %s without auth: %v, want a usage error", addr, err)
		}
	}

	env := newRealEnv(t)
	dir := t.TempDir()
	key, hash, err := auth.NewAPIKey()
	if err != nil {
		t.Fatal(err)
	}
	cfg := writeServeConfig(t, env, dir, fmt.Sprintf("auth:\n  apiKeys:\n  - {name: t, hash: %q, roles: [SessionExecutor]}\n", hash))
	base, stop := startServe(t, env, "-listen", "0.0.0.0:0", "-config", cfg)
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(base, "http://"))
	hosts := append([]string{"127.0.0.1"}, hostIPv4s()...)
	for _, h := range hosts {
		u := "http://" + net.JoinHostPort(h, port)
		if resp, body := get(t, http.DefaultClient, u+"/healthz", nil); resp.StatusCode != 200 {
			t.Errorf("healthz at %s: %s %s", u, resp.Status, body)
		}
		resp, body := get(t, http.DefaultClient, u+"/pools/tls-pool/listSessions?api-version=2025-02-02-preview", nil)
		wantEnvelope(t, resp, body, 401, "Unauthorized")
		// Authenticated, any Host is served: there is no DNS rebinding to fear.
		resp, body = get(t, http.DefaultClient, u+"/pools/tls-pool/listSessions?api-version=2025-02-02-preview",
			map[string]string{"api-key": key, "Host": "sessiond.example"})
		if resp.StatusCode != 200 {
			t.Errorf("listSessions with a key at %s: %s %s", u, resp.Status, body)
		}
	}
	if err := stop(); err != nil {
		t.Errorf("serve returned %v after its context ended", err)
	}
}

// writeServeConfig writes a configuration with one pool that starts no sandbox, and extra
// YAML appended.
func writeServeConfig(t *testing.T, env *realEnv, dir, extra string) string {
	t.Helper()
	rtName := ""
	for _, name := range []string{"runc", "runsc"} {
		if rt, err := openRuntime(env.g, name); err == nil && rt.Capabilities().Available {
			rtName = name
			break
		}
	}
	if rtName == "" {
		env.runtime(t, "runc") // skips, or fails when required
	}
	cfg := filepath.Join(dir, "sessiond.yaml")
	text := fmt.Sprintf(`pools:
- name: tls-pool
  properties: {scaleConfiguration: {maxConcurrentSessions: 1, readySessionInstances: 0}}
  sessiond: {runtime: %s, image: %s}
%s`, rtName, env.img.Name, extra)
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// startServe runs cmdServe with args and returns the base URL it prints and a function
// that stops it and returns its error.
func startServe(t *testing.T, env *realEnv, args ...string) (string, func() error) {
	t.Helper()
	out := &lockedBuffer{}
	g := *env.g
	g.Stdout = out
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- cmdServe(ctx, &g, args) }()
	var once sync.Once
	var err error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-errc:
			case <-time.After(2 * time.Minute):
				err = errors.New("serve did not return within 2 minutes of its context's end")
			}
		})
		return err
	}
	t.Cleanup(func() { stop() })
	at := regexp.MustCompile(`at (https?://[^/ ]+)/subscriptions/`)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if m := at.FindStringSubmatch(out.String()); m != nil {
			return m[1], stop
		}
		select {
		case err := <-errc:
			t.Fatalf("serve %v: %v", args, err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve printed no address in 2 minutes: %q", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// get sends a GET with headers (Host included) and returns the response and its body.
func get(t *testing.T, c *http.Client, url string, headers map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		if k == "Host" {
			req.Host = v
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

// lockedBuffer is a bytes.Buffer safe for one writer and concurrent readers.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// testCA issues server certificates for 127.0.0.1 and localhost.
type testCA struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
	pool *x509.CertPool
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1000), Subject: pkix.Name{CommonName: "sessiond test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{key: key, cert: cert, pool: pool}
}

// issue writes a server certificate with serial and its key as PEM files.
func (ca *testCA) issue(t *testing.T, serial int64, certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "sessiond"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// client returns a client that trusts the CA, offers HTTP/2 and makes a new connection for
// every request (so that each one sees the certificate being served).
func (ca *testCA) client() *http.Client {
	return &http.Client{Timeout: time.Minute, Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: ca.pool},
		ForceAttemptHTTP2: true,
		DisableKeepAlives: true,
	}}
}
