package netns

import (
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/miekg/dns"

	"github.com/sessiond/sessiond/internal/errkind"
)

func TestPolicyValidate(t *testing.T) {
	pfx := netip.MustParsePrefix
	many := func(n int, f func(i int) string) []string {
		var out []string
		for i := range n {
			out = append(out, f(i))
		}
		return out
	}
	for _, c := range []struct {
		name    string
		in      Policy
		want    Policy
		wantErr string
	}{
		{name: "zero is disabled", in: Policy{}, want: Policy{}},
		{name: "open", in: Policy{Enabled: true}, want: Policy{Enabled: true}},
		{name: "normalized",
			in: Policy{Enabled: true, AllowCIDRs: []netip.Prefix{pfx("203.0.113.77/24"), pfx("203.0.113.0/24")},
				AllowDomains: []string{"Example.COM.", "*.Example.com", "example.com"}},
			want: Policy{Enabled: true, AllowCIDRs: []netip.Prefix{pfx("203.0.113.0/24")},
				AllowDomains: []string{"example.com", "*.example.com"}}},
		{name: "lists without egress", in: Policy{AllowDomains: []string{"a.com"}}, wantErr: "need egress enabled"},
		{name: "IPv6 CIDR", in: Policy{Enabled: true, AllowCIDRs: []netip.Prefix{pfx("2001:db8::/32")}}, wantErr: "only IPv4"},
		{name: "invalid CIDR", in: Policy{Enabled: true, AllowCIDRs: []netip.Prefix{{}}}, wantErr: "not a valid prefix"},
		{name: "bare wildcard", in: Policy{Enabled: true, AllowDomains: []string{"*"}}, wantErr: "label"},
		{name: "wildcard on a TLD", in: Policy{Enabled: true, AllowDomains: []string{"*.com"}}, wantErr: "two labels"},
		{name: "inner wildcard", in: Policy{Enabled: true, AllowDomains: []string{"a.*.com"}}, wantErr: "label \"*\""},
		{name: "empty label", in: Policy{Enabled: true, AllowDomains: []string{"a..com"}}, wantErr: "label \"\""},
		{name: "bad character", in: Policy{Enabled: true, AllowDomains: []string{"a b.com"}}, wantErr: "label"},
		{name: "empty", in: Policy{Enabled: true, AllowDomains: []string{""}}, wantErr: "1-253"},
		{name: "too long", in: Policy{Enabled: true, AllowDomains: []string{strings.Repeat("a.", 127) + "com"}}, wantErr: "1-253"},
		{name: "too many domains", in: Policy{Enabled: true, AllowDomains: many(MaxAllowDomains+1, func(i int) string { return "a.com" })}, wantErr: "at most"},
		{name: "too many CIDRs", in: Policy{Enabled: true, AllowCIDRs: make([]netip.Prefix, MaxAllowCIDRs+1)}, wantErr: "at most"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := c.in.Validate()
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) || !errkind.Is(err, errkind.Invalid) {
					t.Fatalf("Validate = %v, want an Invalid error containing %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(c.want, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
				t.Errorf("Validate (-want +got):\n%s", diff)
			}
		})
	}
}

func TestAllowsName(t *testing.T) {
	p, err := Policy{Enabled: true, AllowDomains: []string{"allowed.example.com", "*.wild.example.com"}}.Validate()
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]bool{
		"allowed.example.com.":        true,
		"ALLOWED.example.com":         true,
		"a.wild.example.com.":         true,
		"a.b.wild.example.com.":       true,
		"wild.example.com.":           false,
		"xwild.example.com.":          false,
		"other.example.com.":          false,
		"a.allowed.example.com.":      false,
		"allowed.example.com.evil.":   false,
		"example.com.":                false,
		"1.0.0.10.in-addr.arpa.":      false,
		"allowed.example.com.wild.a.": false,
	} {
		if got := p.allowsName(name); got != want {
			t.Errorf("allowsName(%q) = %v, want %v", name, got, want)
		}
	}
	if !(Policy{Enabled: true}).allowsName("anything.test.") {
		t.Errorf("an unrestricted policy refused a name")
	}
}

func TestMergeRanges(t *testing.T) {
	pfx := netip.MustParsePrefix
	got := mergeRanges([]netip.Prefix{
		pfx("10.0.0.0/8"), pfx("10.1.0.0/16"), // contained
		pfx("11.0.0.0/8"),                      // adjacent
		pfx("192.168.1.7/24"),                  // unmasked
		pfx("240.0.0.0/4"), pfx("224.0.0.0/4"), // adjacent, out of order, to the end
		pfx("2001:db8::/32"), // ignored
	})
	want := [][2]uint32{{0x0a000000, 0x0bffffff}, {0xc0a80100, 0xc0a801ff}, {0xe0000000, 0xffffffff}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("mergeRanges (-want +got):\n%s", diff)
	}
	elems := intervalElements([]netip.Prefix{pfx("10.0.0.0/8"), pfx("224.0.0.0/3")})
	if len(elems) != 3 || !elems[1].IntervalEnd || string(elems[1].Key) != "\x0b\x00\x00\x00" || elems[2].IntervalEnd {
		t.Errorf("intervalElements = %+v, want start, end after 10/8, open-ended start", elems)
	}
}

func TestFollowChain(t *testing.T) {
	rr := func(s string) dns.RR {
		r, err := dns.NewRR(s)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	answer := []dns.RR{
		rr("www.example.com. 300 IN CNAME cdn.example.net."),
		rr("cdn.example.net. 60 IN A 203.0.113.5"),
		rr("cdn.example.net. 90 IN A 203.0.113.6"),
		rr("unrelated.example.org. 10 IN A 198.51.100.1"), // smuggled: not on the chain
		rr("cdn.example.net. 60 IN AAAA 2001:db8::1"),
	}
	chain, addrs, ttl := followChain("WWW.example.com.", answer)
	if len(chain) != 3 {
		t.Errorf("chain = %v, want the CNAME and two A records", chain)
	}
	want := []netip.Addr{netip.MustParseAddr("203.0.113.5"), netip.MustParseAddr("203.0.113.6")}
	if diff := cmp.Diff(want, addrs, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("addresses (-want +got):\n%s", diff)
	}
	if ttl != 60*time.Second {
		t.Errorf("ttl = %s, want 1m0s", ttl)
	}
	// A CNAME loop ends.
	loop := []dns.RR{rr("a.test. 5 IN CNAME b.test."), rr("b.test. 5 IN CNAME a.test.")}
	if chain, addrs, _ := followChain("a.test.", loop); len(chain) != maxCNAMEChain || len(addrs) != 0 {
		t.Errorf("CNAME loop: %d records, %v", len(chain), addrs)
	}
}

func TestConfigDefaults(t *testing.T) {
	dir := t.TempDir()
	rc := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(rc, []byte("# c\nnameserver 127.0.0.53\nnameserver 192.0.2.53\nnameserver ::1\nsearch x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ups, err := resolvConfServers(rc)
	if err != nil || len(ups) != 1 || ups[0].String() != "192.0.2.53:53" {
		t.Errorf("resolvConfServers = %v, %v; want [192.0.2.53:53] (loopback resolvers skipped)", ups, err)
	}
	up := []netip.AddrPort{netip.MustParseAddrPort("192.0.2.53:53")}
	c, err := Config{Upstreams: up}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if c.StateDir != DefaultStateDir || c.Subnet != DefaultSubnet || c.Table != DefaultTable || c.LinkPrefix != DefaultLinkPrefix ||
		c.DNSMinTTL != DefaultDNSMinTTL || c.DNSMaxTTL != DefaultDNSMaxTTL || c.DNSTimeout != DefaultDNSTimeout ||
		c.MaxResolved != DefaultMaxResolved || c.MaxDNSInFlight != DefaultMaxDNSInFlight {
		t.Errorf("defaults not applied: %+v", c)
	}
	m, err := New(Config{Upstreams: up})
	if err != nil {
		t.Fatal(err)
	}
	if got := m.ForwarderAddr().String(); got != "10.88.0.1" {
		t.Errorf("forwarder = %s, want 10.88.0.1", got)
	}
	if gw, a := m.slotAddrs(3); gw.String() != "10.88.0.13" || a.String() != "10.88.0.14" {
		t.Errorf("slot 3 = %s, %s; want 10.88.0.13, 10.88.0.14", gw, a)
	}
	for _, bad := range []Config{
		{Upstreams: up, StateDir: "relative"},
		{Upstreams: up, Subnet: netip.MustParsePrefix("10.0.0.0/30")},
		{Upstreams: up, Subnet: netip.MustParsePrefix("fd00::/64")},
		{Upstreams: up, LinkPrefix: "sd"},
		{Upstreams: up, LinkPrefix: "toolongprefix-"},
		{Upstreams: up, Table: "Bad Table"},
		{Upstreams: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.53:0")}},
		{Upstreams: up, DenyCIDRs: []netip.Prefix{netip.MustParsePrefix("fd00::/8")}},
		{Upstreams: up, DNSMinTTL: time.Hour, DNSMaxTTL: time.Minute},
	} {
		if _, err := New(bad); !errkind.Is(err, errkind.Invalid) {
			t.Errorf("New(%+v) = %v, want Invalid", bad, err)
		}
	}
}

// TestRemoteAddr covers the forwarder's view of a client.
func TestRemoteAddr(t *testing.T) {
	if a, ok := remoteAddr(&net.UDPAddr{IP: net.ParseIP("::ffff:10.88.0.6"), Port: 5}); !ok || a.String() != "10.88.0.6" {
		t.Errorf("remoteAddr = %s, %v", a, ok)
	}
	if _, ok := remoteAddr(&net.UnixAddr{Name: "x"}); ok {
		t.Errorf("a unix address was taken for a sandbox")
	}
}

// TestForwarderBounds drives the forwarder's answer logic without sockets: queries beyond
// the in-flight bound get SERVFAIL, unknown clients REFUSED, malformed queries an error,
// and a UDP answer never exceeds maxUDPResponse whatever the client's EDNS buffer says.
func TestForwarderBounds(t *testing.T) {
	sandbox := netip.MustParseAddr("10.88.0.6")
	f := &forwarder{sem: make(chan struct{}, 1), cfg: forwarderConfig{
		sandbox: func(a netip.Addr) (uint32, Policy, bool) {
			return 1, Policy{Enabled: true, AllowDomains: []string{"ok.test"}}, a == sandbox
		},
		log: slog.New(slog.DiscardHandler),
	}}
	from := &net.UDPAddr{IP: sandbox.AsSlice(), Port: 1000}
	q := func(name string, qtype uint16) *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		return m
	}
	f.sem <- struct{}{} // one query in flight: the bound is reached
	if r := f.answer(from, q("ok.test.", dns.TypeAAAA)); r.Rcode != dns.RcodeServerFailure {
		t.Errorf("beyond the in-flight bound: %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
	}
	<-f.sem
	for _, c := range []struct {
		from net.Addr
		req  *dns.Msg
		want int
	}{
		{&net.UDPAddr{IP: net.ParseIP("10.88.0.10"), Port: 1}, q("ok.test.", dns.TypeA), dns.RcodeRefused},
		{from, q("no.test.", dns.TypeA), dns.RcodeNameError},
		{from, q("ok.test.", dns.TypeAAAA), dns.RcodeSuccess},
		{from, q("ok.test.", dns.TypeANY), dns.RcodeNotImplemented},
		{from, &dns.Msg{}, dns.RcodeFormatError},
	} {
		if r := f.answer(c.from, c.req); r.Rcode != c.want {
			t.Errorf("answer(%v, %v) = %s, want %s", c.from, c.req.Question, dns.RcodeToString[r.Rcode], dns.RcodeToString[c.want])
		}
	}
	if len(f.sem) != 0 {
		t.Errorf("%d in-flight slots leaked", len(f.sem))
	}
}
