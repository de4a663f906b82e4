package netns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/netutil"
)

// forwarder is the host's DNS server for egress sandboxes. It listens on one address that
// every sandbox reaches through its default route, tells sandboxes apart by their source
// address (the firewall drops spoofed ones), answers only names the sandbox's policy
// allows, forwards those to the upstream resolvers, and before answering lets the sandbox
// reach the IPv4 addresses of the answer for a bounded time. It answers AAAA queries with
// no records (sandboxes have no IPv6 route) and never passes on authority or additional
// records, or anything outside the answer's CNAME chain.
type forwarder struct {
	cfg    forwarderConfig
	sem    chan struct{} // bounds queries in flight
	ctx    context.Context
	cancel context.CancelFunc
	udp    *dns.Server
	tcp    *dns.Server
	wg     sync.WaitGroup
}

type forwarderConfig struct {
	addr           netip.Addr
	upstreams      []netip.AddrPort
	timeout        time.Duration // one upstream exchange
	minTTL, maxTTL time.Duration // bounds of the time an answered address stays allowed
	maxInFlight    int
	maxTCPConns    int
	// sandbox returns the policy and slot of the sandbox with source address a.
	sandbox func(a netip.Addr) (slot uint32, p Policy, ok bool)
	// allow lets sandbox slot reach addrs for ttl; the answer waits for it.
	allow func(slot uint32, addrs []netip.Addr, ttl time.Duration) error
	log   *slog.Logger
}

// Bounds of the forwarder.
const (
	// maxUDPResponse is the largest answer sent over UDP whatever the client's EDNS buffer
	// says; larger answers are truncated (TC set) and the client retries over TCP.
	maxUDPResponse = 1232
	// maxCNAMEChain bounds how far an answer's CNAME chain is followed.
	maxCNAMEChain = 16
)

// startForwarder listens on cfg.addr port 53 (UDP and TCP) and serves until close.
func startForwarder(cfg forwarderConfig) (*forwarder, error) {
	ap := netip.AddrPortFrom(cfg.addr, 53)
	pc, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(ap))
	if err != nil {
		return nil, fmt.Errorf("DNS forwarder: %w", err)
	}
	ln, err := net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(ap))
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("DNS forwarder: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &forwarder{cfg: cfg, sem: make(chan struct{}, cfg.maxInFlight), ctx: ctx, cancel: cancel}
	f.udp = &dns.Server{PacketConn: pc, Handler: f, UDPSize: dns.MaxMsgSize}
	f.tcp = &dns.Server{Listener: netutil.LimitListener(ln, cfg.maxTCPConns), Handler: f, MaxTCPQueries: 128,
		IdleTimeout: func() time.Duration { return 8 * time.Second }}
	for _, s := range []*dns.Server{f.udp, f.tcp} {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			if err := s.ActivateAndServe(); err != nil {
				cfg.log.Error("DNS forwarder stopped", "err", err)
			}
		}()
		<-started
	}
	return f, nil
}

// close stops the forwarder and waits for every query in flight to end.
func (f *forwarder) close() {
	f.cancel() // ends upstream exchanges in flight
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = f.udp.ShutdownContext(ctx)
	_ = f.tcp.ShutdownContext(ctx)
	f.wg.Wait()
}

// ServeDNS implements dns.Handler.
func (f *forwarder) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	resp := f.answer(w.RemoteAddr(), req)
	if resp == nil {
		return
	}
	limit := dns.MaxMsgSize
	if w.RemoteAddr().Network() == "udp" {
		limit = dns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil {
			limit = min(max(int(opt.UDPSize()), dns.MinMsgSize), maxUDPResponse)
		}
	}
	if req.IsEdns0() != nil {
		resp.SetEdns0(uint16(min(limit, maxUDPResponse)), false)
	}
	resp.Truncate(limit)
	_ = w.WriteMsg(resp)
}

// answer returns the response to req from the client at remote (nil: no response).
func (f *forwarder) answer(remote net.Addr, req *dns.Msg) *dns.Msg {
	resp := new(dns.Msg)
	resp.SetReply(req)
	resp.RecursionAvailable = true
	fail := func(rcode int) *dns.Msg {
		resp.Rcode = rcode
		return resp
	}
	select {
	case f.sem <- struct{}{}:
		defer func() { <-f.sem }()
	default:
		return fail(dns.RcodeServerFailure) // too many queries in flight
	}
	src, ok := remoteAddr(remote)
	if !ok {
		return fail(dns.RcodeRefused)
	}
	slot, policy, ok := f.cfg.sandbox(src)
	if !ok {
		return fail(dns.RcodeRefused) // not a sandbox of ours
	}
	if req.Response || req.Opcode != dns.OpcodeQuery {
		return fail(dns.RcodeNotImplemented)
	}
	if len(req.Question) != 1 || req.Question[0].Qclass != dns.ClassINET {
		return fail(dns.RcodeFormatError)
	}
	q := req.Question[0]
	if !policy.allowsName(q.Name) {
		f.cfg.log.Debug("DNS name not allowed", "slot", slot, "name", q.Name)
		return fail(dns.RcodeNameError)
	}
	switch q.Qtype {
	case dns.TypeAAAA:
		return resp // no IPv6 route: no addresses
	case dns.TypeANY, dns.TypeAXFR, dns.TypeIXFR:
		return fail(dns.RcodeNotImplemented)
	}
	up, err := f.exchange(q)
	if err != nil {
		f.cfg.log.Debug("DNS upstream failed", "name", q.Name, "err", err)
		return fail(dns.RcodeServerFailure)
	}
	resp.Rcode = up.Rcode
	chain, addrs, ttl := followChain(q.Name, up.Answer)
	ttl = min(max(ttl, f.cfg.minTTL), f.cfg.maxTTL)
	for _, rr := range chain {
		rr.Header().Ttl = min(rr.Header().Ttl, uint32(ttl/time.Second))
	}
	resp.Answer = chain
	if policy.Restricted() {
		if err := f.cfg.allow(slot, addrs, ttl); err != nil {
			f.cfg.log.Error("allowing resolved addresses", "slot", slot, "err", err)
			return fail(dns.RcodeServerFailure)
		}
	}
	return resp
}

// exchange asks the upstream resolvers in turn, over UDP and, for a truncated answer, TCP.
func (f *forwarder) exchange(q dns.Question) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(q.Name, q.Qtype)
	m.SetEdns0(maxUDPResponse, false)
	var errs []error
	for _, u := range f.cfg.upstreams {
		for _, network := range []string{"udp", "tcp"} {
			ctx, cancel := context.WithTimeout(f.ctx, f.cfg.timeout)
			c := &dns.Client{Net: network, UDPSize: maxUDPResponse, Timeout: f.cfg.timeout}
			r, _, err := c.ExchangeContext(ctx, m, u.String())
			cancel()
			if err != nil {
				errs = append(errs, fmt.Errorf("%s %s: %w", network, u, err))
				break
			}
			if r.Truncated && network == "udp" {
				continue
			}
			if r.Rcode == dns.RcodeServerFailure || r.Rcode == dns.RcodeRefused {
				errs = append(errs, fmt.Errorf("%s %s: %s", network, u, dns.RcodeToString[r.Rcode]))
				break
			}
			return r, nil
		}
		if f.ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 0 {
		errs = append(errs, errors.New("no upstream resolver"))
	}
	return nil, errors.Join(errs...)
}

// followChain returns the records of answer on the CNAME chain from name, the IPv4
// addresses at its end, and the smallest TTL on it.
func followChain(name string, answer []dns.RR) ([]dns.RR, []netip.Addr, time.Duration) {
	var chain []dns.RR
	var addrs []netip.Addr
	ttl := uint32(1<<31 - 1)
	cur := name
	for hops := 0; hops < maxCNAMEChain; hops++ {
		next := ""
		for _, rr := range answer {
			h := rr.Header()
			if !strings.EqualFold(h.Name, cur) || h.Class != dns.ClassINET {
				continue
			}
			switch r := rr.(type) {
			case *dns.CNAME:
				if next == "" {
					next = r.Target
					chain = append(chain, rr)
					ttl = min(ttl, h.Ttl)
				}
			case *dns.A:
				if a, ok := netip.AddrFromSlice(r.A.To4()); ok {
					addrs = append(addrs, a)
					chain = append(chain, rr)
					ttl = min(ttl, h.Ttl)
				}
			default:
				if h.Rrtype != dns.TypeAAAA {
					chain = append(chain, rr) // the queried type (TXT, MX, ...)
					ttl = min(ttl, h.Ttl)
				}
			}
		}
		if next == "" {
			break
		}
		cur = next
	}
	return chain, addrs, time.Duration(ttl) * time.Second
}

func remoteAddr(a net.Addr) (netip.Addr, bool) {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.AddrPort().Addr().Unmap(), true
	case *net.TCPAddr:
		return a.AddrPort().Addr().Unmap(), true
	}
	return netip.Addr{}, false
}
