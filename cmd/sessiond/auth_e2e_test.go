package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/api"
	"github.com/sessiond/sessiond/internal/auth"
	"github.com/sessiond/sessiond/internal/config"
)

// TestAuthEndToEnd builds a server as serve does with an auth section (parsed by
// config.ParseConfig, auth.New, api.Config.Auth) over real pools on a real runtime, and
// sends it real tokens: RS256 and ES256, signed by keys an in-test identity provider
// publishes through OpenID Connect discovery and a JWKS, and API keys. Every refusal is
// checked for its status, the Azure envelope and, on 401, WWW-Authenticate. Then it
// checks that no credential reaches a sandbox.
func TestAuthEndToEnd(t *testing.T) {
	env := newRealEnv(t)
	rtName := ""
	for _, name := range []string{"runc", "runsc"} { // runc starts faster
		if rt, err := openRuntime(env.g, name); err == nil && rt.Capabilities().Available {
			rtName = name
			break
		}
	}
	if rtName == "" {
		env.runtime(t, "runc") // skips, or fails when required
	}
	rsa1, ec1, ec2 := newSigner(t, "rsa-1", "RS256"), newSigner(t, "ec-1", "ES256"), newSigner(t, "ec-2", "ES256")
	idp := newTestIdP(t, rsa1, ec1)
	key, keyHash, err := auth.NewAPIKey()
	if err != nil {
		t.Fatal(err)
	}
	revoked, revokedHash, _ := auth.NewAPIKey()
	otherKey, otherHash, _ := auth.NewAPIKey()
	cfgText := fmt.Sprintf(`
pools:
- name: exec-pool
  properties: {scaleConfiguration: {maxConcurrentSessions: 3, readySessionInstances: 1}}
  sessiond: {runtime: %[1]s, image: %[2]s, warmupCode: "None"}
- name: shell-pool
  properties: {containerType: Shell, scaleConfiguration: {maxConcurrentSessions: 1, readySessionInstances: 1}}
  sessiond: {runtime: %[1]s, image: %[2]s}
- name: other-pool
  properties: {scaleConfiguration: {maxConcurrentSessions: 1, readySessionInstances: 0}}
  sessiond: {runtime: %[1]s, image: %[2]s}
auth:
  issuers:
  - issuer: %[3]s
  keyRefetchInterval: 1ms
  mappings:
  - {claim: groups, value: other-only, role: SessionExecutor, pools: [other-pool]}
  apiKeys:
  - {name: ci, hash: "%[4]s", roles: [SessionExecutor], pools: [exec-pool, shell-pool]}
  - {name: old, hash: "%[5]s", roles: [SessionExecutor], revoked: true}
  - {name: other, hash: "%[6]s", roles: [SessionExecutor], pools: [other-pool]}
`, rtName, env.img.Name, idp.issuer, keyHash, revokedHash, otherHash)
	cfg, err := config.ParseConfig(strings.NewReader(cfgText))
	if err != nil {
		t.Fatal(err)
	}
	authn, err := auth.New(cfg.Auth, env.g.Log)
	if err != nil {
		t.Fatal(err)
	}
	if err := authn.Prefetch(context.Background()); err != nil {
		t.Fatal(err)
	}
	cp := env.startPools(t, cfg.Pools)
	srv := httptest.NewServer(api.New(api.Config{Pools: cp, Log: env.g.Log, Auth: authn}))
	t.Cleanup(srv.Close)
	waitReady(t, cp, "exec-pool", 1)
	waitReady(t, cp, "shell-pool", 1)

	exec := srv.URL + "/subscriptions/s/resourceGroups/rg/sessionPools/exec-pool/executions?api-version=2025-10-02-preview&identifier=auth-user-1"
	now := time.Now()
	valid := func(mod func(c map[string]any)) map[string]any {
		c := map[string]any{
			"iss": idp.issuer, "sub": "user-1", "aud": "https://dynamicsessions.io",
			"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(),
			"roles": []string{"SessionExecutor"},
		}
		if mod != nil {
			mod(c)
		}
		return c
	}
	good := rsa1.mint(t, valid(nil), nil)
	unpublished := newSigner(t, "rsa-1", "RS256") // the published key's ID, another key
	hs := hmacToken(t, rsa1, valid(nil))

	type credential struct{ header, value string }
	bearer := func(tok string) credential { return credential{"Authorization", "Bearer " + tok} }
	for _, c := range []struct {
		name string
		cred *credential
		url  string
		want int
		msg  string // in the 401 or 403 message
	}{
		{"valid RS256", &credential{"Authorization", "Bearer " + good}, exec, 200, ""},
		{"valid ES256 with Azure's role id and audience", ptr(bearer(ec1.mint(t, valid(func(c map[string]any) {
			c["roles"] = []string{"0fb8eba5-a2bb-4abe-b1c1-49dfad359bb0"}
			c["aud"] = "https://acasessions.io/"
		}), nil))), exec, 200, ""},
		{"expired", ptr(bearer(rsa1.mint(t, valid(func(c map[string]any) {
			c["exp"], c["iat"], c["nbf"] = now.Add(-time.Hour).Unix(), now.Add(-2*time.Hour).Unix(), now.Add(-2*time.Hour).Unix()
		}), nil))), exec, 401, "expired"},
		{"not yet valid", ptr(bearer(ec1.mint(t, valid(func(c map[string]any) { c["nbf"] = now.Add(time.Hour).Unix() }), nil))), exec, 401, "not valid yet"},
		{"wrong audience", ptr(bearer(rsa1.mint(t, valid(func(c map[string]any) { c["aud"] = "https://management.azure.com" }), nil))), exec, 401, "audience"},
		{"wrong issuer", ptr(bearer(rsa1.mint(t, valid(func(c map[string]any) { c["iss"] = "https://login.microsoftonline.com/evil/v2.0" }), nil))), exec, 401, "not trusted"},
		{"issuer with the published key's kid but another key", ptr(bearer(unpublished.mint(t, valid(nil), nil))), exec, 401, "signature"},
		{"unknown key", ptr(bearer(ec2.mint(t, valid(nil), nil))), exec, 401, "does not publish"},
		{"tampered signature", ptr(bearer(tamperSignature(good))), exec, 401, "signature"},
		{"tampered payload", ptr(bearer(tamperPayload(t, good, func(c map[string]any) { c["sub"] = "admin" }))), exec, 401, "signature"},
		{"alg none", ptr(bearer(unsignedToken(t, valid(nil)))), exec, 401, "not accepted"},
		{"HS256 keyed with the public key", ptr(bearer(hs)), exec, 401, "not accepted"},
		{"no credentials", nil, exec, 401, "no credentials"},
		{"two credentials", nil, exec, 401, "more than one"}, // set below
		{"basic scheme", &credential{"Authorization", "Basic " + base64.StdEncoding.EncodeToString([]byte("a:b"))}, exec, 401, "Bearer scheme"},
		{"missing role", ptr(bearer(rsa1.mint(t, valid(func(c map[string]any) { delete(c, "roles") }), nil))), exec, 403, "SessionExecutor"},
		{"role on another pool only", ptr(bearer(rsa1.mint(t, valid(func(c map[string]any) {
			delete(c, "roles")
			c["groups"] = []string{"other-only"}
		}), nil))), exec, 403, "exec-pool"},
		{"role on another pool there", ptr(bearer(rsa1.mint(t, valid(func(c map[string]any) {
			delete(c, "roles")
			c["groups"] = []string{"other-only"}
		}), nil))), srv.URL + "/pools/other-pool/listSessions?api-version=2025-02-02-preview", 200, ""},
		{"API key", &credential{"api-key", key}, exec, 200, ""},
		{"API key as bearer", ptr(bearer(key)), exec, 200, ""},
		{"API key in x-ms-apikey", &credential{"x-ms-apikey", key}, exec, 200, ""},
		{"API key revoked", &credential{"api-key", revoked}, exec, 401, "revoked"},
		{"API key unknown", &credential{"api-key", key + "x"}, exec, 401, "not valid"},
		{"API key for another pool", &credential{"api-key", otherKey}, exec, 403, "exec-pool"},
		{"unknown pool without credentials", nil, srv.URL + "/pools/no-such-pool/listSessions?api-version=2025-02-02-preview", 401, "no credentials"},
	} {
		t.Run(c.name, func(t *testing.T) {
			method, body := "POST", `{"code":"6*7"}`
			if strings.Contains(c.url, "listSessions") {
				method, body = "GET", ""
			}
			req, _ := http.NewRequest(method, c.url, strings.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			if c.cred != nil {
				req.Header.Set(c.cred.header, c.cred.value)
			}
			if c.name == "two credentials" {
				req.Header.Set("Authorization", "Bearer "+good)
				req.Header.Set("api-key", key)
			}
			resp, rb := send(t, req)
			if c.want != 200 {
				wantEnvelope(t, resp, rb, c.want, map[int]string{401: "Unauthorized", 403: "Forbidden"}[c.want])
			} else if resp.StatusCode != 200 {
				t.Fatalf("%s %s", resp.Status, rb)
			}
			if c.msg != "" && !strings.Contains(string(rb), c.msg) {
				t.Errorf("the error does not say %q: %s", c.msg, rb)
			}
			if strings.Contains(string(rb), key) || strings.Contains(string(rb), revoked) || (c.cred != nil && strings.Contains(string(rb), strings.TrimPrefix(c.cred.value, "Bearer "))) {
				t.Errorf("the answer echoes the credential: %s", rb)
			}
			if c.want == 401 && !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("401 without a Bearer challenge: WWW-Authenticate %q", resp.Header.Get("WWW-Authenticate"))
			}
			if c.want == 200 && method == "POST" && !strings.Contains(string(rb), `"executionResult":42`) {
				t.Errorf("execution: %s", rb)
			}
		})
	}

	t.Run("healthz is open", func(t *testing.T) {
		resp, body := send(t, mustRequest(t, "GET", srv.URL+"/healthz", ""))
		if resp.StatusCode != 200 {
			t.Errorf("healthz: %s %s", resp.Status, body)
		}
	})

	t.Run("rotated key", func(t *testing.T) {
		// The issuer adds a key: a token naming it makes the server fetch the key set.
		tok := ec2.mint(t, valid(nil), nil)
		idp.publish(rsa1, ec1, ec2)
		if resp, body := sendWith(t, exec, bearer(tok)); resp.StatusCode != 200 {
			t.Fatalf("token of the added key: %s %s", resp.Status, body)
		}
		// The issuer withdraws the old keys; once the server has fetched again (a token with
		// a key ID it does not know makes it), their tokens are refused.
		idp.publish(ec2)
		resp, body := sendWith(t, exec, bearer(newSigner(t, "ec-3", "ES256").mint(t, valid(nil), nil)))
		wantEnvelope(t, resp, body, 401, "Unauthorized")
		resp, body = sendWith(t, exec, bearer(good))
		wantEnvelope(t, resp, body, 401, "Unauthorized")
		if resp, body := sendWith(t, exec, bearer(tok)); resp.StatusCode != 200 {
			t.Errorf("token of the remaining key: %s %s", resp.Status, body)
		}
	})

	t.Run("no credential reaches a sandbox", func(t *testing.T) {
		// The execute request to the agent has no room for the caller's headers: a field
		// added to it is a decision to review here.
		fields := []string{}
		for f := range reflect.TypeFor[agentapi.ExecuteRequest]().Fields() {
			fields = append(fields, f.Name)
		}
		if want := []string{"ID", "Code", "TimeoutSeconds", "StreamLimit", "Async", "JupyterFormat", "EmptyKernel", "Warmup"}; !slices.Equal(fields, want) {
			t.Errorf("agentapi.ExecuteRequest has fields %v, want %v: does a header reach the sandbox now?", fields, want)
		}
		tok := ec2.mint(t, valid(nil), nil)
		secrets := []string{tok, key, "leak-marker-cookie", "leak-marker-forwarded", "Bearer"}
		secrets = append(secrets, strings.Split(tok, ".")...)
		scan := `
import os
out = [repr(dict(os.environ))]
for p in os.listdir("/proc"):
    if p.isdigit():
        for f in ("environ", "cmdline"):
            try:
                out.append(open("/proc/%s/%s" % (p, f), "rb").read().decode("latin-1"))
            except OSError:
                pass
for top in ("/tmp", "/mnt/data", "/home/user", "/run", "/etc"):
    for root, dirs, files in os.walk(top):
        for n in files:
            try:
                out.append(open(os.path.join(root, n), "rb").read(1 << 20).decode("latin-1"))
            except OSError:
                pass
print(dict(os.environ))
print(len(out))
import sys; sys.stdout.write("\n".join(out))
`
		// The scan must see what is there: a canary file and the sandbox's own environment.
		canary := mustRequest(t, "POST", exec, `{"code":"open('/tmp/scan-canary', 'w').write('canary-7d1e')"}`)
		canary.Header.Set("api-key", key)
		if resp, body := send(t, canary); resp.StatusCode != 200 {
			t.Fatalf("canary: %s %s", resp.Status, body)
		}
		for _, cred := range []credential{bearer(tok), {"api-key", key}} {
			req := mustRequest(t, "POST", exec, mustJSON(map[string]any{"code": scan, "outputStreamsMaxLength": 16 << 20}))
			req.Header.Set(cred.header, cred.value)
			req.Header.Set("Cookie", "session=leak-marker-cookie")
			req.Header.Set("X-Forwarded-Authorization", "leak-marker-forwarded")
			resp, body := send(t, req)
			var got execution
			if resp.StatusCode != 200 || json.Unmarshal(body, &got) != nil || got.Status != "Succeeded" {
				t.Fatalf("scan: %s %.2000s", resp.Status, body)
			}
			if !strings.Contains(got.Result.Stdout, "canary-7d1e") || !strings.Contains(got.Result.Stdout, "'PATH'") {
				t.Fatalf("the scan does not see the canary or the environment: %.2000s", got.Result.Stdout)
			}
			for _, s := range secrets {
				if strings.Contains(got.Result.Stdout, s) {
					t.Errorf("a sandbox sees %q (credential %s)", s, cred.header)
				}
			}
		}
		// A Shell pool's commands, likewise.
		req := mustRequest(t, "POST", srv.URL+"/pools/shell-pool/executions?api-version=2025-10-02-preview&identifier=auth-shell-1",
			`{"shellCommand":"env; cat /proc/[0-9]*/environ; grep -r . /tmp /mnt/data /run 2>/dev/null | head -c 1000000","outputStreamsMaxLength":16777216}`)
		req.Header.Set("api-key", key)
		req.Header.Set("Cookie", "session=leak-marker-cookie")
		resp, body := send(t, req)
		if resp.StatusCode != 200 || !strings.Contains(string(body), "PATH=") {
			t.Fatalf("shell scan: %s %.2000s", resp.Status, body)
		}
		for _, s := range []string{key, "leak-marker-cookie"} {
			if strings.Contains(string(body), s) {
				t.Errorf("a Shell sandbox sees %q", s)
			}
		}
	})
}

// send sends req and returns the response with its body.
func send(t *testing.T, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// sendWith posts the execution {"code":"6*7"} to url with one credential header.
func sendWith(t *testing.T, url string, cred struct{ header, value string }) (*http.Response, []byte) {
	t.Helper()
	req := mustRequest(t, "POST", url, `{"code":"6*7"}`)
	req.Header.Set(cred.header, cred.value)
	return send(t, req)
}

func mustRequest(t *testing.T, method, url, body string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	return req
}

func ptr[T any](v T) *T { return &v }

// The in-test identity provider.

// signer is a signing key with its key ID and algorithm (RS256 or ES256).
type signer struct {
	kid, alg string
	key      crypto.Signer
}

func newSigner(t *testing.T, kid, alg string) *signer {
	t.Helper()
	var k crypto.Signer
	var err error
	if alg == "RS256" {
		k, err = rsa.GenerateKey(rand.Reader, 2048)
	} else {
		k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	if err != nil {
		t.Fatal(err)
	}
	return &signer{kid: kid, alg: alg, key: k}
}

var b64 = base64.RawURLEncoding

// jwk is the public key as an issuer publishes it.
func (s *signer) jwk() map[string]any {
	switch pub := s.key.Public().(type) {
	case *rsa.PublicKey:
		return map[string]any{"kty": "RSA", "kid": s.kid, "use": "sig", "alg": s.alg,
			"n": b64.EncodeToString(pub.N.Bytes()), "e": b64.EncodeToString(big.NewInt(int64(pub.E)).Bytes())}
	case *ecdsa.PublicKey:
		b, _ := pub.Bytes() // 0x04 || X || Y
		return map[string]any{"kty": "EC", "kid": s.kid, "use": "sig", "crv": "P-256",
			"x": b64.EncodeToString(b[1:33]), "y": b64.EncodeToString(b[33:])}
	}
	panic("unknown key type")
}

// mint returns a compact JWS of claims; header entries override the defaults.
func (s *signer) mint(t *testing.T, claims, header map[string]any) string {
	t.Helper()
	input := jwsInput(t, map[string]any{"alg": s.alg, "typ": "JWT", "kid": s.kid}, header, claims)
	digest := sha256.Sum256([]byte(input))
	var sig []byte
	switch k := s.key.(type) {
	case *rsa.PrivateKey:
		var err error
		if sig, err = rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, digest[:]); err != nil {
			t.Fatal(err)
		}
	case *ecdsa.PrivateKey:
		r, ss, err := ecdsa.Sign(rand.Reader, k, digest[:])
		if err != nil {
			t.Fatal(err)
		}
		sig = append(r.FillBytes(make([]byte, 32)), ss.FillBytes(make([]byte, 32))...)
	}
	return input + "." + b64.EncodeToString(sig)
}

func jwsInput(t *testing.T, header, override, claims map[string]any) string {
	for k, v := range override {
		header[k] = v
	}
	hb, err := json.Marshal(header)
	if err != nil {
		t.Fatal(err)
	}
	cb, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	return b64.EncodeToString(hb) + "." + b64.EncodeToString(cb)
}

// unsignedToken is an "alg": "none" token.
func unsignedToken(t *testing.T, claims map[string]any) string {
	return jwsInput(t, map[string]any{"alg": "none", "typ": "JWT"}, nil, claims) + "."
}

// hmacToken is the algorithm-confusion attack: HS256 keyed with the issuer's public key.
func hmacToken(t *testing.T, s *signer, claims map[string]any) string {
	der, err := x509.MarshalPKIXPublicKey(s.key.Public())
	if err != nil {
		t.Fatal(err)
	}
	input := jwsInput(t, map[string]any{"alg": "HS256", "typ": "JWT", "kid": s.kid}, nil, claims)
	m := hmac.New(sha256.New, der)
	m.Write([]byte(input))
	return input + "." + b64.EncodeToString(m.Sum(nil))
}

// tamperSignature flips a bit of a token's signature.
func tamperSignature(tok string) string {
	i := strings.LastIndexByte(tok, '.')
	sig, _ := b64.DecodeString(tok[i+1:])
	sig[len(sig)/2] ^= 1
	return tok[:i+1] + b64.EncodeToString(sig)
}

// tamperPayload changes a token's claims and keeps its signature.
func tamperPayload(t *testing.T, tok string, mod func(map[string]any)) string {
	parts := strings.Split(tok, ".")
	b, _ := b64.DecodeString(parts[1])
	var claims map[string]any
	if err := json.Unmarshal(b, &claims); err != nil {
		t.Fatal(err)
	}
	mod(claims)
	cb, _ := json.Marshal(claims)
	return parts[0] + "." + b64.EncodeToString(cb) + "." + parts[2]
}

// testIdP serves OpenID Connect discovery at issuer/.well-known/openid-configuration and
// the published keys at /keys.
type testIdP struct {
	issuer string
	mu     sync.Mutex
	keys   []*signer // guarded by mu
}

func newTestIdP(t *testing.T, keys ...*signer) *testIdP {
	p := &testIdP{keys: keys}
	mux := http.NewServeMux()
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	p.issuer = srv.URL + "/tenant"
	mux.HandleFunc("GET /tenant/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]any{"issuer": p.issuer, "jwks_uri": srv.URL + "/keys"})
	})
	mux.HandleFunc("GET /keys", func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		set := []map[string]any{}
		for _, k := range p.keys {
			set = append(set, k.jwk())
		}
		p.mu.Unlock()
		json.NewEncoder(w).Encode(map[string]any{"keys": set})
	})
	return p
}

// publish replaces the published keys.
func (p *testIdP) publish(keys ...*signer) {
	p.mu.Lock()
	p.keys = keys
	p.mu.Unlock()
}
