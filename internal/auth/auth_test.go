package auth

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/errkind"
)

func TestValidTokens(t *testing.T) {
	keys := []testKey{rsaKey1(), ecKey1(), ecKey3(), ecKey5()}
	p := newIDP(t, keys...)
	a, c := newAuth(t, Config{Issuers: []IssuerConfig{{Issuer: p.Issuer}}})
	for _, tc := range []struct {
		alg string
		key testKey
	}{
		{"RS256", rsaKey1()}, {"RS384", rsaKey1()}, {"RS512", rsaKey1()},
		{"PS256", rsaKey1()}, {"PS384", rsaKey1()}, {"PS512", rsaKey1()},
		{"ES256", ecKey1()}, {"ES384", ecKey3()}, {"ES512", ecKey5()},
	} {
		t.Run(tc.alg, func(t *testing.T) {
			tok := mint(t, tc.key, tc.alg, claimsAt(p.Issuer, c.Now()), nil)
			pr, err := a.Check(bearer(tok), "default", SessionExecutor)
			if err != nil {
				t.Fatalf("Check: %v", err)
			}
			if pr.Method != MethodToken || pr.Name != "user-1" || pr.Issuer != p.Issuer {
				t.Errorf("principal = %+v", pr)
			}
		})
	}
	if n := p.fetches.Load(); n != 1 {
		t.Errorf("key set fetched %d times, want once", n)
	}
	if n := p.discoveries.Load(); n != 1 {
		t.Errorf("discovery fetched %d times, want once", n)
	}
}

func TestTokenTimeClaims(t *testing.T) {
	p := newIDP(t, rsaKey1())
	a, c := newAuth(t, Config{Issuers: []IssuerConfig{{Issuer: p.Issuer}}, ClockSkew: time.Minute})
	now := c.Now()
	for _, tc := range []struct {
		name string
		set  map[string]any
		want string // "" for accepted
	}{
		{"expired", map[string]any{"exp": now.Add(-2 * time.Minute).Unix()}, "it has expired"},
		{"expired within skew", map[string]any{"exp": now.Add(-30 * time.Second).Unix()}, ""},
		{"no expiry", map[string]any{"exp": nil}, "no expiry"},
		{"expiry not a number", map[string]any{"exp": "tomorrow"}, "must be a number"},
		{"expiry beyond year 9999", map[string]any{"exp": 1e300}, "out of range"},
		{"fractional expiry", map[string]any{"exp": float64(now.Add(time.Hour).Unix()) + 0.5}, ""},
		{"not yet valid", map[string]any{"nbf": now.Add(2 * time.Minute).Unix()}, "not valid yet"},
		{"not yet valid within skew", map[string]any{"nbf": now.Add(30 * time.Second).Unix()}, ""},
		{"issued in the future", map[string]any{"iat": now.Add(2 * time.Minute).Unix()}, "issued in the future"},
		{"no nbf, no iat", map[string]any{"nbf": nil, "iat": nil}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl := claimsAt(p.Issuer, now)
			for k, v := range tc.set {
				if v == nil {
					delete(cl, k)
				} else {
					cl[k] = v
				}
			}
			_, err := a.Authenticate(context.Background(), bearer(mint(t, rsaKey1(), "RS256", cl, nil)))
			if tc.want == "" {
				if err != nil {
					t.Fatalf("got %v, want accepted", err)
				}
				return
			}
			wantErr(t, err, errkind.Unauthenticated, tc.want)
		})
	}
}

func TestTokenAudiences(t *testing.T) {
	p := newIDP(t, rsaKey1())
	p2 := newIDP(t, rsaKey1())
	a, c := newAuth(t, Config{Issuers: []IssuerConfig{
		{Issuer: p.Issuer},
		{Issuer: p2.Issuer, Audiences: []string{"api://sessiond/"}},
	}})
	for _, tc := range []struct {
		issuer string
		aud    any
		ok     bool
	}{
		{p.Issuer, "https://dynamicsessions.io", true},
		{p.Issuer, "https://dynamicsessions.io/", true},
		{p.Issuer, "https://acasessions.io", true},
		{p.Issuer, "https://acasessions.io/", true},
		{p.Issuer, []string{"https://management.azure.com", "https://acasessions.io"}, true},
		{p.Issuer, "https://management.azure.com", false},
		{p.Issuer, "https://dynamicsessions.io.evil.example", false},
		{p.Issuer, "https://dynamicsessions.io//", false},
		{p.Issuer, []string{}, false},
		{p.Issuer, nil, false},
		// An issuer with its own audiences accepts only those.
		{p2.Issuer, "api://sessiond", true},
		{p2.Issuer, "https://dynamicsessions.io", false},
	} {
		cl := claimsAt(tc.issuer, c.Now())
		if tc.aud == nil {
			delete(cl, "aud")
		} else {
			cl["aud"] = tc.aud
		}
		_, err := a.Authenticate(context.Background(), bearer(mint(t, rsaKey1(), "RS256", cl, nil)))
		if tc.ok && err != nil {
			t.Errorf("issuer %s, aud %v: %v", tc.issuer, tc.aud, err)
		}
		if !tc.ok {
			if err == nil {
				t.Errorf("issuer %s, aud %v: accepted", tc.issuer, tc.aud)
			} else if errkind.Of(err) != errkind.Unauthenticated || !strings.Contains(err.Error(), "audience") {
				t.Errorf("issuer %s, aud %v: %v, want an audience error", tc.issuer, tc.aud, err)
			}
		}
	}
	// A configured global list replaces the defaults.
	a2, _ := newAuth(t, Config{Issuers: []IssuerConfig{{Issuer: p.Issuer}}, Audiences: []string{"sessiond"}})
	_, err := a2.Authenticate(context.Background(), bearer(mint(t, rsaKey1(), "RS256", claimsAt(p.Issuer, time.Now()), nil)))
	wantErr(t, err, errkind.Unauthenticated, "audience")
}

func TestTokenWrongIssuer(t *testing.T) {
	p := newIDP(t, rsaKey1())
	a, c := newAuth(t, Config{Issuers: []IssuerConfig{{Issuer: p.Issuer}}})
	for _, iss := range []string{p.Issuer + "/", p.srv.URL, "https://login.microsoftonline.com/other/v2.0", ""} {
		_, err := a.Authenticate(context.Background(), bearer(mint(t, rsaKey1(), "RS256", claimsAt(iss, c.Now()), nil)))
		wantErr(t, err, errkind.Unauthenticated, "is not trusted")
	}
	if n := p.fetches.Load() + p.discoveries.Load(); n != 0 {
		t.Errorf("an untrusted issuer made %d fetches", n)
	}
}

func TestTokenUnknownKey(t *testing.T) {
	p := newIDP(t, rsaKey1())
	a, c := newAuth(t, Config{Issuers: []IssuerConfig{{Issuer: p.Issuer}}})
	// Signed by a key the issuer does not publish, under a key ID it does not know...
	_, err := a.Authenticate(context.Background(), bearer(mint(t, rsaKey2(), "RS256", claimsAt(p.Issuer, c.Now()), nil)))
	wantErr(t, err, errkind.Unauthenticated, "does not publish")
	// ... or under the key ID of one it does.
	forged := mint(t, testKey{kid: rsaKey1().kid, priv: rsaKey2().priv}, "RS256", claimsAt(p.Issuer, c.Now()), nil)
	_, err = a.Authenticate(context.Background(), bearer(forged))
	wantErr(t, err, errkind.Unauthenticated, "signature is not valid")
	// Without a key ID, every published key of the right type is tried.
	_, err = a.Authenticate(context.Background(), bearer(mint(t, rsaKey1(), "RS256", claimsAt(p.Issuer, c.Now()), map[string]any{"kid": nil})))
	if err != nil {
		t.Errorf("token without kid: %v", err)
	}
}

func TestTokenTampered(t *testing.T) {
	p := newIDP(t, rsaKey1(), ecKey1())
	a, c := newAuth(t, Config{Issuers: []IssuerConfig{{Issuer: p.Issuer}}})
	for _, k := range []struct {
		key testKey
		alg string
	}{{rsaKey1(), "RS256"}, {ecKey1(), "ES256"}} {
		tok := mint(t, k.key, k.alg, claimsAt(p.Issuer, c.Now()), nil)
		if _, err := a.Authenticate(context.Background(), bearer(tok)); err != nil {
			t.Fatalf("untampered %s token: %v", k.alg, err)
		}
		parts := strings.Split(tok, ".")
		sig, _ := b64.DecodeString(parts[2])
		sig[len(sig)/2] ^= 1
		flipped := parts[0] + "." + parts[1] + "." + b64.EncodeToString(sig)
		_, err := a.Authenticate(context.Background(), bearer(flipped))
		wantErr(t, err, errkind.Unauthenticated, "signature is not valid")

		// Claims swapped for more generous ones under the original signature.
		cl := claimsAt(p.Issuer, c.Now())
		cl["roles"] = []string{"Contributor"}
		other := strings.Split(mint(t, k.key, k.alg, cl, nil), ".")
		swapped := parts[0] + "." + other[1] + "." + parts[2]
		_, err = a.Authenticate(context.Background(), bearer(swapped))
		wantErr(t, err, errkind.Unauthenticated, "signature is not valid")
	}
}

func TestTokenAlgorithmAttacks(t *testing.T) {
	p := newIDP(t, rsaKey1(), ecKey1())
	a, c := newAuth(t, Config{Issuers: []IssuerConfig{{Issuer: p.Issuer}}})
	cl := claimsAt(p.Issuer, c.Now())
	input := func(alg, kid string) string { return signingInput(t, alg, kid, cl, nil) }

	pub := rsaKey1().priv.Public().(*rsa.PublicKey)
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	pemKey := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	ecSig := strings.Split(mint(t, ecKey1(), "ES256", cl, nil), ".")[2]

	for _, tc := range []struct {
		name, tok, want string
	}{
		{"alg none", input("none", rsaKey1().kid) + ".", "is not accepted"},
		{"alg None", input("None", rsaKey1().kid) + ".", "is not accepted"},
		{"alg none with a signature", input("none", "") + "." + ecSig, "is not accepted"},
		{"no alg", signingInput(t, "", "", cl, map[string]any{"alg": nil}) + ".", "is not accepted"},
		// Key confusion: an HMAC keyed with the issuer's public key, in each form an
		// attacker could get it in.
		{"HS256 with the PEM public key", mintHMAC(t, rsaKey1().kid, pemKey, cl), "is not accepted"},
		{"HS256 with the DER public key", mintHMAC(t, rsaKey1().kid, der, cl), "is not accepted"},
		{"HS256 with the modulus", mintHMAC(t, rsaKey1().kid, pub.N.Bytes(), cl), "is not accepted"},
		// The right key ID with an algorithm for another key type or curve.
		{"RS256 under an EC key", mint(t, testKey{kid: ecKey1().kid, priv: rsaKey1().priv}, "RS256", cl, nil), "signature is not valid"},
		{"ES256 under an RSA key", mint(t, testKey{kid: rsaKey1().kid, priv: ecKey1().priv}, "ES256", cl, nil), "signature is not valid"},
		{"ES384 under a P-256 key", input("ES384", ecKey1().kid) + "." + ecSig, "signature is not valid"},
		{"PSS signature under RS256", input("RS256", rsaKey1().kid) + "." + pssSign(t, input("RS256", rsaKey1().kid)), "signature is not valid"},
		{"crit header", mint(t, rsaKey1(), "RS256", cl, map[string]any{"crit": []string{"exp"}, "exp": 1}), "crit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := a.Authenticate(context.Background(), bearer(tc.tok))
			wantErr(t, err, errkind.Unauthenticated, tc.want)
		})
	}
}

func TestTokenJWKAlgRestriction(t *testing.T) {
	// A key the issuer marks "alg": "PS256" verifies nothing else, even its own RS256.
	srv := newIDP(t)
	srv.mu.Lock()
	j := rsaKey1().jwk()
	j["alg"] = "PS256"
	srv.body = mustJSON(t, map[string]any{"keys": []any{j}})
	srv.mu.Unlock()
	a, c := newAuth(t, Config{Issuers: []IssuerConfig{{Issuer: srv.Issuer}}})
	_, err := a.Authenticate(context.Background(), bearer(mint(t, rsaKey1(), "RS256", claimsAt(srv.Issuer, c.Now()), nil)))
	wantErr(t, err, errkind.Unauthenticated, "signature is not valid")
	if _, err := a.Authenticate(context.Background(), bearer(mint(t, rsaKey1(), "PS256", claimsAt(srv.Issuer, c.Now()), nil))); err != nil {
		t.Errorf("PS256: %v", err)
	}
}

func TestTokenSize(t *testing.T) {
	p := newIDP(t, rsaKey1())
	a, c := newAuth(t, Config{Issuers: []IssuerConfig{{Issuer: p.Issuer}}})
	withPad := func(n int) string {
		cl := claimsAt(p.Issuer, c.Now())
		cl["pad"] = strings.Repeat("x", n)
		return mint(t, rsaKey1(), "RS256", cl, nil)
	}
	// Find the padding that makes a token of exactly the limit: base64 grows 4/3.
	base := len(withPad(0))
	under := withPad((MaxTokenBytes - base) * 3 / 4)
	for len(under) > MaxTokenBytes {
		under = withPad((MaxTokenBytes-base)*3/4 - (len(under) - MaxTokenBytes))
	}
	if _, err := a.Authenticate(context.Background(), bearer(under)); err != nil {
		t.Errorf("token of %d bytes: %v", len(under), err)
	}
	over := withPad(MaxTokenBytes)
	_, err := a.Authenticate(context.Background(), bearer(over))
	wantErr(t, err, errkind.Unauthenticated, "more than the limit of 16384")
}

func TestTokenMalformed(t *testing.T) {
	p := newIDP(t, rsaKey1())
	a, c := newAuth(t, Config{Issuers: []IssuerConfig{{Issuer: p.Issuer}}})
	good := mint(t, rsaKey1(), "RS256", claimsAt(p.Issuer, c.Now()), nil)
	parts := strings.Split(good, ".")
	for name, tok := range map[string]string{
		"padded base64":    parts[0] + "=." + parts[1] + "." + parts[2],
		"standard base64":  parts[0] + "." + parts[1] + "." + strings.NewReplacer("-", "+", "_", "/").Replace(parts[2]+"-_"),
		"header not JSON":  b64.EncodeToString([]byte("{")) + "." + parts[1] + "." + parts[2],
		"claims not JSON":  parts[0] + "." + b64.EncodeToString([]byte("[1,2]")) + "." + parts[2],
		"trailing JSON":    parts[0] + "." + b64.EncodeToString([]byte(`{"iss":"x"} {}`)) + "." + parts[2],
		"aud a number":     signingInput(t, "RS256", "", map[string]any{"aud": 5}, nil) + "." + parts[2],
		"iss not a string": signingInput(t, "RS256", "", map[string]any{"iss": []string{p.Issuer}}, nil) + "." + parts[2],
		"two parts":        parts[0] + "." + parts[1],
		"empty signature":  parts[0] + "." + parts[1] + ".",
		"five parts (JWE)": good + ".a.b",
	} {
		_, err := a.Authenticate(context.Background(), bearer(tok))
		if err == nil || errkind.Of(err) != errkind.Unauthenticated {
			t.Errorf("%s: got %v, want Unauthenticated", name, err)
		}
	}
}

func TestRoles(t *testing.T) {
	p := newIDP(t, rsaKey1())
	other := newIDP(t, rsaKey1())
	a, c := newAuth(t, Config{
		Issuers:    []IssuerConfig{{Issuer: p.Issuer}, {Issuer: other.Issuer}},
		RoleClaims: []string{"roles", "groups", "realm_access.roles"},
		Mappings: []RoleMapping{
			{Value: "executors-a", Role: "SessionExecutor", Pools: []string{"a"}},
			{Value: "admins", Role: "contributor"},
			{Claim: "oid", Value: "0000-robot", Role: "SessionExecutor", Pools: []string{"a", "b"}},
			{Value: "p-only", Issuer: p.Issuer, Role: "Reader"},
		},
	})
	type check struct {
		pool string
		role Role
		ok   bool
	}
	for _, tc := range []struct {
		name   string
		issuer string
		set    map[string]any
		checks []check
	}{
		{"no role", p.Issuer, map[string]any{"roles": nil}, []check{
			{"a", SessionExecutor, false}, {"a", Reader, false}, {"", Reader, false}}},
		{"built-in role name", p.Issuer, map[string]any{"roles": []string{"SessionExecutor"}}, []check{
			{"a", SessionExecutor, true}, {"", SessionExecutor, true}, {"a", Reader, false}, {"a", Contributor, false}}},
		{"Azure role name", p.Issuer, map[string]any{"roles": "Azure ContainerApps Session Executor"}, []check{
			{"any", SessionExecutor, true}}},
		{"Azure role id", p.Issuer, map[string]any{"roles": []string{"other", "0fb8eba5-a2bb-4abe-b1c1-49dfad359bb0"}}, []check{
			{"any", SessionExecutor, true}, {"any", Contributor, false}}},
		{"built-in names are not searched in groups", p.Issuer, map[string]any{"roles": nil, "groups": []string{"Contributor", "SessionExecutor"}}, []check{
			{"a", SessionExecutor, false}, {"a", Contributor, false}}},
		{"built-in match is exact", p.Issuer, map[string]any{"roles": []string{"sessionexecutor", "SessionExecutor "}}, []check{
			{"a", SessionExecutor, false}}},
		{"group for one pool", p.Issuer, map[string]any{"roles": nil, "groups": []string{"executors-a"}}, []check{
			{"a", SessionExecutor, true}, {"b", SessionExecutor, false}, {"", SessionExecutor, false}}},
		{"contributor implies reader only", p.Issuer, map[string]any{"roles": "admins"}, []check{
			{"x", Contributor, true}, {"x", Reader, true}, {"", Reader, true}, {"x", SessionExecutor, false}}},
		{"nested claim", p.Issuer, map[string]any{"roles": nil, "realm_access": map[string]any{"roles": []string{"admins"}}}, []check{
			{"x", Contributor, true}}},
		{"mapping with its own claim", p.Issuer, map[string]any{"roles": nil, "oid": "0000-robot"}, []check{
			{"a", SessionExecutor, true}, {"b", SessionExecutor, true}, {"c", SessionExecutor, false}}},
		{"own-claim value in a role claim does not count", p.Issuer, map[string]any{"roles": []string{"0000-robot"}}, []check{
			{"a", SessionExecutor, false}}},
		{"issuer-bound mapping, right issuer", p.Issuer, map[string]any{"roles": "p-only"}, []check{{"x", Reader, true}}},
		{"issuer-bound mapping, other issuer", other.Issuer, map[string]any{"roles": "p-only"}, []check{{"x", Reader, false}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl := claimsAt(tc.issuer, c.Now())
			for k, v := range tc.set {
				if v == nil {
					delete(cl, k)
				} else {
					cl[k] = v
				}
			}
			tok := mint(t, rsaKey1(), "RS256", cl, nil)
			for _, ch := range tc.checks {
				pr, err := a.Check(bearer(tok), ch.pool, ch.role)
				if ch.ok && err != nil {
					t.Errorf("Check(%q, %s): %v", ch.pool, ch.role, err)
				}
				if !ch.ok {
					wantErr(t, err, errkind.Forbidden, "does not have the "+string(ch.role)+" role")
					if pr == nil || pr.Name != "user-1" {
						t.Errorf("forbidden Check returned principal %v, want the caller", pr)
					}
				}
			}
		})
	}

	// The switch turns the built-in values off.
	off := false
	a2, _ := newAuth(t, Config{Issuers: []IssuerConfig{{Issuer: p.Issuer}}, BuiltinRoleValues: &off})
	_, err := a2.Check(bearer(mint(t, rsaKey1(), "RS256", claimsAt(p.Issuer, time.Now()), nil)), "a", SessionExecutor)
	wantErr(t, err, errkind.Forbidden, "SessionExecutor")
}

func TestCredentialHeaders(t *testing.T) {
	key, hash, err := NewAPIKey()
	if err != nil {
		t.Fatal(err)
	}
	a, _ := newAuth(t, Config{APIKeys: []APIKeyConfig{{Name: "k", Hash: hash, Roles: []string{"SessionExecutor"}}}})
	for _, tc := range []struct {
		name string
		req  *http.Request
		want string // "" for accepted
	}{
		{"none", request(), "no credentials"},
		{"bearer key", request("Authorization", "Bearer "+key), ""},
		{"lower-case scheme", request("Authorization", "bearer "+key), ""},
		{"api-key", request("api-key", key), ""},
		{"x-ms-apikey", request("x-ms-apikey", key), ""},
		{"basic", request("Authorization", "Basic dXNlcjpwYXNz"), "Bearer scheme"},
		{"bare key", request("Authorization", key), "Bearer scheme"},
		{"empty bearer", request("Authorization", "Bearer "), "empty bearer"},
		{"two credentials", request("Authorization", "Bearer "+key, "api-key", key), "more than one"},
		{"two authorization headers", request("Authorization", "Bearer "+key, "Authorization", "Bearer "+key), "more than one"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := a.Authenticate(context.Background(), tc.req)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			wantErr(t, err, errkind.Unauthenticated, tc.want)
		})
	}
}

func TestStripCredentials(t *testing.T) {
	h := http.Header{}
	for _, k := range []string{"Authorization", "api-key", "x-ms-apikey", "Proxy-Authorization", "Content-Type", "Identifier"} {
		h.Set(k, "v")
	}
	StripCredentials(h)
	if len(h) != 2 || h.Get("Content-Type") != "v" || h.Get("Identifier") != "v" {
		t.Errorf("after StripCredentials: %v", h)
	}
}

func TestPrincipalContext(t *testing.T) {
	if p := FromContext(context.Background()); p != nil {
		t.Errorf("FromContext(empty) = %v", p)
	}
	p := &Principal{Method: MethodAPIKey, Name: "k"}
	if got := FromContext(WithPrincipal(context.Background(), p)); got != p {
		t.Errorf("FromContext = %v, want %v", got, p)
	}
	var none *Principal
	if none.Allowed("a", Reader) {
		t.Error("a nil principal is allowed")
	}
}

// pssSign signs input with rsaKey1 using RSASSA-PSS and SHA-256.
func pssSign(t *testing.T, input string) string {
	digest := sha256.Sum256([]byte(input))
	sig, err := rsa.SignPSS(rand.Reader, rsaKey1().priv.(*rsa.PrivateKey), crypto.SHA256, digest[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
	if err != nil {
		t.Fatal(err)
	}
	return b64.EncodeToString(sig)
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
