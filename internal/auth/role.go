package auth

import (
	"context"
	"fmt"
	"slices"
	"strings"
)

// Role is what a caller may do with a pool.
//
// The set follows Azure (azure-api.md §7): the data plane needs "Azure ContainerApps
// Session Executor" on the pool, and the management plane is Contributor (write) and
// Reader (read). In Azure, Contributor grants management actions but no data actions, and
// the docs tell users to assign both roles to run code; sessiond keeps that split, so
// Contributor implies Reader but not SessionExecutor, and SessionExecutor implies nothing:
// a key that runs code cannot reconfigure pools, and a pool administrator does not see
// into sessions unless also given SessionExecutor.
type Role string

const (
	// SessionExecutor may use the data plane: run code, read and write session files,
	// list and delete sessions.
	SessionExecutor Role = "SessionExecutor"
	// Contributor may create, change and delete pools; it implies Reader.
	Contributor Role = "Contributor"
	// Reader may read pools' configuration and state.
	Reader Role = "Reader"
)

var roles = []Role{SessionExecutor, Contributor, Reader}

// ParseRole returns the role named s, ignoring case.
func ParseRole(s string) (Role, error) {
	for _, r := range roles {
		if strings.EqualFold(s, string(r)) {
			return r, nil
		}
	}
	return "", fmt.Errorf("unknown role %q (want SessionExecutor, Contributor or Reader)", s)
}

// implies reports whether holding r is enough for want.
func (r Role) implies(want Role) bool {
	return r == want || (r == Contributor && want == Reader)
}

// builtinRoleValues are the values of a token's "roles" claim that grant a role on every
// pool without a mapping (Config.BuiltinRoleValues): sessiond's names, and Azure's names
// and built-in role definition ids.
var builtinRoleValues = map[string]Role{
	"SessionExecutor":                      SessionExecutor,
	"Contributor":                          Contributor,
	"Reader":                               Reader,
	"Azure ContainerApps Session Executor": SessionExecutor,
	"0fb8eba5-a2bb-4abe-b1c1-49dfad359bb0": SessionExecutor, // Azure ContainerApps Session Executor
	"b24988ac-6180-42a0-ab88-20f7382dd24c": Contributor,     // Azure built-in Contributor
	"acdd72a7-3385-48ef-bd42-f606fba81ae7": Reader,          // Azure built-in Reader
}

// Method is how a principal authenticated.
type Method string

const (
	MethodToken  Method = "token"
	MethodAPIKey Method = "apikey"
)

// Principal is an authenticated caller and the roles it holds.
type Principal struct {
	Method Method
	// Name identifies the caller in logs: the token's subject, or the API key's name.
	Name string
	// Issuer is the token's issuer; empty for API keys.
	Issuer string
	grants []grant
}

// grant is one role on some pools.
type grant struct {
	role  Role
	pools []string // nil: every pool
}

// Allowed reports whether p holds role on pool. An empty pool asks about every pool, which
// only a grant without a pool list satisfies (for operations such as creating or listing
// pools, callers may instead ask about each pool by name). A nil Principal holds nothing.
func (p *Principal) Allowed(pool string, role Role) bool {
	if p == nil {
		return false
	}
	for _, g := range p.grants {
		if !g.role.implies(role) {
			continue
		}
		if g.pools == nil || (pool != "" && slices.Contains(g.pools, pool)) {
			return true
		}
	}
	return false
}

// String describes p for logs; it contains no secret.
func (p *Principal) String() string {
	if p == nil {
		return "anonymous"
	}
	if p.Issuer != "" {
		return fmt.Sprintf("%s %s (issuer %s)", p.Method, p.Name, p.Issuer)
	}
	return fmt.Sprintf("%s %s", p.Method, p.Name)
}

type principalKey struct{}

// WithPrincipal returns ctx carrying p.
func WithPrincipal(ctx context.Context, p *Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// FromContext returns the principal WithPrincipal put in ctx, or nil.
func FromContext(ctx context.Context) *Principal {
	p, _ := ctx.Value(principalKey{}).(*Principal)
	return p
}
