// Package auth authenticates API callers and says what they may do. A caller presents
// either a bearer JWT from a configured issuer (Microsoft Entra ID or any OpenID Connect
// provider; keys from the issuer's JWKS, found by discovery or configured, refreshed on
// rotation) or a static API key (stored as a SHA-256 hash). Claims and keys map to roles
// per pool: SessionExecutor for the data plane, Contributor and Reader for the management
// plane (see Role).
//
// Failures are errkind errors: Unauthenticated (HTTP 401: no credentials, or invalid
// ones), Forbidden (403: a known caller without the role) and Unavailable (503: the
// issuer's keys cannot be fetched). Their public messages say what was wrong without
// echoing secrets; tokens and keys are never logged.
//
// auth starts no goroutine and needs no Close: keys are fetched on demand, in the request
// that needs them. It is not the HTTP layer: internal/api calls Check for each request
// and StripCredentials before anything is forwarded to a sandbox. Imported by internal/api
// and cmd/sessiond.
package auth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/sessiond/sessiond/internal/errkind"
)

// Authenticator checks requests' credentials against a Config. It is safe for concurrent
// use.
type Authenticator struct {
	skew     time.Duration
	issuers  map[string]*issuer
	keys     []apiKey
	mappings []mapping
	builtin  bool
	now      func() time.Time
}

// issuer is a trusted issuer's state.
type issuer struct {
	audiences []string // without trailing slashes
	keys      *keySource
}

// mapping is a RoleMapping ready for matching.
type mapping struct {
	claims []string
	value  string
	issuer string
	grant  grant
}

// New returns an Authenticator for cfg, which it validates. It does no I/O: issuers' keys
// are fetched when the first token needs them (or by Prefetch). log receives warnings
// about issuers' key sets; nil discards them.
func New(cfg Config, log *slog.Logger) (*Authenticator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("auth configuration: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "auth")
	cfg = cfg.withDefaults()
	a := &Authenticator{
		skew:    cfg.ClockSkew,
		issuers: map[string]*issuer{},
		builtin: *cfg.BuiltinRoleValues,
		now:     time.Now,
	}
	now := func() time.Time { return a.now() }
	client := newFetchClient(cfg.KeyFetchTimeout)
	for _, ic := range cfg.Issuers {
		auds := ic.Audiences
		if len(auds) == 0 {
			auds = cfg.Audiences
		}
		a.issuers[ic.Issuer] = &issuer{
			audiences: trimSlashes(auds),
			keys: &keySource{
				issuer:          ic.Issuer,
				jwksURI:         ic.JWKSURI,
				client:          client,
				timeout:         cfg.KeyFetchTimeout,
				refetchInterval: cfg.KeyRefetchInterval,
				maxAge:          cfg.KeyMaxAge,
				now:             now,
				log:             log,
			},
		}
	}
	for _, m := range cfg.Mappings {
		role, _ := ParseRole(m.Role) // validated
		claims := cfg.RoleClaims
		if m.Claim != "" {
			claims = []string{m.Claim}
		}
		a.mappings = append(a.mappings, mapping{claims: claims, value: m.Value, issuer: m.Issuer, grant: newGrant(role, m.Pools)})
	}
	for _, kc := range cfg.APIKeys {
		k := apiKey{name: kc.Name, revoked: kc.Revoked}
		h, _ := parseKeyHash(kc.Hash) // validated
		copy(k.hash[:], h)
		for _, r := range kc.Roles {
			role, _ := ParseRole(r)
			k.grants = append(k.grants, newGrant(role, kc.Pools))
		}
		a.keys = append(a.keys, k)
	}
	return a, nil
}

func newGrant(r Role, pools []string) grant {
	if len(pools) == 0 {
		return grant{role: r}
	}
	return grant{role: r, pools: slices.Clone(pools)}
}

func trimSlashes(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = strings.TrimSuffix(s, "/")
	}
	return out
}

// Prefetch fetches every issuer's keys, so that a configuration error (a wrong URL, an
// unreachable issuer) shows at startup rather than at the first request. Its error is
// worth logging, not necessarily fatal: requests retry the fetch.
func (a *Authenticator) Prefetch(ctx context.Context) error {
	var errs []error
	for _, is := range a.issuers {
		if _, err := is.keys.keysFor(ctx, ""); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Credential headers. "api-key" is what sessiond's own keys are sent in; "x-ms-apikey" is
// the header of Azure's MCP endpoint (azure-api.md §7).
const (
	headerAPIKey    = "Api-Key"
	headerMSAPIKey  = "X-Ms-Apikey"
	headerAuthorize = "Authorization"
)

// StripCredentials removes the request headers that carry credentials, so that nothing
// forwarded to a sandbox (which runs untrusted code) can replay them.
func StripCredentials(h http.Header) {
	for _, k := range []string{headerAuthorize, headerAPIKey, headerMSAPIKey, "Proxy-Authorization"} {
		h.Del(k)
	}
}

// Check authenticates r and requires role on pool ("" for every pool): the call
// internal/api makes for each request. The principal is returned also when it lacks the
// role, for logging.
func (a *Authenticator) Check(r *http.Request, pool string, role Role) (*Principal, error) {
	p, err := a.Authenticate(r.Context(), r)
	if err != nil {
		return nil, err
	}
	if !p.Allowed(pool, role) {
		if pool == "" {
			return p, errkind.New(errkind.Forbidden, "The caller does not have the %s role on every session pool.", role)
		}
		return p, errkind.New(errkind.Forbidden, "The caller does not have the %s role on session pool '%.100s'.", role, pool)
	}
	return p, nil
}

// Authenticate returns the principal r's credentials identify: an "Authorization: Bearer"
// JWT, or an API key in "Authorization: Bearer" (any bearer that is not a JWT), "api-key"
// or "x-ms-apikey". Errors are Unauthenticated, or Unavailable when a token's issuer's
// keys cannot be fetched.
func (a *Authenticator) Authenticate(ctx context.Context, r *http.Request) (*Principal, error) {
	cred, isKey, err := credential(r.Header)
	if err != nil {
		return nil, err
	}
	if isKey {
		return a.authenticateKey(cred)
	}
	return a.authenticateToken(ctx, cred)
}

// credential returns the one credential in h, and whether it is an API key rather than
// a JWT.
func credential(h http.Header) (cred string, isKey bool, err error) {
	var found []string
	for _, k := range []string{headerAuthorize, headerAPIKey, headerMSAPIKey} {
		found = append(found, h.Values(k)...)
	}
	switch {
	case len(found) == 0:
		return "", false, unauthenticated("The request has no credentials: send an access token in an \"Authorization: Bearer\" header, or an API key.", nil)
	case len(found) > 1:
		return "", false, unauthenticated("The request has more than one credential; send exactly one Authorization, api-key or x-ms-apikey header.", nil)
	}
	if v := h.Get(headerAuthorize); v != "" {
		scheme, cred, ok := strings.Cut(v, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") {
			return "", false, unauthenticated("The Authorization header must use the Bearer scheme.", nil)
		}
		cred = strings.TrimSpace(cred)
		if cred == "" {
			return "", false, unauthenticated("The Authorization header has an empty bearer token.", nil)
		}
		// A JWS has exactly two dots; keys from NewAPIKey have none.
		return cred, strings.Count(cred, ".") != 2, nil
	}
	return strings.TrimSpace(found[0]), true, nil
}

func (a *Authenticator) authenticateKey(key string) (*Principal, error) {
	var k *apiKey
	if len(key) <= maxAPIKeyBytes {
		k = matchKey(a.keys, key)
	}
	if k == nil {
		return nil, unauthenticated("The API key is not valid.", nil)
	}
	if k.revoked {
		return nil, unauthenticated("The API key has been revoked.", fmt.Errorf("API key %q", k.name))
	}
	return &Principal{Method: MethodAPIKey, Name: k.name, grants: k.grants}, nil
}

func (a *Authenticator) authenticateToken(ctx context.Context, s string) (*Principal, error) {
	t, err := parseToken(s)
	if err != nil {
		return nil, invalidToken(err)
	}
	is := a.issuers[t.claims.Issuer]
	if is == nil {
		return nil, unauthenticated(fmt.Sprintf("The access token's issuer %.200q is not trusted by this server.", t.claims.Issuer), nil)
	}
	keys, err := is.keys.keysFor(ctx, t.header.Kid)
	if err != nil {
		if ctx.Err() != nil {
			return nil, errkind.Wrap(errkind.Timeout, err)
		}
		return nil, &errkind.Error{Kind: errkind.Unavailable, Public: true, Err: err,
			Msg: "The access token's issuer's signing keys could not be fetched; retry later."}
	}
	if err := verifyWithAny(t, keys); err != nil {
		return nil, err
	}
	if err := t.claims.validate(a.now(), a.skew, is.audiences); err != nil {
		return nil, invalidToken(err)
	}
	name := t.claims.Subject
	if name == "" {
		name = "(no subject)"
	}
	return &Principal{Method: MethodToken, Name: name, Issuer: t.claims.Issuer, grants: a.tokenGrants(t)}, nil
}

// verifyWithAny checks t's signature against the candidate keys.
func verifyWithAny(t *token, keys []publicKey) error {
	if len(keys) == 0 {
		return unauthenticated(fmt.Sprintf("The access token is signed with a key (kid %.100q) its issuer does not publish.", t.header.Kid), nil)
	}
	var errs []error
	for _, k := range keys {
		if k.alg != "" && k.alg != t.header.Alg {
			errs = append(errs, fmt.Errorf("key %q is for %s", k.kid, k.alg))
			continue
		}
		err := t.verify(k.key)
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("key %q: %w", k.kid, err))
	}
	return unauthenticated("The access token's signature is not valid.", errors.Join(errs...))
}

// tokenGrants returns the roles t's claims map to.
func (a *Authenticator) tokenGrants(t *token) []grant {
	var gs []grant
	for _, m := range a.mappings {
		if m.issuer != "" && m.issuer != t.claims.Issuer {
			continue
		}
		for _, c := range m.claims {
			if slices.Contains(claimValues(t.raw, c), m.value) {
				gs = append(gs, m.grant)
				break
			}
		}
	}
	if a.builtin {
		for _, v := range claimValues(t.raw, "roles") {
			if r, ok := builtinRoleValues[v]; ok {
				gs = append(gs, grant{role: r})
			}
		}
	}
	return gs
}

// claimValues returns the string values of the claim name: a string, or the strings of
// an array. A dotted name reaches into nested objects when no claim has that literal
// name.
func claimValues(claims map[string]any, name string) []string {
	v, ok := claims[name]
	if !ok && strings.Contains(name, ".") {
		parts := strings.Split(name, ".")
		var cur any = claims
		for _, p := range parts {
			m, isMap := cur.(map[string]any)
			if !isMap {
				return nil
			}
			cur = m[p]
		}
		v = cur
	}
	switch v := v.(type) {
	case string:
		return []string{v}
	case []any:
		out := make([]string, 0, len(v))
		for _, e := range v {
			if s, ok := e.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}

// invalidToken is an Unauthenticated error whose message is err's text, which must be
// safe to show.
func invalidToken(err error) error {
	return unauthenticated("The access token is not valid: "+err.Error()+".", nil)
}

func unauthenticated(msg string, cause error) error {
	return &errkind.Error{Kind: errkind.Unauthenticated, Msg: msg, Public: true, Err: cause}
}
