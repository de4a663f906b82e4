package netns

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The firewall is one nftables table of family inet, owned by sessiond and rebuilt as a
// whole (atomically, in one netlink batch) when a Manager starts. Its shape:
//
//	set deny4        ipv4_addr, interval: the always-on deny ranges (denyRanges, the
//	                 sandbox subnet, Config.DenyCIDRs)
//	set sources      ifname . ipv4_addr: each sandbox's host-side veth and its address
//	map sandboxes    ifname : verdict, jump to the sandbox's own chain
//	chain forward    hook forward: from a sandbox veth jump egress, to one jump ingress;
//	                 where sessiond turned forwarding on, drop all other forwarding
//	chain egress     drop IPv6 and spoofed sources; accept established flows; reject
//	                 @deny4; drop DNS (53, 853) to anything; jump the sandbox's chain
//	                 through @sandboxes; drop what is left (an unknown veth)
//	chain sb-<slot>  one per sandbox: unrestricted, accept; with allow-lists, accept
//	                 @c-<slot> (its CIDRs) and @d-<slot> (addresses its allowed names
//	                 resolved to, with timeouts), reject the rest
//	chain ingress    to a sandbox: only replies (established, related)
//	chain input      hook input: from a sandbox veth only DNS to the forwarder address
//	                 and replies to connections the host made; the host itself (all its
//	                 addresses) is otherwise unreachable
//	chain nat        hook postrouting: masquerade the subnet on its way out
//
// Rules match host-side veths by name prefix, so a veth that exists before its sandbox's
// rules do is dropped (fail closed), and every sessiond veth carries linkGroup so that the
// forwarding guard leaves other sessiond instances' veths alone.
type firewall struct {
	table      *nftables.Table
	prefix     string // host-side veth name prefix
	subnet     netip.Prefix
	forwarder  netip.Addr // the DNS forwarder's address
	deny       []netip.Prefix
	guard      bool // drop forwarding that does not involve sandboxes
	maxDNSAddr uint32

	// mu serializes batches: a Conn queues messages until Flush, so two goroutines must
	// not interleave their batches.
	mu   sync.Mutex
	conn *nftables.Conn
}

// linkGroup is the interface group (ip link ... group) of every host-side sandbox veth.
const linkGroup = 0x5e55

// denyRanges are never reachable from a sandbox, whatever its policy: "this" network,
// RFC 1918, carrier-grade NAT, loopback, link-local (cloud metadata at 169.254.169.254),
// IETF protocol assignments, benchmarking, multicast, reserved and broadcast.
var denyRanges = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("240.0.0.0/4"), // includes 255.255.255.255
}

const (
	chainForward = "forward"
	chainEgress  = "egress"
	chainIngress = "ingress"
	chainInput   = "input"
	chainSbInput = "sandbox-input"
	chainNAT     = "nat"
	setDeny      = "deny4"
	setSources   = "sources"
	mapSandboxes = "sandboxes"
)

func sandboxChain(slot uint32) string { return "sb-" + strconv.FormatUint(uint64(slot), 16) }
func cidrSet(slot uint32) string      { return "c-" + strconv.FormatUint(uint64(slot), 16) }
func dnsSet(slot uint32) string       { return "d-" + strconv.FormatUint(uint64(slot), 16) }

// fwSandbox is what the firewall knows of one sandbox.
type fwSandbox struct {
	slot   uint32
	link   string     // host-side veth
	addr   netip.Addr // the sandbox's address
	policy Policy
}

func newFirewall(table, prefix string, subnet netip.Prefix, forwarder netip.Addr, deny []netip.Prefix, maxDNSAddr uint32) (*firewall, error) {
	conn, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("opening nftables: %w", err)
	}
	return &firewall{
		table:  &nftables.Table{Name: table, Family: nftables.TableFamilyINet},
		prefix: prefix, subnet: subnet, forwarder: forwarder,
		deny:       append(slices.Clone(denyRanges), append([]netip.Prefix{subnet}, deny...)...),
		maxDNSAddr: maxDNSAddr, conn: conn,
	}, nil
}

// batch runs fill and sends what it queued as one atomic transaction.
func (f *firewall) batch(fill func(b *batch) error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	b := &batch{c: f.conn, f: f}
	if err := fill(b); err != nil {
		_ = f.conn.Flush() // drop whatever was queued; nothing reaches the kernel on error
		return err
	}
	return f.conn.Flush()
}

// batch queues nftables messages on a Conn; set IDs are its own (the library's default
// allocator is a global counter without a lock).
type batch struct {
	c      *nftables.Conn
	f      *firewall
	nextID uint32
}

func (b *batch) addSet(s *nftables.Set, elems []nftables.SetElement) error {
	b.nextID++
	s.ID = b.nextID
	if err := b.c.AddSet(s, elems); err != nil {
		return fmt.Errorf("adding set %s: %w", s.Name, err)
	}
	return nil
}

func (f *firewall) chain(name string) *nftables.Chain {
	return &nftables.Chain{Name: name, Table: f.table}
}

func (f *firewall) baseChain(name string, hook *nftables.ChainHook, prio *nftables.ChainPriority, typ nftables.ChainType) *nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return &nftables.Chain{Name: name, Table: f.table, Hooknum: hook, Priority: prio, Type: typ, Policy: &accept}
}

func (f *firewall) set(name string) *nftables.Set {
	switch name {
	case setDeny:
		return &nftables.Set{Table: f.table, Name: name, KeyType: nftables.TypeIPAddr, Interval: true}
	case setSources:
		return &nftables.Set{Table: f.table, Name: name, Concatenation: true,
			KeyType: nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeIPAddr)}
	case mapSandboxes:
		return &nftables.Set{Table: f.table, Name: name, IsMap: true, KeyType: nftables.TypeIFName, DataType: nftables.TypeVerdict}
	}
	panic("netns: unknown set " + name)
}

func (f *firewall) sandboxCIDRSet(slot uint32) *nftables.Set {
	return &nftables.Set{Table: f.table, Name: cidrSet(slot), KeyType: nftables.TypeIPAddr, Interval: true}
}

func (f *firewall) sandboxDNSSet(slot uint32) *nftables.Set {
	return &nftables.Set{Table: f.table, Name: dnsSet(slot), KeyType: nftables.TypeIPAddr, HasTimeout: true, Size: f.maxDNSAddr}
}

// install replaces the table with one holding sbs (the sandboxes of the records) and the
// addresses in resolved (per slot, the DNS set elements kept from the table it replaces).
func (f *firewall) install(sbs []fwSandbox, resolved map[uint32][]nftables.SetElement) error {
	return f.batch(func(b *batch) error {
		// Adding first makes the delete succeed whether or not the table exists.
		b.c.AddTable(f.table)
		b.c.DelTable(f.table)
		b.c.AddTable(f.table)
		deny, sources, sandboxes := f.set(setDeny), f.set(setSources), f.set(mapSandboxes)
		if err := b.addSet(deny, intervalElements(f.deny)); err != nil {
			return err
		}
		if err := b.addSet(sources, nil); err != nil {
			return err
		}
		if err := b.addSet(sandboxes, nil); err != nil {
			return err
		}
		f.addBaseRules(b, deny, sources, sandboxes)
		for _, sb := range sbs {
			if err := f.addSandboxRules(b, sb, resolved[sb.slot]); err != nil {
				return err
			}
		}
		return nil
	})
}

// remove deletes the table, if it exists.
func (f *firewall) remove() error {
	return f.batch(func(b *batch) error {
		b.c.AddTable(f.table)
		b.c.DelTable(f.table)
		return nil
	})
}

// exists reports whether the table is in the kernel.
func (f *firewall) exists() (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, err := f.conn.ListTableOfFamily(f.table.Name, f.table.Family)
	if err == nil {
		return true, nil
	}
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	return false, fmt.Errorf("listing nftables table %s: %w", f.table.Name, err)
}

func (f *firewall) addBaseRules(b *batch, deny, sources, sandboxes *nftables.Set) {
	c := b.c
	forward := c.AddChain(f.baseChain(chainForward, nftables.ChainHookForward, nftables.ChainPriorityFilter, nftables.ChainTypeFilter))
	input := c.AddChain(f.baseChain(chainInput, nftables.ChainHookInput, nftables.ChainPriorityFilter, nftables.ChainTypeFilter))
	nat := c.AddChain(f.baseChain(chainNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource, nftables.ChainTypeNAT))
	egress := c.AddChain(f.chain(chainEgress))
	ingress := c.AddChain(f.chain(chainIngress))
	sbInput := c.AddChain(f.chain(chainSbInput))
	rule := func(ch *nftables.Chain, exprs ...[]expr.Any) {
		c.AddRule(&nftables.Rule{Table: f.table, Chain: ch, Exprs: slices.Concat(exprs...)})
	}

	rule(forward, ifnamePrefix(expr.MetaKeyIIFNAME, f.prefix), jump(chainEgress))
	rule(forward, ifnamePrefix(expr.MetaKeyOIFNAME, f.prefix), jump(chainIngress))
	if f.guard {
		// The host did not forward before sessiond turned forwarding on for its sandboxes:
		// it does not start routing anything else.
		rule(forward, group(expr.MetaKeyIIFGROUP, expr.CmpOpNeq), group(expr.MetaKeyOIFGROUP, expr.CmpOpNeq), verdict(expr.VerdictDrop))
	}

	rule(egress, nfproto(expr.CmpOpNeq, unix.NFPROTO_IPV4), verdict(expr.VerdictDrop))
	rule(egress, spoofed(sources), verdict(expr.VerdictDrop))
	rule(egress, ctEstablished(), verdict(expr.VerdictAccept))
	rule(egress, daddr(), lookup(deny), reject())
	for _, proto := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
		for _, port := range []uint16{53, 853} {
			rule(egress, l4proto(proto), dport(port), verdict(expr.VerdictDrop))
		}
	}
	rule(egress, []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Lookup{SourceRegister: 1, SetName: sandboxes.Name, SetID: sandboxes.ID, IsDestRegSet: true, DestRegister: 0},
	})
	rule(egress, verdict(expr.VerdictDrop))

	rule(ingress, ctEstablished(), verdict(expr.VerdictAccept))
	rule(ingress, verdict(expr.VerdictDrop))

	rule(input, ifnamePrefix(expr.MetaKeyIIFNAME, f.prefix), jump(chainSbInput))
	rule(sbInput, nfproto(expr.CmpOpNeq, unix.NFPROTO_IPV4), verdict(expr.VerdictDrop))
	rule(sbInput, spoofed(sources), verdict(expr.VerdictDrop))
	rule(sbInput, ctEstablished(), verdict(expr.VerdictAccept)) // replies to the host's own connections
	for _, proto := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
		rule(sbInput, daddrIs(f.forwarder), l4proto(proto), dport(53), verdict(expr.VerdictAccept))
	}
	rule(sbInput, reject())

	rule(nat, nfproto(expr.CmpOpEq, unix.NFPROTO_IPV4), saddrIn(f.subnet, expr.CmpOpEq), daddrIn(f.subnet, expr.CmpOpNeq), []expr.Any{&expr.Masq{}})
}

// addSandboxRules queues sb's chain, sets and map entries.
func (f *firewall) addSandboxRules(b *batch, sb fwSandbox, resolved []nftables.SetElement) error {
	c := b.c
	ch := c.AddChain(f.chain(sandboxChain(sb.slot)))
	rule := func(exprs ...[]expr.Any) {
		c.AddRule(&nftables.Rule{Table: f.table, Chain: ch, Exprs: slices.Concat(exprs...)})
	}
	if !sb.policy.Restricted() {
		rule(verdict(expr.VerdictAccept))
	} else {
		cs, ds := f.sandboxCIDRSet(sb.slot), f.sandboxDNSSet(sb.slot)
		if err := b.addSet(cs, intervalElements(sb.policy.AllowCIDRs)); err != nil {
			return err
		}
		if err := b.addSet(ds, resolved); err != nil {
			return err
		}
		rule(daddr(), lookup(cs), verdict(expr.VerdictAccept))
		rule(daddr(), lookup(ds), verdict(expr.VerdictAccept))
		rule(reject())
	}
	if err := c.SetAddElements(f.set(mapSandboxes), []nftables.SetElement{{
		Key: ifname(sb.link), VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: ch.Name},
	}}); err != nil {
		return fmt.Errorf("adding sandbox map entry: %w", err)
	}
	if err := c.SetAddElements(f.set(setSources), []nftables.SetElement{{Key: sourceKey(sb.link, sb.addr)}}); err != nil {
		return fmt.Errorf("adding sandbox source: %w", err)
	}
	return nil
}

// addSandbox installs sb's rules.
func (f *firewall) addSandbox(sb fwSandbox) error {
	return f.batch(func(b *batch) error { return f.addSandboxRules(b, sb, nil) })
}

// removeSandbox removes sb's rules, sets and map entries. It succeeds whether or not they
// exist (each is added before it is deleted, in the same transaction); only a missing
// table is left alone.
func (f *firewall) removeSandbox(sb fwSandbox) error {
	ok, err := f.exists()
	if err != nil || !ok {
		return err
	}
	return f.batch(func(b *batch) error {
		// Re-adding with a restricted policy creates every object removal deletes.
		full := sb
		full.policy = Policy{Enabled: true, AllowDomains: []string{"x"}}
		if err := f.addSandboxRules(b, full, nil); err != nil {
			return err
		}
		c := b.c
		if err := c.SetDeleteElements(f.set(mapSandboxes), []nftables.SetElement{{Key: ifname(sb.link)}}); err != nil {
			return err
		}
		if err := c.SetDeleteElements(f.set(setSources), []nftables.SetElement{{Key: sourceKey(sb.link, sb.addr)}}); err != nil {
			return err
		}
		c.DelChain(f.chain(sandboxChain(sb.slot)))
		c.DelSet(f.sandboxCIDRSet(sb.slot))
		c.DelSet(f.sandboxDNSSet(sb.slot))
		return nil
	})
}

// allowResolved lets sandbox slot reach addrs for ttl. An address already allowed gets
// the new timeout (add, delete and add again, in one transaction: adding an existing
// element does not refresh it).
func (f *firewall) allowResolved(slot uint32, addrs []netip.Addr, ttl time.Duration) error {
	if len(addrs) == 0 {
		return nil
	}
	s := f.sandboxDNSSet(slot)
	elems := make([]nftables.SetElement, 0, len(addrs))
	for _, a := range addrs {
		elems = append(elems, nftables.SetElement{Key: a.AsSlice(), Timeout: ttl})
	}
	return f.batch(func(b *batch) error {
		if err := b.c.SetAddElements(s, elems); err != nil {
			return err
		}
		if err := b.c.SetDeleteElements(s, elems); err != nil {
			return err
		}
		return b.c.SetAddElements(s, elems)
	})
}

// resolvedElements returns the live elements of every sandbox's DNS set in the current
// table, by slot, with their remaining lifetime as timeout; nothing if there is no table.
func (f *firewall) resolvedElements(slots []uint32) map[uint32][]nftables.SetElement {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[uint32][]nftables.SetElement{}
	for _, slot := range slots {
		elems, err := f.conn.GetSetElements(f.sandboxDNSSet(slot))
		if err != nil {
			continue // no table or no such set: nothing to keep
		}
		for _, e := range elems {
			if e.Expires > time.Second && len(e.Key) == 4 {
				out[slot] = append(out[slot], nftables.SetElement{Key: e.Key, Timeout: e.Expires})
			}
		}
	}
	return out
}

// ifname is the 16-byte, zero-padded form nftables compares interface names in.
func ifname(name string) []byte {
	b := make([]byte, 16)
	copy(b, name)
	return b
}

func sourceKey(link string, addr netip.Addr) []byte {
	a := addr.As4()
	return append(ifname(link), a[:]...)
}

// intervalElements turns prefixes into the elements of an interval set: the start of each
// merged range and, unless it runs to the end of the address space, the first address
// after it flagged as an interval end.
func intervalElements(ps []netip.Prefix) []nftables.SetElement {
	var elems []nftables.SetElement
	for _, r := range mergeRanges(ps) {
		elems = append(elems, nftables.SetElement{Key: binary.BigEndian.AppendUint32(nil, r[0])})
		if r[1] != 0xffffffff {
			elems = append(elems, nftables.SetElement{Key: binary.BigEndian.AppendUint32(nil, r[1]+1), IntervalEnd: true})
		}
	}
	return elems
}

// mergeRanges returns the IPv4 prefixes ps as sorted, disjoint, non-adjacent inclusive
// ranges (the kernel refuses overlapping intervals).
func mergeRanges(ps []netip.Prefix) [][2]uint32 {
	var rs [][2]uint32
	for _, p := range ps {
		p = p.Masked()
		if !p.Addr().Is4() {
			continue
		}
		a := p.Addr().As4()
		start := binary.BigEndian.Uint32(a[:])
		end := start | uint32(uint64(1)<<(32-p.Bits())-1)
		rs = append(rs, [2]uint32{start, end})
	}
	slices.SortFunc(rs, func(x, y [2]uint32) int { return int(int64(x[0]) - int64(y[0])) })
	var out [][2]uint32
	for _, r := range rs {
		if n := len(out); n > 0 && uint64(r[0]) <= uint64(out[n-1][1])+1 {
			out[n-1][1] = max(out[n-1][1], r[1])
			continue
		}
		out = append(out, r)
	}
	return out
}

// Expression builders. Each returns the expressions of one match or statement; a rule is
// their concatenation. Register 1 is the scratch register throughout.

func verdict(k expr.VerdictKind) []expr.Any { return []expr.Any{&expr.Verdict{Kind: k}} }

func jump(chain string) []expr.Any {
	return []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: chain}}
}

func reject() []expr.Any {
	return []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED}}
}

// ifnamePrefix matches an interface name starting with prefix (nft: iifname "sd-*").
func ifnamePrefix(key expr.MetaKey, prefix string) []expr.Any {
	return []expr.Any{&expr.Meta{Key: key, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(prefix)}}
}

func group(key expr.MetaKey, op expr.CmpOp) []expr.Any {
	return []expr.Any{&expr.Meta{Key: key, Register: 1}, &expr.Cmp{Op: op, Register: 1, Data: binaryutil.NativeEndian.PutUint32(linkGroup)}}
}

func nfproto(op expr.CmpOp, proto byte) []expr.Any {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1}, &expr.Cmp{Op: op, Register: 1, Data: []byte{proto}}}
}

func l4proto(proto byte) []expr.Any {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}}}
}

func dport(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
	}
}

// daddr loads the IPv4 destination (callers have matched IPv4 already).
func daddr() []expr.Any {
	return []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4}}
}

func saddr() []expr.Any {
	return []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4}}
}

func daddrIs(a netip.Addr) []expr.Any {
	return append(daddr(), &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a.AsSlice()})
}

func daddrIn(p netip.Prefix, op expr.CmpOp) []expr.Any { return append(daddr(), inPrefix(p, op)...) }
func saddrIn(p netip.Prefix, op expr.CmpOp) []expr.Any { return append(saddr(), inPrefix(p, op)...) }

func inPrefix(p netip.Prefix, op expr.CmpOp) []expr.Any {
	mask := binary.BigEndian.AppendUint32(nil, ^uint32(0)<<(32-p.Bits()))
	return []expr.Any{
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: op, Register: 1, Data: p.Masked().Addr().AsSlice()},
	}
}

func lookup(s *nftables.Set) []expr.Any {
	return []expr.Any{&expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID}}
}

// spoofed matches a packet whose source address is not the one of the sandbox behind its
// input veth (iifname . ip saddr != @sources). The interface name fills registers 8-11
// (register 1), the address the next 32-bit register.
func spoofed(sources *nftables.Set) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Payload{DestRegister: 12, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: sources.Name, SetID: sources.ID, Invert: true},
	}
}

func ctEstablished() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

// otherTables lists the inet tables, other than except, that look like a sessiond
// firewall (they have a sandbox-input chain): other Managers on this host.
func otherTables(except string) ([]string, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("opening nftables: %w", err)
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("listing nftables chains: %w", err)
	}
	var out []string
	for _, ch := range chains {
		if ch.Name == chainSbInput && ch.Table.Name != except {
			out = append(out, ch.Table.Name)
		}
	}
	return out, nil
}
