package netns

import (
	"net/netip"
	"strings"

	"github.com/sessiond/sessiond/internal/errkind"
)

// Limits of a policy, so that one pool cannot make the firewall or the DNS forwarder slow.
const (
	// MaxAllowCIDRs bounds Policy.AllowCIDRs.
	MaxAllowCIDRs = 256
	// MaxAllowDomains bounds Policy.AllowDomains.
	MaxAllowDomains = 256
)

// Policy is what one sandbox's network may do.
//
// The zero Policy is egress disabled: the sandbox's network namespace has only loopback.
// With Enabled and empty allow-lists the sandbox reaches any public IPv4 address and any
// name; with a non-empty allow-list (either list) it reaches only the listed networks and
// the addresses that the listed names resolved to through the host's DNS forwarder, and
// names not on the list do not resolve. The always-on deny ranges (the host, other
// sandboxes, private, link-local and metadata addresses, ...) win over any allow-list.
type Policy struct {
	// Enabled gives the sandbox a veth to the host with NAT to the outside.
	Enabled bool `json:"enabled"`
	// AllowCIDRs are the IPv4 networks the sandbox may reach. IPv6 is not routed.
	AllowCIDRs []netip.Prefix `json:"allowCIDRs,omitempty"`
	// AllowDomains are DNS names the sandbox may resolve and reach: "example.com" is that
	// name only, "*.example.com" any name below it (a.example.com, a.b.example.com) but
	// not example.com itself. Matching ignores case and a trailing dot.
	AllowDomains []string `json:"allowDomains,omitempty"`
}

// Restricted reports whether egress is limited to the allow-lists.
func (p Policy) Restricted() bool { return len(p.AllowCIDRs) > 0 || len(p.AllowDomains) > 0 }

// Validate checks p and returns it normalized: prefixes masked, domains lower-cased
// without a trailing dot, duplicates removed. Errors are Invalid, with a message that
// names the bad entry.
func (p Policy) Validate() (Policy, error) {
	if !p.Enabled {
		if p.Restricted() {
			return Policy{}, errkind.New(errkind.Invalid, "egress allow-lists need egress enabled")
		}
		return Policy{}, nil
	}
	if len(p.AllowCIDRs) > MaxAllowCIDRs {
		return Policy{}, errkind.New(errkind.Invalid, "%d allowed CIDRs: at most %d", len(p.AllowCIDRs), MaxAllowCIDRs)
	}
	if len(p.AllowDomains) > MaxAllowDomains {
		return Policy{}, errkind.New(errkind.Invalid, "%d allowed domains: at most %d", len(p.AllowDomains), MaxAllowDomains)
	}
	out := Policy{Enabled: true}
	seen := map[netip.Prefix]bool{}
	for _, c := range p.AllowCIDRs {
		if !c.IsValid() {
			return Policy{}, errkind.New(errkind.Invalid, "allowed CIDR %q is not a valid prefix", c.String())
		}
		if !c.Addr().Is4() {
			return Policy{}, errkind.New(errkind.Invalid, "allowed CIDR %s: only IPv4 is routed to sandboxes", c)
		}
		c = c.Masked()
		if !seen[c] {
			seen[c] = true
			out.AllowCIDRs = append(out.AllowCIDRs, c)
		}
	}
	names := map[string]bool{}
	for _, d := range p.AllowDomains {
		n, err := normalizeDomain(d)
		if err != nil {
			return Policy{}, err
		}
		if !names[n] {
			names[n] = true
			out.AllowDomains = append(out.AllowDomains, n)
		}
	}
	return out, nil
}

// normalizeDomain checks an allow-list entry and returns it lower-cased without a trailing
// dot.
func normalizeDomain(d string) (string, error) {
	n := strings.ToLower(strings.TrimSuffix(d, "."))
	name := strings.TrimPrefix(n, "*.")
	if n == "" || len(n) > 253 {
		return "", errkind.New(errkind.Invalid, "allowed domain %q: want a DNS name of 1-253 characters", d)
	}
	labels := strings.Split(name, ".")
	if strings.HasPrefix(n, "*.") && len(labels) < 2 {
		return "", errkind.New(errkind.Invalid, "allowed domain %q: a wildcard needs at least two labels after it (*.example.com)", d)
	}
	for _, l := range labels {
		if !validLabel(l) {
			return "", errkind.New(errkind.Invalid, "allowed domain %q: label %q: want 1-63 letters, digits, '-' or '_', not starting or ending with '-' (a wildcard is only allowed as the whole first label, *.example.com)", d, l)
		}
	}
	return n, nil
}

func validLabel(l string) bool {
	if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
		return false
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// allowsName reports whether a normalized policy lets the sandbox resolve name (any case,
// with or without the trailing dot). An unrestricted policy allows every name.
func (p Policy) allowsName(name string) bool {
	if !p.Restricted() {
		return true
	}
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	for _, d := range p.AllowDomains {
		if suffix, ok := strings.CutPrefix(d, "*"); ok { // ".example.com"
			if len(name) > len(suffix) && strings.HasSuffix(name, suffix) {
				return true
			}
		} else if name == d {
			return true
		}
	}
	return false
}
