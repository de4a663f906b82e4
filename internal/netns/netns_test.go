package netns_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"go.uber.org/goleak"

	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/netns"
	"github.com/sessiond/sessiond/internal/netns/netnstest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	testTable  = "sessiond-test"
	testPrefix = "sdt-"
)

var testSubnet = netip.MustParsePrefix("10.231.7.0/24")

type fixture struct {
	m   *netns.Manager
	cfg netns.Config
	in  *netnstest.Internet
}

// newFixture starts a stand-in internet and a Manager whose upstream resolver is the
// stand-in's; both are removed when the test ends, and the test checks that ip_forward is
// as it was.
func newFixture(t *testing.T, mutate func(*netns.Config)) *fixture {
	t.Helper()
	in := netnstest.Start(t, testSubnet)
	fwd, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		t.Fatal(err)
	}
	cfg := netns.Config{
		StateDir: t.TempDir(), Subnet: testSubnet, Table: testTable, LinkPrefix: testPrefix,
		Upstreams: []netip.AddrPort{in.DNS()},
	}
	if mutate != nil {
		mutate(&cfg)
	}
	m, err := netns.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	f := &fixture{m: m, cfg: cfg, in: in}
	t.Cleanup(func() {
		if err := f.m.Uninstall(context.Background()); err != nil {
			t.Errorf("Uninstall: %v", err)
		}
		if got, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); string(got) != string(fwd) {
			t.Errorf("ip_forward after Uninstall = %q, want %q", got, fwd)
		}
		assertNoTable(t, cfg.Table)
	})
	return f
}

func (f *fixture) setup(t *testing.T, id string, p netns.Policy) *netns.Attachment {
	t.Helper()
	a, err := f.m.Setup(context.Background(), id, p)
	if err != nil {
		t.Fatalf("Setup %s: %v", id, err)
	}
	return a
}

func web(a netip.Addr) netip.AddrPort { return netip.AddrPortFrom(a, 80) }

// mustReach fetches from the stand-in at addr from inside ns and checks the answer.
func mustReach(t *testing.T, ns string, addr netip.Addr) {
	t.Helper()
	body, err := netnstest.Get(ns, web(addr))
	if err != nil {
		t.Fatalf("GET %s: %v", addr, err)
	}
	if want := "internet " + addr.String() + "\n"; body != want {
		t.Fatalf("GET %s = %q, want %q", addr, body, want)
	}
}

// mustNotReach tries all addrs from inside ns at once and checks that none answers.
func mustNotReach(t *testing.T, ns string, addrs ...netip.AddrPort) {
	t.Helper()
	bodies := make([]string, len(addrs))
	errs := make([]error, len(addrs))
	var wg sync.WaitGroup
	for i, a := range addrs {
		wg.Go(func() { bodies[i], errs[i] = netnstest.Get(ns, a) })
	}
	wg.Wait()
	for i, a := range addrs {
		if errs[i] == nil {
			t.Errorf("GET %s from the sandbox succeeded (%q), want it blocked", a, bodies[i])
		}
	}
}

func webAll(addrs []netip.Addr) []netip.AddrPort {
	var out []netip.AddrPort
	for _, a := range addrs {
		out = append(out, web(a))
	}
	return out
}

// resolve asks the forwarder for name's A records from inside the sandbox.
func resolve(t *testing.T, a *netns.Attachment, fwd netip.Addr, name string) (*dns.Msg, []netip.Addr) {
	t.Helper()
	r, err := netnstest.Query(a.Path, netip.AddrPortFrom(fwd, 53), "udp", name, dns.TypeA)
	if err != nil {
		t.Fatalf("resolving %s: %v", name, err)
	}
	var out []netip.Addr
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			ip, _ := netip.AddrFromSlice(a.A.To4())
			out = append(out, ip)
		}
	}
	return r, out
}

func TestEgressDisabled(t *testing.T) {
	f := newFixture(t, nil)
	a := f.setup(t, "off", netns.Policy{})
	if a.ResolvConf != nil || a.Address.IsValid() || a.HostLink != "" {
		t.Errorf("disabled attachment = %+v, want no address, link or resolv.conf", a)
	}
	var names []string
	if err := netns.Do(a.Path, func() error {
		ifs, err := net.Interfaces()
		for _, i := range ifs {
			names = append(names, i.Name)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if strings.Join(names, ",") != "lo" {
		t.Errorf("interfaces in a disabled sandbox = %v, want [lo]", names)
	}
	mustNotReach(t, a.Path, webAll(append([]netip.Addr{netnstest.Addr, f.m.ForwarderAddr(), netnstest.HostAddr}, netnstest.Private...))...)
	if _, err := netnstest.Query(a.Path, netip.AddrPortFrom(f.m.ForwarderAddr(), 53), "udp", netnstest.AllowedName, dns.TypeA); err == nil {
		t.Errorf("DNS from a disabled sandbox answered")
	}
	_ = netns.Do(a.Path, func() error {
		c, err := net.Dial("udp4", "198.51.100.10:9")
		if err == nil {
			_, _ = c.Write([]byte("x"))
			c.Close()
		}
		return nil
	})
	if n := f.in.Hits(); n != 0 {
		t.Errorf("the stand-in internet saw %d requests from a disabled sandbox", n)
	}
}

func TestEgressEnabled(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	a := f.setup(t, "open", netns.Policy{Enabled: true})
	b := f.setup(t, "peer", netns.Policy{Enabled: true})
	fwd := f.m.ForwarderAddr()
	if want := "nameserver " + fwd.String(); !strings.Contains(string(a.ResolvConf), want) {
		t.Errorf("resolv.conf = %q, want it to contain %q", a.ResolvConf, want)
	}

	t.Run("reaches the internet by address and by name", func(t *testing.T) {
		mustReach(t, a.Path, netnstest.Addr)
		_, addrs := resolve(t, a, fwd, netnstest.OtherName)
		if len(addrs) != 1 || addrs[0] != netnstest.Other {
			t.Fatalf("%s resolved to %v, want [%s]", netnstest.OtherName, addrs, netnstest.Other)
		}
		mustReach(t, a.Path, addrs[0])
		r, err := netnstest.Query(a.Path, netip.AddrPortFrom(fwd, 53), "udp", netnstest.AllowedName, dns.TypeAAAA)
		if err != nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 {
			t.Errorf("AAAA query = %v, %v; want an empty answer (no IPv6 route)", r, err)
		}
	})

	t.Run("denied ranges stay unreachable", func(t *testing.T) {
		mustNotReach(t, a.Path, webAll(netnstest.Private)...)
	})

	t.Run("the host stays unreachable", func(t *testing.T) {
		// A control plane listening on every host address.
		ln, err := net.Listen("tcp4", "0.0.0.0:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		port := uint16(ln.Addr().(*net.TCPAddr).Port)
		hostAddrs := []netip.Addr{netnstest.HostAddr, a.Gateway, b.Gateway, fwd, netip.MustParseAddr("127.0.0.1")}
		ifAddrs, _ := net.InterfaceAddrs()
		for _, ia := range ifAddrs {
			if p, err := netip.ParsePrefix(ia.String()); err == nil && p.Addr().Is4() && !p.Addr().IsLoopback() {
				hostAddrs = append(hostAddrs, p.Addr())
			}
		}
		var targets []netip.AddrPort
		for _, h := range hostAddrs {
			// The listener answers from the host itself...
			c, err := net.DialTimeout("tcp4", netip.AddrPortFrom(h, port).String(), 3*time.Second)
			if err != nil {
				t.Fatalf("control plane not reachable from the host at %s: %v", h, err)
			}
			c.Close()
			targets = append(targets, netip.AddrPortFrom(h, port))
		}
		// ... never from a sandbox.
		mustNotReach(t, a.Path, targets...)
	})

	t.Run("other sandboxes stay unreachable", func(t *testing.T) {
		var ln net.Listener
		if err := netns.Do(b.Path, func() error {
			var err error
			ln, err = net.Listen("tcp4", "0.0.0.0:8080")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		// The host reaches the peer (the listener works)...
		c, err := net.DialTimeout("tcp4", netip.AddrPortFrom(b.Address, 8080).String(), 3*time.Second)
		if err != nil {
			t.Fatalf("peer sandbox listener not reachable from the host: %v", err)
		}
		c.Close()
		// ... the other sandbox does not.
		mustNotReach(t, a.Path, netip.AddrPortFrom(b.Address, 8080))
	})

	t.Run("DNS to other resolvers is dropped", func(t *testing.T) {
		if _, err := netnstest.Query(f.in.NS, f.in.DNS(), "udp", netnstest.AllowedName, dns.TypeA); err != nil {
			t.Fatalf("the stand-in resolver does not answer at all: %v", err)
		}
		var wg sync.WaitGroup
		for _, network := range []string{"udp", "tcp"} {
			wg.Go(func() {
				if r, err := netnstest.Query(a.Path, f.in.DNS(), network, netnstest.AllowedName, dns.TypeA); err == nil {
					t.Errorf("DNS over %s to %s answered from a sandbox: %v", network, f.in.DNS(), r)
				}
			})
		}
		wg.Wait()
	})

	t.Run("spoofed sources are dropped", func(t *testing.T) {
		// Root in the namespace (the runtime never gives sandboxes this) adds the peer's
		// address and another one and sends from them.
		for _, src := range []netip.Addr{b.Address, a.Address.Next().Next().Next().Next()} {
			var err error
			_ = netns.Do(a.Path, func() error {
				l, lerr := netlink.LinkByName("eth0")
				if lerr != nil {
					return lerr
				}
				_ = netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: src.AsSlice(), Mask: net.CIDRMask(32, 32)}})
				d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
				var c net.Conn
				c, err = d.Dial("tcp4", web(netnstest.Addr).String())
				if err == nil {
					c.Close()
				}
				return nil
			})
			if err == nil {
				t.Errorf("a connection from spoofed source %s got through", src)
			}
		}
	})

	t.Run("no IPv6 in the sandbox", func(t *testing.T) {
		var v string
		_ = netns.Do(a.Path, func() error {
			b, err := os.ReadFile("/proc/sys/net/ipv6/conf/eth0/disable_ipv6")
			v = strings.TrimSpace(string(b))
			return err
		})
		if v != "1" {
			t.Errorf("eth0 disable_ipv6 = %q, want 1", v)
		}
	})

	if err := f.m.Teardown(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if err := f.m.Teardown(ctx, a.ID); err != nil {
		t.Errorf("second Teardown: %v", err)
	}
	if err := f.m.Teardown(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	assertClean(t, f)
}

func TestDomainAllowList(t *testing.T) {
	f := newFixture(t, nil)
	a := f.setup(t, "names", netns.Policy{Enabled: true, AllowDomains: []string{netnstest.AllowedName, "*." + netnstest.WildDomain}})
	fwd := f.m.ForwarderAddr()

	// Before the name is resolved its address is not reachable.
	mustNotReach(t, a.Path, web(netnstest.Addr))
	_, addrs := resolve(t, a, fwd, netnstest.AllowedName)
	if len(addrs) != 1 || addrs[0] != netnstest.Addr {
		t.Fatalf("%s resolved to %v, want [%s]", netnstest.AllowedName, addrs, netnstest.Addr)
	}
	mustReach(t, a.Path, netnstest.Addr)

	r, addrs := resolve(t, a, fwd, "a."+netnstest.WildDomain)
	if len(addrs) != 1 || addrs[0] != netnstest.Wild {
		t.Fatalf("a.%s resolved to %v (%v), want [%s]", netnstest.WildDomain, addrs, r, netnstest.Wild)
	}
	mustReach(t, a.Path, netnstest.Wild)

	for _, name := range []string{netnstest.OtherName, netnstest.WildDomain, "allowed.example.com.evil.test"} {
		r, addrs := resolve(t, a, fwd, name)
		if r.Rcode != dns.RcodeNameError || len(addrs) != 0 {
			t.Errorf("%s: rcode %s, addresses %v; want NXDOMAIN", name, dns.RcodeToString[r.Rcode], addrs)
		}
	}
	// other.example.com's address stays blocked though the stand-in serves it.
	mustNotReach(t, a.Path, web(netnstest.Other))
	mustNotReach(t, a.Path, webAll(netnstest.Private)...)
	// A sandbox without that policy has not gained anything from these answers.
	b := f.setup(t, "cidrs", netns.Policy{Enabled: true, AllowCIDRs: []netip.Prefix{netip.PrefixFrom(netnstest.Other, 32)}})
	mustNotReach(t, b.Path, web(netnstest.Addr))
}

func TestCIDRAllowList(t *testing.T) {
	f := newFixture(t, nil)
	a := f.setup(t, "cidrs", netns.Policy{Enabled: true, AllowCIDRs: []netip.Prefix{
		netip.MustParsePrefix("198.51.100.12/31"),
		netip.MustParsePrefix("10.203.0.0/16"), // denied ranges win over allow-lists
		netip.MustParsePrefix("169.254.0.0/16"),
	}})
	mustReach(t, a.Path, netnstest.Wild)
	mustNotReach(t, a.Path, web(netnstest.Addr), web(netnstest.Other))
	mustNotReach(t, a.Path, webAll(netnstest.Private)...)
	// No names are on the list: none resolves.
	if r, _ := resolve(t, a, f.m.ForwarderAddr(), netnstest.AllowedName); r.Rcode != dns.RcodeNameError {
		t.Errorf("%s with a CIDR-only allow-list: rcode %s, want NXDOMAIN", netnstest.AllowedName, dns.RcodeToString[r.Rcode])
	}
}

func TestDNSForwarder(t *testing.T) {
	f := newFixture(t, nil)
	a := f.setup(t, "dns", netns.Policy{Enabled: true})
	fwd := netip.AddrPortFrom(f.m.ForwarderAddr(), 53)

	// A large answer is truncated over UDP and comes whole over TCP.
	r, err := netnstest.Query(a.Path, fwd, "udp", netnstest.BigName, dns.TypeTXT)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Truncated || r.Len() > dns.MinMsgSize {
		t.Errorf("UDP answer of %d bytes, truncated %v; want at most %d bytes, truncated", r.Len(), r.Truncated, dns.MinMsgSize)
	}
	// A client offering a larger EDNS buffer gets at most 1232 bytes over UDP.
	m := new(dns.Msg)
	m.SetQuestion(netnstest.BigName+".", dns.TypeTXT)
	m.SetEdns0(4096, false)
	r, err = netnstest.Exchange(a.Path, fwd, "udp", m)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Truncated || r.Len() > 1232 || r.Len() <= dns.MinMsgSize {
		t.Errorf("UDP answer with EDNS: %d bytes, truncated %v; want %d..1232 bytes, truncated", r.Len(), r.Truncated, dns.MinMsgSize)
	}
	r, err = netnstest.Query(a.Path, fwd, "tcp", netnstest.BigName, dns.TypeTXT)
	if err != nil {
		t.Fatal(err)
	}
	if r.Truncated || len(r.Answer) != 40 {
		t.Errorf("TCP answer: %d records, truncated %v; want 40, not truncated", len(r.Answer), r.Truncated)
	}
	// Answers carry no TTL above the configured maximum.
	r, err = netnstest.Query(a.Path, fwd, "udp", netnstest.AllowedName, dns.TypeA)
	if err != nil || len(r.Answer) != 1 {
		t.Fatalf("query: %v, %v", r, err)
	}
	if ttl := r.Answer[0].Header().Ttl; ttl > uint32(netns.DefaultDNSMaxTTL/time.Second) || ttl == 0 {
		t.Errorf("TTL %d, want 1..%d", ttl, netns.DefaultDNSMaxTTL/time.Second)
	}
	// The host is not a sandbox: refused.
	c := &dns.Client{Timeout: 3 * time.Second}
	m = new(dns.Msg)
	m.SetQuestion(dns.Fqdn(netnstest.AllowedName), dns.TypeA)
	r, _, err = c.Exchange(m, fwd.String())
	if err != nil || r.Rcode != dns.RcodeRefused {
		t.Errorf("query from the host: %v, %v; want REFUSED", r, err)
	}
}

func TestResolvedAddressesExpire(t *testing.T) {
	f := newFixture(t, func(c *netns.Config) { c.DNSMinTTL, c.DNSMaxTTL = time.Second, time.Second })
	a := f.setup(t, "expiry", netns.Policy{Enabled: true, AllowDomains: []string{netnstest.AllowedName}})
	r, _ := resolve(t, a, f.m.ForwarderAddr(), netnstest.AllowedName)
	if ttl := r.Answer[0].Header().Ttl; ttl != 1 {
		t.Errorf("answer TTL %d, want 1 (capped)", ttl)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := netnstest.Get(a.Path, web(netnstest.Addr)); err != nil {
			break // expired
		}
		if time.Now().After(deadline) {
			t.Fatal("the resolved address is still reachable long after its TTL")
		}
		time.Sleep(200 * time.Millisecond)
	}
	resolve(t, a, f.m.ForwarderAddr(), netnstest.AllowedName)
	mustReach(t, a.Path, netnstest.Addr)
}

// TestSetupFailsClosed removes the firewall table behind the Manager's back: Setup must
// fail and leave nothing (no veth, no namespace) rather than give a sandbox an unfiltered
// network.
func TestSetupFailsClosed(t *testing.T) {
	f := newFixture(t, nil)
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	c.DelTable(&nftables.Table{Name: testTable, Family: nftables.TableFamilyINet})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	_, err = f.m.Setup(context.Background(), "noguard", netns.Policy{Enabled: true})
	if err == nil {
		t.Fatal("Setup succeeded without a firewall")
	}
	assertClean(t, f)
	// A Manager started again rebuilds the table.
	if err := f.m.Close(); err != nil {
		t.Fatal(err)
	}
	m, err := netns.New(f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.m = m
	a := f.setup(t, "guarded", netns.Policy{Enabled: true})
	mustNotReach(t, a.Path, web(netnstest.Private[0]))
}

func TestRestart(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	a := f.setup(t, "survivor", netns.Policy{Enabled: true, AllowDomains: []string{netnstest.AllowedName}})
	gone := f.setup(t, "gone", netns.Policy{Enabled: true})
	resolve(t, a, f.m.ForwarderAddr(), netnstest.AllowedName)
	mustReach(t, a.Path, netnstest.Addr)

	// A second Manager cannot take the state directory while the first holds it.
	other, err := netns.New(f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Start(ctx); !errkind.Is(err, errkind.Unavailable) {
		t.Errorf("second Start = %v, want Unavailable", err)
	}

	if err := f.m.Close(); err != nil {
		t.Fatal(err)
	}
	// Leftovers of a crash: a namespace and a veth no record claims.
	orphan := filepath.Join(f.cfg.StateDir, "ns", "orphan")
	if err := netns.Create(orphan); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: testPrefix + "ff"}, PeerName: testPrefix + "ffp"}); err != nil {
		t.Fatal(err)
	}

	m, err := netns.New(f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatalf("Start after restart: %v", err)
	}
	f.m = m
	if _, err := os.Stat(orphan); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("orphaned namespace still there: %v", err)
	}
	if _, err := netlink.LinkByName(testPrefix + "ff"); err == nil {
		t.Errorf("orphaned veth still there")
	}
	// The rules and the resolved address survived.
	mustReach(t, a.Path, netnstest.Addr)
	mustNotReach(t, a.Path, web(netnstest.Other))
	resolve(t, a, m.ForwarderAddr(), netnstest.AllowedName)

	var ids []string
	for _, x := range m.List(ctx) {
		ids = append(ids, x.ID)
	}
	if strings.Join(ids, ",") != "gone,survivor" {
		t.Errorf("List after restart = %v, want [gone survivor]", ids)
	}
	reaped, err := m.Reap(ctx, func(id string) bool { return id == a.ID })
	if err != nil || len(reaped) != 1 || reaped[0] != gone.ID {
		t.Errorf("Reap = %v, %v; want [%s]", reaped, err, gone.ID)
	}
	if _, err := os.Stat(gone.Path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("reaped namespace still there")
	}
}

func TestSetupErrors(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	f.setup(t, "dup", netns.Policy{Enabled: true})
	for _, c := range []struct {
		id   string
		p    netns.Policy
		kind errkind.Kind
	}{
		{"dup", netns.Policy{Enabled: true}, errkind.AlreadyExists},
		{"Bad/ID", netns.Policy{}, errkind.Invalid},
		{"x", netns.Policy{AllowDomains: []string{"a.com"}}, errkind.Invalid},
		{"x", netns.Policy{Enabled: true, AllowDomains: []string{"*"}}, errkind.Invalid},
	} {
		if _, err := f.m.Setup(ctx, c.id, c.p); !errkind.Is(err, c.kind) {
			t.Errorf("Setup(%q, %+v) = %v, want %v", c.id, c.p, err, c.kind)
		}
	}
}

// assertClean checks that no sandbox network is left: no namespaces, veths, records,
// per-sandbox chains and sets, or map and set entries.
func assertClean(t *testing.T, f *fixture) {
	t.Helper()
	for _, d := range []string{"ns", "attachments"} {
		if ents, _ := os.ReadDir(filepath.Join(f.cfg.StateDir, d)); len(ents) > 0 {
			t.Errorf("leftover %s: %v", d, ents)
		}
	}
	links, _ := netlink.LinkList()
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, f.cfg.LinkPrefix) {
			t.Errorf("leftover veth %s", l.Attrs().Name)
		}
	}
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	table := &nftables.Table{Name: f.cfg.Table, Family: nftables.TableFamilyINet}
	chains, _ := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	for _, ch := range chains {
		if ch.Table.Name == f.cfg.Table && strings.HasPrefix(ch.Name, "sb-") {
			t.Errorf("leftover chain %s", ch.Name)
		}
	}
	sets, _ := c.GetSets(table)
	for _, s := range sets {
		if strings.HasPrefix(s.Name, "c-") || strings.HasPrefix(s.Name, "d-") {
			t.Errorf("leftover set %s", s.Name)
			continue
		}
		if elems, _ := c.GetSetElements(s); len(elems) > 0 && s.Name != "deny4" {
			t.Errorf("leftover elements in %s: %d", s.Name, len(elems))
		}
	}
}

func assertNoTable(t *testing.T, name string) {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ListTableOfFamily(name, nftables.TableFamilyINet); err == nil {
		t.Errorf("table %s still exists after Uninstall", name)
	}
}

// TestMaxResolved: a sandbox whose names resolved to more addresses than its set holds
// gets SERVFAIL rather than an address it could not reach.
func TestMaxResolved(t *testing.T) {
	f := newFixture(t, func(c *netns.Config) { c.MaxResolved = 1 })
	a := f.setup(t, "small", netns.Policy{Enabled: true, AllowDomains: []string{netnstest.AllowedName, "*." + netnstest.WildDomain}})
	if r, addrs := resolve(t, a, f.m.ForwarderAddr(), netnstest.AllowedName); r.Rcode != dns.RcodeSuccess || len(addrs) != 1 {
		t.Fatalf("first name: %v", r)
	}
	if r, _ := resolve(t, a, f.m.ForwarderAddr(), "a."+netnstest.WildDomain); r.Rcode != dns.RcodeServerFailure {
		t.Errorf("second address beyond MaxResolved=1: rcode %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
	}
	mustNotReach(t, a.Path, web(netnstest.Wild))
	mustReach(t, a.Path, netnstest.Addr)
}
