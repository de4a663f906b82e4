package auth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Limits on what an issuer's endpoints may send.
const (
	// maxDocumentBytes bounds a discovery document or key set. Entra ID's key set is about
	// 10 KiB; a megabyte leaves room and stops a misbehaving endpoint from filling memory.
	maxDocumentBytes = 1 << 20
	// maxKeys bounds the keys kept from one key set; a token without "kid" is tried
	// against each key of its type, so this also bounds that work.
	maxKeys = 100
	// RSA key sizes accepted: below 2048 bits is weak, above 8192 makes verification
	// needlessly slow for a key the issuer controls.
	minRSABits, maxRSABits = 2048, 8192
	// maxRedirects bounds redirects followed while fetching.
	maxRedirects = 3
)

// publicKey is one usable key of a key set.
type publicKey struct {
	kid string
	alg string // optional: the one algorithm the key is for
	key crypto.PublicKey
}

// jwk is a JSON Web Key (RFC 7517) as far as sessiond reads it.
type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
	N   string `json:"n"`
	E   string `json:"e"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
}

// parseKeySet decodes a JWKS document into its usable signing keys. Keys for encryption,
// of other types (including symmetric "oct" keys, which are never trusted from a key
// set) or malformed are left out and described in skipped.
func parseKeySet(b []byte) (keys []publicKey, skipped []string, err error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(b, &set); err != nil {
		return nil, nil, fmt.Errorf("decoding key set: %w", err)
	}
	if set.Keys == nil {
		return nil, nil, errors.New(`decoding key set: no "keys" array`)
	}
	for i, raw := range set.Keys {
		if len(keys) == maxKeys {
			skipped = append(skipped, fmt.Sprintf("keys after the first %d", maxKeys))
			break
		}
		var k jwk
		if err := json.Unmarshal(raw, &k); err != nil {
			skipped = append(skipped, fmt.Sprintf("key %d: %v", i, err))
			continue
		}
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		pk, err := k.publicKey()
		if err != nil {
			skipped = append(skipped, fmt.Sprintf("key %d (kid %.40q): %v", i, k.Kid, err))
			continue
		}
		keys = append(keys, publicKey{kid: k.Kid, alg: k.Alg, key: pk})
	}
	return keys, skipped, nil
}

func (k *jwk) publicKey() (crypto.PublicKey, error) {
	switch k.Kty {
	case "RSA":
		n, err := b64.DecodeString(k.N)
		if err != nil {
			return nil, fmt.Errorf(`"n": %w`, err)
		}
		e, err := b64.DecodeString(k.E)
		if err != nil {
			return nil, fmt.Errorf(`"e": %w`, err)
		}
		pub := &rsa.PublicKey{N: new(big.Int).SetBytes(n)}
		if bits := pub.N.BitLen(); bits < minRSABits || bits > maxRSABits {
			return nil, fmt.Errorf("RSA key of %d bits (want %d to %d)", bits, minRSABits, maxRSABits)
		}
		eb := new(big.Int).SetBytes(e)
		if !eb.IsInt64() || eb.Int64() < 3 || eb.Int64() > 1<<31-1 || eb.Bit(0) == 0 {
			return nil, errors.New("RSA exponent is not an odd number from 3 to 2^31-1")
		}
		pub.E = int(eb.Int64())
		return pub, nil
	case "EC":
		var curve elliptic.Curve
		switch k.Crv {
		case "P-256":
			curve = elliptic.P256()
		case "P-384":
			curve = elliptic.P384()
		case "P-521":
			curve = elliptic.P521()
		default:
			return nil, fmt.Errorf("unsupported curve %.20q", k.Crv)
		}
		size := (curve.Params().BitSize + 7) / 8
		x, errX := b64.DecodeString(k.X)
		y, errY := b64.DecodeString(k.Y)
		if errX != nil || errY != nil || len(x) != size || len(y) != size {
			return nil, fmt.Errorf(`"x" and "y" must be %d bytes each`, size)
		}
		// Checks that the point is on the curve.
		return ecdsa.ParseUncompressedPublicKey(curve, append(append([]byte{4}, x...), y...))
	}
	return nil, fmt.Errorf("unsupported key type %.20q", k.Kty)
}

// keySource fetches and caches one issuer's keys. Fetches happen on demand, in the
// goroutine of the request that needs them: when no keys are cached, when the cached ones
// are older than maxAge, or when a token names a key ID the cache lacks. At most one
// fetch runs at a time (others wait for it), and a new one starts at most once per
// refetchInterval, so tokens with made-up key IDs cannot make sessiond hammer the issuer.
type keySource struct {
	issuer          string
	jwksURI         string // from the configuration; empty means discovery
	client          *http.Client
	timeout         time.Duration
	refetchInterval time.Duration
	maxAge          time.Duration
	now             func() time.Time
	log             *slog.Logger

	mu sync.Mutex
	// keys are the last fetched keys; fetchedAt is when (zero: never).
	keys      []publicKey   // guarded by mu
	fetchedAt time.Time     // guarded by mu
	tried     time.Time     // guarded by mu; the last fetch attempt's start
	lastErr   error         // guarded by mu; the last attempt's error
	found     string        // guarded by mu; the key set URL discovery found
	inflight  chan struct{} // guarded by mu; closed when the running fetch ends
}

// lookupKeys returns the keys with key ID kid (with an empty kid, every key).
func lookupKeys(keys []publicKey, kid string) []publicKey {
	if kid == "" {
		return keys
	}
	var out []publicKey
	for _, k := range keys {
		if k.kid == kid {
			out = append(out, k)
		}
	}
	return out
}

// keysFor returns the keys that may have signed a token naming kid, fetching the key set
// when needed. It returns an error when the issuer's keys have never been fetched and
// the last try failed, and no error but no keys when the key is unknown.
func (s *keySource) keysFor(ctx context.Context, kid string) ([]publicKey, error) {
	s.mu.Lock()
	waited := false
	for {
		ks := lookupKeys(s.keys, kid)
		stale := s.fetchedAt.IsZero() || s.now().Sub(s.fetchedAt) >= s.maxAge
		if len(ks) > 0 && !stale {
			s.mu.Unlock()
			return ks, nil
		}
		if done := s.inflight; done != nil {
			s.mu.Unlock()
			select {
			case <-done:
			case <-ctx.Done():
				return nil, fmt.Errorf("waiting for issuer %s's keys: %w", s.issuer, ctx.Err())
			}
			s.mu.Lock()
			waited = true
			continue
		}
		if waited || (!s.tried.IsZero() && s.now().Sub(s.tried) < s.refetchInterval) {
			// A fetch just happened: use what it left.
			fetchedAt, lastErr := s.fetchedAt, s.lastErr
			s.mu.Unlock()
			if fetchedAt.IsZero() && lastErr != nil {
				return nil, lastErr
			}
			return ks, nil
		}
		done := make(chan struct{})
		s.inflight, s.tried = done, s.now()
		found := s.found
		s.mu.Unlock()

		// The fetch serves every waiting request, so one caller giving up must not cut it
		// short; the timeout bounds it.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.timeout)
		keys, uri, err := s.fetch(fctx, found)
		cancel()

		s.mu.Lock()
		s.inflight = nil
		close(done)
		waited = true
		s.found = uri
		s.lastErr = err
		if err == nil {
			s.keys, s.fetchedAt = keys, s.now()
		} else if !s.fetchedAt.IsZero() {
			// The old keys stay in use; this error is returned to no one.
			s.log.Warn("refreshing an issuer's keys failed; keeping the previous keys", "issuer", s.issuer, "err", err)
		}
	}
}

// fetch reads the key set, first finding its URL by discovery when the configuration
// gave none and no earlier discovery did (found).
func (s *keySource) fetch(ctx context.Context, found string) ([]publicKey, string, error) {
	uri := s.jwksURI
	if uri == "" {
		uri = found
	}
	if uri == "" {
		var err error
		if uri, err = s.discover(ctx); err != nil {
			return nil, "", err
		}
	}
	b, err := s.get(ctx, uri)
	if err != nil {
		return nil, found, fmt.Errorf("fetching issuer %s's keys: %w", s.issuer, err)
	}
	keys, skipped, err := parseKeySet(b)
	if err != nil {
		return nil, found, fmt.Errorf("issuer %s's keys from %s: %w", s.issuer, uri, err)
	}
	if len(skipped) > 0 {
		s.log.Warn("an issuer's key set has keys that cannot be used", "issuer", s.issuer, "skipped", skipped)
	}
	s.log.Debug("fetched an issuer's keys", "issuer", s.issuer, "keys", len(keys))
	if s.jwksURI == "" {
		found = uri
	}
	return keys, found, nil
}

// discover reads the issuer's OpenID Connect discovery document and returns its
// jwks_uri.
func (s *keySource) discover(ctx context.Context) (string, error) {
	u := strings.TrimSuffix(s.issuer, "/") + "/.well-known/openid-configuration"
	b, err := s.get(ctx, u)
	if err != nil {
		return "", fmt.Errorf("discovering issuer %s: %w", s.issuer, err)
	}
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return "", fmt.Errorf("discovering issuer %s: decoding %s: %w", s.issuer, u, err)
	}
	if doc.Issuer != s.issuer {
		// OpenID Connect Discovery §4.3: a document for another issuer must not be used.
		return "", fmt.Errorf("discovering issuer %s: %s names issuer %.200q", s.issuer, u, doc.Issuer)
	}
	if err := checkFetchURL(doc.JWKSURI); err != nil {
		return "", fmt.Errorf("discovering issuer %s: jwks_uri: %w", s.issuer, err)
	}
	return doc.JWKSURI, nil
}

// get fetches u and returns its body, refusing other statuses than 200 and bodies above
// maxDocumentBytes.
func (s *keySource) get(ctx context.Context, u string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: status %s", u, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxDocumentBytes+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s: reading the body: %w", u, err)
	}
	if len(b) > maxDocumentBytes {
		return nil, fmt.Errorf("GET %s: the body is larger than the limit of %d bytes", u, maxDocumentBytes)
	}
	return b, nil
}

// newFetchClient returns the HTTP client for discovery and key sets: its own transport,
// a timeout, and redirects only to URLs checkFetchURL accepts.
//
// Keep-alives are off: fetches are minutes apart, and idle connections would keep
// goroutines running that nothing could stop (an Authenticator has no Close).
func newFetchClient(timeout time.Duration) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DisableKeepAlives = true
	return &http.Client{
		Transport: tr,
		Timeout:   timeout,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= maxRedirects {
				return fmt.Errorf("more than %d redirects", maxRedirects)
			}
			return checkFetchURL(req.URL.String())
		},
	}
}
