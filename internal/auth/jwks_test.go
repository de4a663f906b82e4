package auth

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/errkind"
)

// authenticate runs one token through a and returns the error.
func authenticate(a *Authenticator, tok string) error {
	_, err := a.Authenticate(context.Background(), bearer(tok))
	return err
}

func TestKeyRotation(t *testing.T) {
	p := newIDP(t, rsaKey1())
	a, c := newAuth(t, Config{Issuers: []IssuerConfig{{Issuer: p.Issuer}}, KeyRefetchInterval: time.Second})
	tok1 := mint(t, rsaKey1(), "RS256", claimsAt(p.Issuer, c.Now()), nil)
	tok2 := mint(t, ecKey2(), "ES256", claimsAt(p.Issuer, c.Now()), nil)
	if err := authenticate(a, tok1); err != nil {
		t.Fatal(err)
	}

	// The issuer adds a key: a token naming it makes a fetch, and is accepted.
	p.publish(rsaKey1(), ecKey2())
	c.Add(time.Second)
	if err := authenticate(a, tok2); err != nil {
		t.Fatalf("token of the new key: %v", err)
	}
	if n := p.fetches.Load(); n != 2 {
		t.Errorf("%d fetches, want 2", n)
	}

	// The issuer withdraws the old key: once a fetch has happened (here, made by a token
	// with an unknown key ID), the old key's tokens are refused.
	p.publish(ecKey2())
	c.Add(time.Second)
	wantErr(t, authenticate(a, mint(t, rsaKey2(), "RS256", claimsAt(p.Issuer, c.Now()), nil)), errkind.Unauthenticated, "does not publish")
	wantErr(t, authenticate(a, tok1), errkind.Unauthenticated, "does not publish")
	if err := authenticate(a, tok2); err != nil {
		t.Errorf("token of the remaining key: %v", err)
	}
	if n := p.discoveries.Load(); n != 1 {
		t.Errorf("%d discoveries, want 1: the key set URL is kept", n)
	}
}

func TestKeyRefetchRateLimited(t *testing.T) {
	p := newIDP(t, rsaKey1())
	a, c := newAuth(t, Config{Issuers: []IssuerConfig{{Issuer: p.Issuer}}, KeyRefetchInterval: time.Minute})
	if err := authenticate(a, mint(t, rsaKey1(), "RS256", claimsAt(p.Issuer, c.Now()), nil)); err != nil {
		t.Fatal(err)
	}
	p.publish(rsaKey1(), ecKey2())
	tok2 := mint(t, ecKey2(), "ES256", claimsAt(p.Issuer, c.Now()), nil)
	// Within the interval, unknown key IDs make no fetch, however many arrive.
	for i := range 20 {
		unknown := mint(t, testKey{kid: "made-up-" + string(rune('a'+i)), priv: ecKey2().priv}, "ES256", claimsAt(p.Issuer, c.Now()), nil)
		wantErr(t, authenticate(a, unknown), errkind.Unauthenticated, "does not publish")
	}
	wantErr(t, authenticate(a, tok2), errkind.Unauthenticated, "does not publish")
	if n := p.fetches.Load(); n != 1 {
		t.Fatalf("%d fetches within the refetch interval, want 1", n)
	}
	c.Add(time.Minute)
	if err := authenticate(a, tok2); err != nil {
		t.Fatalf("after the interval: %v", err)
	}
	if n := p.fetches.Load(); n != 2 {
		t.Errorf("%d fetches, want 2", n)
	}
}

func TestKeyMaxAge(t *testing.T) {
	p := newIDP(t, rsaKey1())
	a, c := newAuth(t, Config{Issuers: []IssuerConfig{{Issuer: p.Issuer}}, KeyMaxAge: 10 * time.Minute})
	if err := authenticate(a, mint(t, rsaKey1(), "RS256", claimsAt(p.Issuer, c.Now()), nil)); err != nil {
		t.Fatal(err)
	}
	p.publish(rsaKey2())
	c.Add(9 * time.Minute)
	if err := authenticate(a, mint(t, rsaKey1(), "RS256", claimsAt(p.Issuer, c.Now()), nil)); err != nil {
		t.Fatalf("cached key before its max age: %v", err)
	}
	c.Add(time.Minute)
	wantErr(t, authenticate(a, mint(t, rsaKey1(), "RS256", claimsAt(p.Issuer, c.Now()), nil)), errkind.Unauthenticated, "does not publish")

	// When a refresh fails, the keys last fetched stay in use.
	p.publish(rsaKey2())
	p.mu.Lock()
	p.status = http.StatusInternalServerError
	p.mu.Unlock()
	c.Add(time.Hour)
	if err := authenticate(a, mint(t, rsaKey2(), "RS256", claimsAt(p.Issuer, c.Now()), nil)); err != nil {
		t.Fatalf("stale key while the issuer fails: %v", err)
	}
	if n := p.fetches.Load(); n != 3 {
		t.Errorf("%d fetches, want 3", n)
	}
}

func TestKeySetFailures(t *testing.T) {
	big := `{"keys":[` + strings.Repeat(`{"kty":"oct","k":"AAAA"},`, maxDocumentBytes/24) + `{}]}`
	for _, tc := range []struct {
		name   string
		status int
		body   string
		want   string
	}{
		{"server error", http.StatusInternalServerError, "oops", "status 500"},
		{"not found", http.StatusNotFound, "", "status 404"},
		{"garbage", 0, "<html>hello</html>", "decoding key set"},
		{"no keys array", 0, `{"kes":[]}`, `no "keys" array`},
		{"keys not an array", 0, `{"keys":{}}`, "decoding key set"},
		{"oversized", 0, big, "larger than the limit of 1048576 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newIDP(t)
			p.mu.Lock()
			p.status, p.body = tc.status, []byte(tc.body)
			p.mu.Unlock()
			a, c := newAuth(t, Config{Issuers: []IssuerConfig{{Issuer: p.Issuer}}})
			err := authenticate(a, mint(t, rsaKey1(), "RS256", claimsAt(p.Issuer, c.Now()), nil))
			wantErr(t, err, errkind.Unavailable, "could not be fetched")
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
			// The failure is remembered: no new fetch within the refetch interval.
			err = authenticate(a, mint(t, rsaKey1(), "RS256", claimsAt(p.Issuer, c.Now()), nil))
			wantErr(t, err, errkind.Unavailable, "could not be fetched")
			if n := p.fetches.Load(); n != 1 {
				t.Errorf("%d fetches, want 1", n)
			}
		})
	}
}

func TestKeySetBadKeys(t *testing.T) {
	// Unusable keys are skipped; the usable ones still work.
	p := newIDP(t)
	weak := rsaKey1().jwk()
	weak["n"] = b64.EncodeToString(make([]byte, 128))
	weak["kid"] = "weak"
	offCurve := ecKey1().jwk()
	offCurve["y"] = offCurve["x"]
	enc := ecKey2().jwk()
	enc["use"] = "enc"
	p.mu.Lock()
	p.body = mustJSON(t, map[string]any{"keys": []any{
		weak, offCurve, enc,
		map[string]any{"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
		map[string]any{"kty": "EC", "crv": "P-192", "x": "AA", "y": "AA"},
		map[string]any{"kty": "RSA", "n": "!!", "e": "AQAB"},
		map[string]any{"kty": "RSA", "kid": "even-e", "n": rsaKey1().jwk()["n"], "e": "AAI"},
		"not an object",
		rsaKey2().jwk(),
	}})
	p.mu.Unlock()
	a, c := newAuth(t, Config{Issuers: []IssuerConfig{{Issuer: p.Issuer}}})
	if err := authenticate(a, mint(t, rsaKey2(), "RS256", claimsAt(p.Issuer, c.Now()), nil)); err != nil {
		t.Fatalf("usable key: %v", err)
	}
	wantErr(t, authenticate(a, mint(t, ecKey1(), "ES256", claimsAt(p.Issuer, c.Now()), nil)), errkind.Unauthenticated, "does not publish")
	wantErr(t, authenticate(a, mint(t, ecKey2(), "ES256", claimsAt(p.Issuer, c.Now()), nil)), errkind.Unauthenticated, "does not publish")
	wantErr(t, authenticate(a, mintHMAC(t, "hmac", []byte("secret"), claimsAt(p.Issuer, c.Now()))), errkind.Unauthenticated, "is not accepted")

	keys, skipped, err := parseKeySet(p.body)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0].kid != rsaKey2().kid {
		t.Errorf("usable keys: %v", keys)
	}
	if len(skipped) != 7 { // the encryption key is left out silently
		t.Errorf("skipped %d keys, want 7: %q", len(skipped), skipped)
	}
}

func TestKeySetKeyCap(t *testing.T) {
	keys := make([]any, maxKeys+5)
	for i := range keys {
		keys[i] = ecKey1().jwk()
	}
	got, skipped, err := parseKeySet(mustJSON(t, map[string]any{"keys": keys}))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != maxKeys || len(skipped) != 1 {
		t.Errorf("kept %d keys, skipped %q; want %d kept", len(got), skipped, maxKeys)
	}
}

func TestIssuerDown(t *testing.T) {
	p := newIDP(t, rsaKey1())
	p.srv.Close()
	a, c := newAuth(t, Config{Issuers: []IssuerConfig{{Issuer: p.Issuer}}})
	err := authenticate(a, mint(t, rsaKey1(), "RS256", claimsAt(p.Issuer, c.Now()), nil))
	wantErr(t, err, errkind.Unavailable, "could not be fetched")
	if !strings.Contains(err.Error(), "discovering issuer "+p.Issuer) {
		t.Errorf("error %q does not name the discovery of the issuer", err)
	}
	if err := a.Prefetch(context.Background()); err == nil {
		t.Error("Prefetch of a closed server: no error")
	}
}

func TestIssuerSlow(t *testing.T) {
	p := newIDP(t, rsaKey1())
	p.mu.Lock()
	p.block = make(chan struct{})
	p.mu.Unlock()
	defer close(p.block)
	a, c := newAuth(t, Config{Issuers: []IssuerConfig{{Issuer: p.Issuer}}, KeyFetchTimeout: 200 * time.Millisecond})
	start := time.Now()
	err := authenticate(a, mint(t, rsaKey1(), "RS256", claimsAt(p.Issuer, c.Now()), nil))
	wantErr(t, err, errkind.Unavailable, "could not be fetched")
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("the fetch took %v despite its timeout", d)
	}
}

func TestDiscovery(t *testing.T) {
	t.Run("issuer mismatch", func(t *testing.T) {
		p := newIDP(t, rsaKey1())
		p.docIssuer = "https://evil.example/tenant"
		a, c := newAuth(t, Config{Issuers: []IssuerConfig{{Issuer: p.Issuer}}})
		err := authenticate(a, mint(t, rsaKey1(), "RS256", claimsAt(p.Issuer, c.Now()), nil))
		wantErr(t, err, errkind.Unavailable, "could not be fetched")
		if !strings.Contains(err.Error(), `names issuer "https://evil.example/tenant"`) {
			t.Errorf("error %q does not name the wrong issuer", err)
		}
		if n := p.fetches.Load(); n != 0 {
			t.Errorf("fetched the key set of a mismatched discovery document")
		}
	})
	t.Run("configured jwksURI skips discovery", func(t *testing.T) {
		p := newIDP(t, rsaKey1())
		a, c := newAuth(t, Config{Issuers: []IssuerConfig{{Issuer: p.Issuer, JWKSURI: p.srv.URL + "/keys"}}})
		if err := authenticate(a, mint(t, rsaKey1(), "RS256", claimsAt(p.Issuer, c.Now()), nil)); err != nil {
			t.Fatal(err)
		}
		if n := p.discoveries.Load(); n != 0 {
			t.Errorf("%d discoveries with a configured jwksURI", n)
		}
	})
	t.Run("plain-http jwks_uri", func(t *testing.T) {
		p := newIDP(t, rsaKey1())
		p.docJWKS = "http://idp.example/keys"
		a, c := newAuth(t, Config{Issuers: []IssuerConfig{{Issuer: p.Issuer}}})
		err := authenticate(a, mint(t, rsaKey1(), "RS256", claimsAt(p.Issuer, c.Now()), nil))
		wantErr(t, err, errkind.Unavailable, "could not be fetched")
		if !strings.Contains(err.Error(), "must use https") {
			t.Errorf("error %q does not say https is needed", err)
		}
	})
}

func TestConcurrentFetch(t *testing.T) {
	p := newIDP(t, rsaKey1())
	p.mu.Lock()
	p.block = make(chan struct{})
	p.mu.Unlock()
	a, c := newAuth(t, Config{Issuers: []IssuerConfig{{Issuer: p.Issuer}}})
	tok := mint(t, rsaKey1(), "RS256", claimsAt(p.Issuer, c.Now()), nil)

	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for range 20 {
		wg.Go(func() { errs <- authenticate(a, tok) })
	}
	// Wait until the fetch is in flight.
	for p.fetches.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	// A waiter whose request is cancelled stops waiting; the fetch goes on for the others.
	ctx, cancel := context.WithCancel(context.Background())
	cancelled := make(chan error)
	go func() {
		_, err := a.Authenticate(ctx, bearer(tok))
		cancelled <- err
	}()
	cancel()
	err := <-cancelled
	if !errors.Is(err, context.Canceled) || errkind.Of(err) != errkind.Timeout {
		t.Errorf("cancelled request: %v (kind %v), want context.Canceled as Timeout", err, errkind.Of(err))
	}
	close(p.block)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("concurrent request: %v", err)
		}
	}
	if n := p.fetches.Load(); n != 1 {
		t.Errorf("%d fetches for concurrent requests, want 1", n)
	}
}

func TestPrefetch(t *testing.T) {
	p := newIDP(t, rsaKey1())
	a, c := newAuth(t, Config{Issuers: []IssuerConfig{{Issuer: p.Issuer}}})
	if err := a.Prefetch(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := authenticate(a, mint(t, rsaKey1(), "RS256", claimsAt(p.Issuer, c.Now()), nil)); err != nil {
		t.Fatal(err)
	}
	if n := p.fetches.Load(); n != 1 {
		t.Errorf("%d fetches, want 1", n)
	}
}
