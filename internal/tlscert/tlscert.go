// Package tlscert serves TLS from a certificate and key file pair, reloading the pair when
// the files change so that a renewed certificate (certbot, cert-manager, a secret mount)
// takes effect without a restart. A pair that fails to load leaves the previous one
// serving.
//
// It does not obtain certificates (no ACME) and starts no goroutine: the files are
// checked during TLS handshakes, at most once per CheckInterval. Imported by cmd/sessiond.
package tlscert

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// CheckInterval is the least time between two looks at the files: a stat of each, cheap
// but not free on every handshake of a busy server.
const CheckInterval = time.Second

// Reloader holds the current certificate of a file pair. It is safe for concurrent use.
type Reloader struct {
	certFile, keyFile string
	log               *slog.Logger
	now               func() time.Time
	interval          time.Duration

	cert atomic.Pointer[tls.Certificate]

	// mu is held by the one handshake that checks the files; others use the current
	// certificate without waiting.
	mu sync.Mutex
	// checked is when the files were last looked at.
	checked time.Time // guarded by mu
	// certStat and keyStat describe the files as last loaded (or last tried).
	certStat, keyStat os.FileInfo // guarded by mu
}

// New loads the pair of PEM files and returns a Reloader serving it. It fails if the
// pair cannot be loaded: a server should not start without its certificate. log receives
// reloads and reload failures; nil discards them.
func New(certFile, keyFile string, log *slog.Logger) (*Reloader, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Reloader{certFile: certFile, keyFile: keyFile, log: log.With("component", "tls"), now: time.Now, interval: CheckInterval}
	cs, ks, err := r.stat()
	if err != nil {
		return nil, err
	}
	c, err := r.load()
	if err != nil {
		return nil, err
	}
	r.cert.Store(c)
	r.certStat, r.keyStat, r.checked = cs, ks, r.now()
	return r, nil
}

// TLSConfig returns a server configuration that presents the current certificate:
// TLS 1.2 or later, offering HTTP/2 and HTTP/1.1 by ALPN, so that net/http's Server
// (with ServeTLS(l, "", "")) speaks HTTP/2.
func (r *Reloader) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{"h2", "http/1.1"},
		GetCertificate: r.GetCertificate,
	}
}

// GetCertificate returns the current certificate, first reloading the files if it is
// time to look at them and they changed. It never fails once New succeeded.
func (r *Reloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if r.mu.TryLock() {
		r.maybeReloadLocked()
		r.mu.Unlock()
	}
	return r.cert.Load(), nil
}

// Certificate returns the certificate being served.
func (r *Reloader) Certificate() *tls.Certificate { return r.cert.Load() }

// maybeReloadLocked reloads the pair if CheckInterval has passed and either file
// changed since it was last loaded or tried.
//
// Preconditions: r.mu is held.
func (r *Reloader) maybeReloadLocked() {
	now := r.now()
	if now.Sub(r.checked) < r.interval {
		return
	}
	r.checked = now
	cs, ks, err := r.stat()
	if err != nil {
		if r.certStat != nil {
			r.log.Error("cannot read the TLS certificate files; serving the previous certificate", "err", err)
			r.certStat, r.keyStat = nil, nil // log once, and retry when they are back
		}
		return
	}
	if same(cs, r.certStat) && same(ks, r.keyStat) {
		return
	}
	// Remember what was tried, good or bad, so that a bad pair is reported once rather
	// than on every check; the next change of either file is tried again. A pair caught
	// half-written is retried when its second file is written.
	r.certStat, r.keyStat = cs, ks
	c, err := r.load()
	if err != nil {
		r.log.Error("cannot reload the TLS certificate; serving the previous one", "err", err)
		return
	}
	r.cert.Store(c)
	r.log.Info("reloaded the TLS certificate", "subject", c.Leaf.Subject.String(), "notAfter", c.Leaf.NotAfter)
}

func (r *Reloader) stat() (cert, key os.FileInfo, err error) {
	cert, err = os.Stat(r.certFile)
	if err != nil {
		return nil, nil, fmt.Errorf("TLS certificate: %w", err)
	}
	key, err = os.Stat(r.keyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("TLS key: %w", err)
	}
	return cert, key, nil
}

// load reads and checks the pair.
func (r *Reloader) load() (*tls.Certificate, error) {
	c, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return nil, fmt.Errorf("loading TLS certificate %s and key %s: %w", r.certFile, r.keyFile, err)
	}
	if c.Leaf == nil {
		if c.Leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return nil, fmt.Errorf("parsing TLS certificate %s: %w", r.certFile, err)
		}
	}
	if now := r.now(); now.After(c.Leaf.NotAfter) {
		// Served anyway: an expired certificate is better reported by clients than a
		// server that does not start, and its replacement is picked up when it arrives.
		r.log.Warn("the TLS certificate has expired", "file", r.certFile, "notAfter", c.Leaf.NotAfter)
	}
	return &c, nil
}

// same reports whether a and b describe the same unchanged file: the same inode (a
// rename over the file, as certificate tools and Kubernetes secret mounts do, makes a
// new one), size and modification time.
func same(a, b os.FileInfo) bool {
	if a == nil || b == nil {
		return false
	}
	return os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}
