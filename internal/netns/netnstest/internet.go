// Package netnstest gives tests a stand-in internet on this machine, so that sandbox
// egress can be tested for real without any traffic leaving the host: a network namespace
// joined to the host by a veth, holding "public" addresses (TEST-NET-2, 198.51.100.0/24; this machine reaches its package mirrors in TEST-NET-3)
// with an HTTP server and a DNS server, and also the private, link-local and metadata
// addresses sandboxes must never reach, with the same servers behind them, so that a
// broken deny rule shows up as an answer rather than as a timeout. Policy routing sends
// everything from the sandbox subnet that the host does not route itself into the stand-in,
// so not even a broken firewall lets a test packet out of the machine.
//
// Fixtures take a host-wide lock for their lifetime (their addresses and routes are fixed),
// so tests in different packages using them run one after another. Needs root.
package netnstest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/sessiond/sessiond/internal/netns"
	"github.com/sessiond/sessiond/internal/sandbox/sandboxtest"
)

// Addresses of the stand-in internet.
var (
	// HostAddr is the host's side of the link to the stand-in (a host address: denied).
	HostAddr = netip.MustParseAddr("198.51.100.1")
	// Addr serves HTTP on port 80 and DNS on 53; allowed.example.com resolves to it.
	Addr = netip.MustParseAddr("198.51.100.10")
	// Other is other.example.com.
	Other = netip.MustParseAddr("198.51.100.11")
	// Wild is every name under wild.example.com.
	Wild = netip.MustParseAddr("198.51.100.12")
	// Private are addresses in denied ranges, also served by the stand-in.
	Private = []netip.Addr{
		netip.MustParseAddr("10.203.0.10"),
		netip.MustParseAddr("172.16.203.10"),
		netip.MustParseAddr("192.168.203.10"),
		netip.MustParseAddr("100.64.203.10"),
		netip.MustParseAddr("169.254.169.254"),
		netip.MustParseAddr("198.18.203.10"),
	}
)

// Names the stand-in DNS server answers (everything else is NXDOMAIN).
const (
	AllowedName = "allowed.example.com"
	OtherName   = "other.example.com"
	WildDomain  = "wild.example.com" // *.wild.example.com
	// BigName has a TXT answer larger than any UDP response the forwarder sends.
	BigName = "big.example.com"
	// NameTTL is the TTL of the stand-in's answers, in seconds.
	NameTTL = 60
)

const (
	lockPath   = "/run/sessiond-netnstest.lock"
	linkName   = "sdtestinet"
	rulePrio   = 10321
	routeTable = 10321
)

// Internet is a running stand-in internet.
type Internet struct {
	// NS is its network namespace.
	NS string
	// Subnet is the sandbox subnet routed into it.
	Subnet netip.Prefix
	hits   atomic.Int64
}

// Hits counts the HTTP requests and UDP datagrams the stand-in has received.
func (in *Internet) Hits() int64 { return in.hits.Load() }

// DNS is the stand-in's DNS server (a resolver sandboxes must not reach directly).
func (in *Internet) DNS() netip.AddrPort { return netip.AddrPortFrom(Addr, 53) }

// RequireRoot skips the test, or fails it under SESSIOND_TEST_REQUIRE=1, when not root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		sandboxtest.SkipOrFail(t, "network namespace tests need root")
	}
}

// Start starts a stand-in internet for sandboxes in subnet and stops it when the test
// ends. It waits for the host-wide lock first.
func Start(t testing.TB, subnet netip.Prefix) *Internet {
	t.Helper()
	RequireRoot(t)
	lf, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lf.Close() })
	cleanupLeftovers()

	dir := t.TempDir()
	in := &Internet{NS: filepath.Join(dir, "internet"), Subnet: subnet}
	if err := netns.Create(in.NS); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netns.Remove(in.NS) })
	t.Cleanup(cleanupLeftovers)
	if err := in.link(); err != nil {
		t.Fatalf("setting up the stand-in internet: %v", err)
	}
	in.serve(t)
	return in
}

// cleanupLeftovers removes what a killed earlier fixture may have left.
func cleanupLeftovers() {
	if l, err := netlink.LinkByName(linkName); err == nil {
		_ = netlink.LinkDel(l)
	}
	for _, family := range []int{netlink.FAMILY_V4} {
		rules, _ := netlink.RuleList(family)
		for _, r := range rules {
			if r.Priority == rulePrio || r.Priority == rulePrio+1 {
				r := r
				_ = netlink.RuleDel(&r)
			}
		}
	}
}

// link joins the stand-in to the host and routes the sandbox subnet into it.
func (in *Internet) link() error {
	fd, err := unix.Open(in.NS, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: linkName}, PeerName: "eth0", PeerNamespace: netlink.NsFd(fd)}); err != nil {
		return fmt.Errorf("creating veth: %w", err)
	}
	hl, err := netlink.LinkByName(linkName)
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(hl, &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(HostAddr, 24))}); err != nil {
		return err
	}
	if err := netlink.LinkSetUp(hl); err != nil {
		return err
	}
	h, err := netlink.NewHandleAt(vnetns.NsHandle(fd))
	if err != nil {
		return err
	}
	defer h.Close()
	el, err := h.LinkByName("eth0")
	if err != nil {
		return err
	}
	addrs := []netip.Prefix{netip.PrefixFrom(Addr, 24), netip.PrefixFrom(Other, 32), netip.PrefixFrom(Wild, 32)}
	for _, a := range Private {
		addrs = append(addrs, netip.PrefixFrom(a, 32))
	}
	for _, a := range addrs {
		if err := h.AddrAdd(el, &netlink.Addr{IPNet: prefixNet(a)}); err != nil {
			return fmt.Errorf("adding %s: %w", a, err)
		}
	}
	if err := h.LinkSetUp(el); err != nil {
		return err
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: el.Attrs().Index, Gw: HostAddr.AsSlice()}); err != nil {
		return fmt.Errorf("adding the stand-in's default route: %w", err)
	}
	// Sandbox traffic uses the host's routes except its default route, and goes into the
	// stand-in otherwise (wg-quick's suppress_prefixlength trick).
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: hl.Attrs().Index, Gw: Addr.AsSlice(), Table: routeTable}); err != nil {
		return fmt.Errorf("adding the sandbox route: %w", err)
	}
	r := netlink.NewRule()
	r.Priority, r.Src, r.Table, r.SuppressPrefixlen = rulePrio, prefixNet(in.Subnet), unix.RT_TABLE_MAIN, 0
	if err := netlink.RuleAdd(r); err != nil {
		return fmt.Errorf("adding routing rule: %w", err)
	}
	r = netlink.NewRule()
	r.Priority, r.Src, r.Table = rulePrio+1, prefixNet(in.Subnet), routeTable
	if err := netlink.RuleAdd(r); err != nil {
		return fmt.Errorf("adding routing rule: %w", err)
	}
	return nil
}

// serve starts the stand-in's HTTP, UDP sink and DNS servers.
func (in *Internet) serve(t testing.TB) {
	var httpLn, dnsTCP net.Listener
	var sink, dnsUDP net.PacketConn
	err := netns.Do(in.NS, func() error {
		var err error
		if httpLn, err = net.Listen("tcp4", "0.0.0.0:80"); err != nil {
			return err
		}
		if sink, err = net.ListenPacket("udp4", "0.0.0.0:9"); err != nil {
			return err
		}
		if dnsUDP, err = net.ListenPacket("udp4", "0.0.0.0:53"); err != nil {
			return err
		}
		dnsTCP, err = net.Listen("tcp4", "0.0.0.0:53")
		return err
	})
	if err != nil {
		t.Fatalf("listening in the stand-in internet: %v", err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			in.hits.Add(1)
			local := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
			fmt.Fprintf(w, "internet %s\n", strings.Split(local.String(), ":")[0])
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	done := make(chan struct{}, 4)
	go func() { _ = srv.Serve(httpLn); done <- struct{}{} }()
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := sink.ReadFrom(buf); err != nil {
				done <- struct{}{}
				return
			}
			in.hits.Add(1)
		}
	}()
	udp := &dns.Server{PacketConn: dnsUDP, Handler: dns.HandlerFunc(answer)}
	tcp := &dns.Server{Listener: dnsTCP, Handler: dns.HandlerFunc(answer)}
	for _, s := range []*dns.Server{udp, tcp} {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		go func() { _ = s.ActivateAndServe(); done <- struct{}{} }()
		<-started
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		sink.Close()
		_ = udp.ShutdownContext(ctx)
		_ = tcp.ShutdownContext(ctx)
		for range 4 {
			<-done
		}
	})
}

// answer is the stand-in's DNS server.
func answer(w dns.ResponseWriter, req *dns.Msg) {
	resp := new(dns.Msg)
	resp.SetReply(req)
	resp.Authoritative = true
	if len(req.Question) != 1 {
		resp.Rcode = dns.RcodeFormatError
		_ = w.WriteMsg(resp)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(strings.TrimSuffix(q.Name, "."))
	hdr := dns.RR_Header{Name: q.Name, Rrtype: q.Qtype, Class: dns.ClassINET, Ttl: NameTTL}
	var addr netip.Addr
	switch {
	case name == AllowedName:
		addr = Addr
	case name == OtherName:
		addr = Other
	case strings.HasSuffix(name, "."+WildDomain):
		addr = Wild
	case name == BigName && q.Qtype == dns.TypeTXT:
		for i := range 40 {
			resp.Answer = append(resp.Answer, &dns.TXT{Hdr: hdr, Txt: []string{fmt.Sprintf("%02d-%s", i, strings.Repeat("x", 200))}})
		}
	default:
		resp.Rcode = dns.RcodeNameError
	}
	if addr.IsValid() {
		switch q.Qtype {
		case dns.TypeA:
			resp.Answer = append(resp.Answer, &dns.A{Hdr: hdr, A: addr.AsSlice()})
		case dns.TypeAAAA:
			resp.Answer = append(resp.Answer, &dns.AAAA{Hdr: hdr, AAAA: net.ParseIP("2001:db8::10")})
		}
	}
	if w.RemoteAddr().Network() == "udp" {
		resp.Truncate(dns.MinMsgSize)
		if o := req.IsEdns0(); o != nil {
			resp.Truncate(int(o.UDPSize()))
		}
	}
	_ = w.WriteMsg(resp)
}

// Get fetches http://host/ (host an address or name:port) from inside the network
// namespace ns, resolving nothing itself, with a short timeout. It returns the body.
func Get(ns string, addr netip.AddrPort) (string, error) {
	var conn net.Conn
	err := netns.Do(ns, func() error {
		var err error
		conn, err = (&net.Dialer{Timeout: 3 * time.Second}).Dial("tcp4", addr.String())
		return err
	})
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(conn, "GET / HTTP/1.0\r\nHost: x\r\n\r\n"); err != nil {
		return "", err
	}
	b, err := io.ReadAll(io.LimitReader(conn, 4096))
	if err != nil {
		return "", err
	}
	s := string(b)
	if i := strings.Index(s, "\r\n\r\n"); i >= 0 {
		return s[i+4:], nil
	}
	return "", errors.New("no HTTP response")
}

// Query sends a DNS query from inside the network namespace ns to server over network
// ("udp" or "tcp") and returns the response.
func Query(ns string, server netip.AddrPort, network, name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	return Exchange(ns, server, network, m)
}

// Exchange sends m from inside the network namespace ns to server over network and
// returns the response.
func Exchange(ns string, server netip.AddrPort, network string, m *dns.Msg) (*dns.Msg, error) {
	var conn net.Conn
	err := netns.Do(ns, func() error {
		var err error
		conn, err = (&net.Dialer{Timeout: 3 * time.Second}).Dial(network+"4", server.String())
		return err
	})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	c := &dns.Client{Net: network, Timeout: 3 * time.Second, UDPSize: dns.MaxMsgSize}
	r, _, err := c.ExchangeWithConn(m, &dns.Conn{Conn: conn})
	return r, err
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
