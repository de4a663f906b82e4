package auth

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
)

// Config is the authentication and authorization configuration. Its zero value trusts no
// issuer and no key: Enabled reports false, and it is the caller's decision whether to
// serve unauthenticated (sessiond does so only on loopback).
//
//	issuers:
//	- issuer: https://sts.windows.net/<tenant-id>/          # Entra ID v1 tokens
//	  jwksURI: https://login.microsoftonline.com/<tenant-id>/discovery/keys
//	- issuer: https://idp.example.com/realms/main            # keys by OIDC discovery
//	  audiences: [sessiond]                                  # replaces the global list
//	audiences: [https://dynamicsessions.io, https://acasessions.io]   # the default
//	clockSkew: 60s
//	roleClaims: [roles, groups]                               # the default
//	mappings:
//	- {claim: oid, value: 7d3c...e1, role: SessionExecutor, pools: [default]}
//	- {value: sessiond-admins, role: Contributor}           # every pool
//	apiKeys:
//	- {name: ci, hash: "sha256:9f86...", roles: [SessionExecutor], pools: [default]}
type Config struct {
	// Issuers are the token issuers trusted. A token's "iss" claim must equal one of them
	// exactly.
	Issuers []IssuerConfig `yaml:"issuers"`
	// Audiences are the accepted values of a token's "aud" claim, for issuers that do not
	// list their own. Default: DefaultAudiences. A trailing slash is ignored on both sides,
	// so "https://dynamicsessions.io/" matches "https://dynamicsessions.io".
	Audiences []string `yaml:"audiences"`
	// ClockSkew is how far "exp", "nbf" and "iat" may be off the local clock. Default 60s,
	// at most MaxClockSkew.
	ClockSkew time.Duration `yaml:"clockSkew"`
	// RoleClaims are the claims whose values are matched against Mappings (when a mapping
	// names no claim of its own). A dotted name ("realm_access.roles") reaches into nested
	// objects when the token has no claim of that literal name. Default: roles, groups.
	RoleClaims []string `yaml:"roleClaims"`
	// Mappings turn claim values into roles.
	Mappings []RoleMapping `yaml:"mappings"`
	// BuiltinRoleValues, when true (the default), also recognizes in the "roles" claim the
	// names of the roles ("SessionExecutor", "Contributor", "Reader") and Azure's names and
	// ids for them ("Azure ContainerApps Session Executor",
	// 0fb8eba5-a2bb-4abe-b1c1-49dfad359bb0, ...), each granting its role on every pool.
	// Only "roles" is searched: it holds app roles an administrator assigns, whereas some
	// identity providers let users name their own groups.
	BuiltinRoleValues *bool `yaml:"builtinRoleValues"`
	// APIKeys are static keys, stored as hashes (sessiond apikey makes one).
	APIKeys []APIKeyConfig `yaml:"apiKeys"`

	// KeyRefetchInterval is the least time between two fetches of one issuer's keys: a
	// token signed with an unknown key ID triggers a fetch (so rotation works) at most this
	// often. Default 30s.
	KeyRefetchInterval time.Duration `yaml:"keyRefetchInterval"`
	// KeyMaxAge is how long fetched keys are used before the next token makes a fetch, so
	// that keys an issuer withdrew stop validating. Default 1h. When that fetch fails the
	// old keys stay in use and the failure is logged.
	KeyMaxAge time.Duration `yaml:"keyMaxAge"`
	// KeyFetchTimeout bounds one fetch of a discovery document or key set. Default 10s,
	// at most 1m.
	KeyFetchTimeout time.Duration `yaml:"keyFetchTimeout"`
}

// IssuerConfig is one trusted token issuer.
type IssuerConfig struct {
	// Issuer is the issuer URL, exactly as in its tokens' "iss" claim.
	Issuer string `yaml:"issuer"`
	// JWKSURI is the URL of the issuer's JSON Web Key Set. When empty, it is read from the
	// OpenID Connect discovery document at Issuer + "/.well-known/openid-configuration",
	// whose "issuer" must equal Issuer.
	JWKSURI string `yaml:"jwksURI"`
	// Audiences, when set, replace Config.Audiences for this issuer's tokens.
	Audiences []string `yaml:"audiences"`
}

// RoleMapping grants Role when a token's claim holds Value.
type RoleMapping struct {
	// Claim is the claim to look in; empty means every claim of Config.RoleClaims.
	Claim string `yaml:"claim"`
	// Value is the claim value, matched exactly (a string, or an element of an array).
	Value string `yaml:"value"`
	// Issuer, when set, limits the mapping to tokens of that issuer.
	Issuer string `yaml:"issuer"`
	// Role is granted: SessionExecutor, Contributor or Reader.
	Role string `yaml:"role"`
	// Pools limits the grant to these pools; empty means every pool.
	Pools []string `yaml:"pools"`
}

// APIKeyConfig is one static API key.
type APIKeyConfig struct {
	// Name identifies the key in logs; it is not secret.
	Name string `yaml:"name"`
	// Hash is "sha256:" and the lowercase hex SHA-256 of the key (see HashAPIKey).
	Hash string `yaml:"hash"`
	// Roles are granted to the key's holder: SessionExecutor, Contributor, Reader.
	Roles []string `yaml:"roles"`
	// Pools limits the roles to these pools; empty means every pool.
	Pools []string `yaml:"pools"`
	// Revoked keys are refused (with a message saying so) but stay listed, so the hash
	// is not reused by accident.
	Revoked bool `yaml:"revoked"`
}

// DefaultAudiences are Azure's data-plane audiences: the documented one, and the one
// Semantic Kernel and LangChain.js request (azure-api.md §7).
var DefaultAudiences = []string{"https://dynamicsessions.io", "https://acasessions.io"}

// Limits and defaults of Config.
const (
	DefaultClockSkew          = 60 * time.Second
	MaxClockSkew              = 5 * time.Minute
	DefaultKeyRefetchInterval = 30 * time.Second
	DefaultKeyMaxAge          = time.Hour
	DefaultKeyFetchTimeout    = 10 * time.Second
	MaxKeyFetchTimeout        = time.Minute
)

// DefaultRoleClaims are the claims searched for role values when Config names none.
var DefaultRoleClaims = []string{"roles", "groups"}

// Enabled reports whether the configuration trusts any issuer or key. When it does not,
// every request would be refused, so a server either runs without authentication or
// refuses to start.
func (c Config) Enabled() bool { return len(c.Issuers) > 0 || len(c.APIKeys) > 0 }

// Validate checks the configuration; its error names the offending field, such as
// "issuers[1].jwksURI".
func (c Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	issuers := map[string]bool{}
	for i, is := range c.Issuers {
		f := fmt.Sprintf("issuers[%d]", i)
		if err := checkFetchURL(is.Issuer); err != nil {
			bad(f+".issuer", "%v", err)
		} else if issuers[is.Issuer] {
			bad(f+".issuer", "%q is listed twice", is.Issuer)
		}
		issuers[is.Issuer] = true
		if is.JWKSURI != "" {
			if err := checkFetchURL(is.JWKSURI); err != nil {
				bad(f+".jwksURI", "%v", err)
			}
		}
		checkAudiences(f+".audiences", is.Audiences, bad)
	}
	checkAudiences("audiences", c.Audiences, bad)
	if c.ClockSkew < 0 || c.ClockSkew > MaxClockSkew {
		bad("clockSkew", "%v is outside 0 to %v", c.ClockSkew, MaxClockSkew)
	}
	for i, rc := range c.RoleClaims {
		if strings.TrimSpace(rc) == "" {
			bad(fmt.Sprintf("roleClaims[%d]", i), "a claim name is required")
		}
	}
	for i, m := range c.Mappings {
		f := fmt.Sprintf("mappings[%d]", i)
		if m.Value == "" {
			bad(f+".value", "a claim value is required")
		}
		if _, err := ParseRole(m.Role); err != nil {
			bad(f+".role", "%v", err)
		}
		if m.Issuer != "" && !issuers[m.Issuer] {
			bad(f+".issuer", "%q is not one of the issuers", m.Issuer)
		}
		checkPools(f+".pools", m.Pools, bad)
	}
	names, hashes := map[string]bool{}, map[string]bool{}
	for i, k := range c.APIKeys {
		f := fmt.Sprintf("apiKeys[%d]", i)
		switch {
		case k.Name == "":
			bad(f+".name", "a name is required")
		case names[k.Name]:
			bad(f+".name", "%q is used twice", k.Name)
		}
		names[k.Name] = true
		if h, err := parseKeyHash(k.Hash); err != nil {
			bad(f+".hash", "%v", err)
		} else if hashes[string(h)] {
			bad(f+".hash", "the same hash is listed twice")
		} else {
			hashes[string(h)] = true
		}
		if len(k.Roles) == 0 && !k.Revoked {
			bad(f+".roles", "a key needs at least one role")
		}
		for j, r := range k.Roles {
			if _, err := ParseRole(r); err != nil {
				bad(fmt.Sprintf("%s.roles[%d]", f, j), "%v", err)
			}
		}
		checkPools(f+".pools", k.Pools, bad)
	}
	if c.KeyRefetchInterval < 0 {
		bad("keyRefetchInterval", "must not be negative")
	}
	if c.KeyMaxAge < 0 {
		bad("keyMaxAge", "must not be negative")
	}
	if c.KeyFetchTimeout < 0 || c.KeyFetchTimeout > MaxKeyFetchTimeout {
		bad("keyFetchTimeout", "%v is outside 0 to %v", c.KeyFetchTimeout, MaxKeyFetchTimeout)
	}
	return errors.Join(errs...)
}

// withDefaults returns c with every unset field at its default.
func (c Config) withDefaults() Config {
	if len(c.Audiences) == 0 {
		c.Audiences = DefaultAudiences
	}
	if c.ClockSkew == 0 {
		c.ClockSkew = DefaultClockSkew
	}
	if len(c.RoleClaims) == 0 {
		c.RoleClaims = DefaultRoleClaims
	}
	if c.BuiltinRoleValues == nil {
		t := true
		c.BuiltinRoleValues = &t
	}
	if c.KeyRefetchInterval == 0 {
		c.KeyRefetchInterval = DefaultKeyRefetchInterval
	}
	if c.KeyMaxAge == 0 {
		c.KeyMaxAge = DefaultKeyMaxAge
	}
	if c.KeyFetchTimeout == 0 {
		c.KeyFetchTimeout = DefaultKeyFetchTimeout
	}
	return c
}

func checkAudiences(field string, auds []string, bad func(string, string, ...any)) {
	for i, a := range auds {
		if strings.TrimSpace(a) == "" {
			bad(fmt.Sprintf("%s[%d]", field, i), "an audience must not be empty")
		}
	}
}

func checkPools(field string, pools []string, bad func(string, string, ...any)) {
	for i, p := range pools {
		if p == "" {
			bad(fmt.Sprintf("%s[%d]", field, i), "a pool name must not be empty")
		}
	}
}

// checkFetchURL accepts an absolute https URL, or an http URL to a loopback address (a
// local identity provider, or a test's): keys fetched over plain HTTP from elsewhere
// could be replaced on the way.
func checkFetchURL(s string) error {
	if s == "" {
		return errors.New("a URL is required")
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("not a URL: %w", err)
	}
	if u.Host == "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("%q must be an absolute URL with a host and no fragment or user", s)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if isLoopback(u.Hostname()) {
			return nil
		}
		return fmt.Errorf("%q must use https (plain http is accepted for loopback addresses only)", s)
	}
	return fmt.Errorf("%q must use https", s)
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// hashPrefix starts every APIKeyConfig.Hash.
const hashPrefix = "sha256:"

// parseKeyHash returns the 32 bytes of a "sha256:<hex>" hash.
func parseKeyHash(s string) ([]byte, error) {
	hexPart, ok := strings.CutPrefix(s, hashPrefix)
	if !ok {
		return nil, fmt.Errorf("must be %q followed by 64 hex digits", hashPrefix)
	}
	b, err := hex.DecodeString(hexPart)
	if err != nil || len(b) != 32 {
		return nil, fmt.Errorf("must be %q followed by 64 hex digits", hashPrefix)
	}
	return b, nil
}
