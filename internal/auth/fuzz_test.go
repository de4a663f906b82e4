package auth

import (
	"strings"
	"testing"
	"time"
)

// FuzzParseToken feeds arbitrary bearer strings through parsing, signature checks against
// real RSA and EC keys, claim validation and role mapping: none may panic, and whatever
// parses must respect the size limit and the algorithm allow-list.
func FuzzParseToken(f *testing.F) {
	now := time.Now()
	cl := claimsAt("https://idp.example", now)
	cl["groups"] = []any{"a", 1, nil, map[string]any{"x": "y"}}
	cl["realm_access"] = map[string]any{"roles": "admins"}
	f.Add(mint(f, rsaKey1(), "RS256", cl, nil))
	f.Add(mint(f, ecKey1(), "ES256", cl, nil))
	f.Add(mint(f, rsaKey1(), "PS512", cl, map[string]any{"crit": nil}))
	f.Add(mintHMAC(f, "k", []byte("secret"), cl))
	f.Add(signingInput(f, "none", "", cl, nil) + ".")
	f.Add("..")
	f.Add("eyJhbGciOiJSUzI1NiJ9.e30.")
	f.Add(strings.Repeat("A", 100) + "." + strings.Repeat("B", 100) + "." + strings.Repeat("C", 100))

	keys := []publicKey{{kid: "rsa-1", key: rsaKey1().priv.Public()}, {kid: "ec-1", key: ecKey1().priv.Public()}}
	roleClaims := []string{"roles", "groups", "realm_access.roles", "realm_access.roles.x"}
	a := &Authenticator{builtin: true,
		mappings: []mapping{{claims: []string{"groups", "realm_access.roles"}, value: "admins", grant: grant{role: Contributor}}}}

	f.Fuzz(func(t *testing.T, s string) {
		tok, err := parseToken(s)
		if err != nil {
			return
		}
		if len(s) > MaxTokenBytes {
			t.Fatalf("parsed a token of %d bytes", len(s))
		}
		if _, ok := algorithms[tok.header.Alg]; !ok {
			t.Fatalf("parsed a token with algorithm %q", tok.header.Alg)
		}
		_ = verifyWithAny(tok, keys)
		_ = tok.claims.validate(now, time.Minute, []string{"https://dynamicsessions.io"})
		a.tokenGrants(tok)
		for _, name := range roleClaims {
			claimValues(tok.raw, name)
		}
	})
}

// FuzzParseKeySet checks that no key set, however malformed, panics the parser.
func FuzzParseKeySet(f *testing.F) {
	f.Add(`{"keys":[` + string(mustJSON(f, rsaKey1().jwk())) + `,` + string(mustJSON(f, ecKey1().jwk())) + `]}`)
	f.Add(`{"keys":[{"kty":"EC","crv":"P-521","x":"","y":""},{"kty":"RSA","n":"AQ","e":"AQAB"}]}`)
	f.Add(`{"keys":null}`)
	f.Fuzz(func(t *testing.T, s string) {
		keys, _, err := parseKeySet([]byte(s))
		if err == nil && len(keys) > maxKeys {
			t.Fatalf("kept %d keys", len(keys))
		}
	})
}
