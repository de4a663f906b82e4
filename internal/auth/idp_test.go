package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/json"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sessiond/sessiond/internal/errkind"
)

// This file holds the tests' identity provider: real keys, a real HTTP server with an
// OpenID Connect discovery document and a JWKS, and a minter of real signed tokens.

func TestMain(m *testing.M) {
	// The fetch client keeps no idle connections, so nothing may outlive a test.
	goleak.VerifyTestMain(m)
}

// testKey is a signing key with its key ID.
type testKey struct {
	kid  string
	priv crypto.Signer
}

// Keys are made once per test binary: RSA generation is slow under the race detector.
var (
	rsaKey1 = sync.OnceValue(func() testKey { return newRSAKey("rsa-1") })
	rsaKey2 = sync.OnceValue(func() testKey { return newRSAKey("rsa-2") })
	ecKey1  = sync.OnceValue(func() testKey { return newECKey("ec-1", elliptic.P256()) })
	ecKey2  = sync.OnceValue(func() testKey { return newECKey("ec-2", elliptic.P256()) })
	ecKey3  = sync.OnceValue(func() testKey { return newECKey("ec-384", elliptic.P384()) })
	ecKey5  = sync.OnceValue(func() testKey { return newECKey("ec-521", elliptic.P521()) })
)

func newRSAKey(kid string) testKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return testKey{kid: kid, priv: k}
}

func newECKey(kid string, c elliptic.Curve) testKey {
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		panic(err)
	}
	return testKey{kid: kid, priv: k}
}

// jwk returns the key's public JWK, as an issuer publishes it.
func (k testKey) jwk() map[string]any {
	switch pub := k.priv.Public().(type) {
	case *rsa.PublicKey:
		return map[string]any{"kty": "RSA", "kid": k.kid, "use": "sig",
			"n": b64.EncodeToString(pub.N.Bytes()), "e": b64.EncodeToString(big.NewInt(int64(pub.E)).Bytes())}
	case *ecdsa.PublicKey:
		size := (pub.Curve.Params().BitSize + 7) / 8
		b, err := pub.Bytes()
		if err != nil {
			panic(err)
		}
		return map[string]any{"kty": "EC", "kid": k.kid, "crv": pub.Curve.Params().Name,
			"x": b64.EncodeToString(b[1 : 1+size]), "y": b64.EncodeToString(b[1+size:])}
	}
	panic("unknown key type")
}

// mint returns a compact JWS of claims signed by k with alg; header entries are added to
// (or override) {"alg", "kid", "typ"}.
func mint(t testing.TB, k testKey, alg string, claims map[string]any, header map[string]any) string {
	t.Helper()
	input := signingInput(t, alg, k.kid, claims, header)
	h := map[string]crypto.Hash{"256": crypto.SHA256, "384": crypto.SHA384, "512": crypto.SHA512}[alg[2:]]
	d := h.New()
	d.Write([]byte(input))
	digest := d.Sum(nil)
	var sig []byte
	var err error
	switch {
	case strings.HasPrefix(alg, "RS"):
		sig, err = rsa.SignPKCS1v15(rand.Reader, k.priv.(*rsa.PrivateKey), h, digest)
	case strings.HasPrefix(alg, "PS"):
		sig, err = rsa.SignPSS(rand.Reader, k.priv.(*rsa.PrivateKey), h, digest, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
	case strings.HasPrefix(alg, "ES"):
		ek := k.priv.(*ecdsa.PrivateKey)
		var r, s *big.Int
		r, s, err = ecdsa.Sign(rand.Reader, ek, digest)
		n := (ek.Curve.Params().BitSize + 7) / 8
		sig = append(r.FillBytes(make([]byte, n)), s.FillBytes(make([]byte, n))...)
	default:
		t.Fatalf("mint: no signer for %s", alg)
	}
	if err != nil {
		t.Fatal(err)
	}
	return input + "." + b64.EncodeToString(sig)
}

// mintHMAC returns an HS256 token keyed with secret, as an attacker would make one.
func mintHMAC(t testing.TB, kid string, secret []byte, claims map[string]any) string {
	input := signingInput(t, "HS256", kid, claims, nil)
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(input))
	return input + "." + b64.EncodeToString(m.Sum(nil))
}

func signingInput(t testing.TB, alg, kid string, claims, header map[string]any) string {
	h := map[string]any{"alg": alg, "typ": "JWT"}
	if kid != "" {
		h["kid"] = kid
	}
	for k, v := range header {
		if v == nil {
			delete(h, k)
		} else {
			h[k] = v
		}
	}
	hb, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	cb, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	return b64.EncodeToString(hb) + "." + b64.EncodeToString(cb)
}

// idp is an identity provider on a real HTTP server: discovery at
// Issuer/.well-known/openid-configuration, the key set at /keys.
type idp struct {
	srv    *httptest.Server
	Issuer string

	mu sync.Mutex
	// keys are published; body, when set, is served instead of them; status, when set,
	// is the key set's status; docIssuer and docJWKS, when set, are the discovery
	// document's issuer and jwks_uri.
	keys      []testKey
	body      []byte
	status    int
	docIssuer string
	docJWKS   string
	// block, when set, delays the key set response until it is closed.
	block chan struct{}

	discoveries, fetches atomic.Int32
}

func newIDP(t *testing.T, keys ...testKey) *idp {
	p := &idp{keys: keys}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /tenant/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		p.discoveries.Add(1)
		p.mu.Lock()
		iss, jwks := p.docIssuer, p.docJWKS
		p.mu.Unlock()
		if iss == "" {
			iss = p.Issuer
		}
		if jwks == "" {
			jwks = p.srv.URL + "/keys"
		}
		json.NewEncoder(w).Encode(map[string]any{"issuer": iss, "jwks_uri": jwks, "id_token_signing_alg_values_supported": []string{"RS256"}})
	})
	mux.HandleFunc("GET /keys", func(w http.ResponseWriter, r *http.Request) {
		p.fetches.Add(1)
		p.mu.Lock()
		keys, body, status, block := p.keys, p.body, p.status, p.block
		p.mu.Unlock()
		if block != nil {
			<-block
		}
		if status != 0 {
			w.WriteHeader(status)
		}
		if body != nil {
			w.Write(body)
			return
		}
		set := []map[string]any{}
		for _, k := range keys {
			set = append(set, k.jwk())
		}
		json.NewEncoder(w).Encode(map[string]any{"keys": set})
	})
	p.srv = httptest.NewServer(mux)
	p.Issuer = p.srv.URL + "/tenant"
	t.Cleanup(p.srv.Close)
	return p
}

// publish replaces the published keys.
func (p *idp) publish(keys ...testKey) {
	p.mu.Lock()
	p.keys = keys
	p.mu.Unlock()
}

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

func (c *clock) Add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

// newAuth returns an Authenticator for cfg running on a test clock.
func newAuth(t *testing.T, cfg Config) (*Authenticator, *clock) {
	t.Helper()
	a, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &clock{t: time.Now()}
	a.now = c.Now
	return a, c
}

// claimsAt returns valid claims for issuer at now, with the SessionExecutor role.
func claimsAt(issuer string, now time.Time) map[string]any {
	return map[string]any{
		"iss": issuer, "sub": "user-1", "aud": "https://dynamicsessions.io",
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(),
		"roles": []string{"SessionExecutor"},
	}
}

// request returns a request with the given header pairs.
func request(kv ...string) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/pools/default/code/execute", nil)
	for i := 0; i+1 < len(kv); i += 2 {
		r.Header.Add(kv[i], kv[i+1])
	}
	return r
}

func bearer(tok string) *http.Request { return request("Authorization", "Bearer "+tok) }

// wantErr checks err is of kind and its public message contains msg.
func wantErr(t *testing.T, err error, kind errkind.Kind, msg string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %v %q", kind, msg)
	}
	if got := errkind.Of(err); got != kind {
		t.Fatalf("error %q is of kind %v, want %v", err, got, kind)
	}
	pub, _ := errkind.PublicMessage(err)
	if !strings.Contains(pub, msg) {
		t.Fatalf("public message %q does not contain %q (error: %v)", pub, msg, err)
	}
}
