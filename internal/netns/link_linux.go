package netns

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// sandboxLink is the sandbox-side interface name.
const sandboxLink = "eth0"

// addVeth creates the veth pair of a sandbox: host in the root namespace with address
// gw/30 and no IPv6, and eth0 in the namespace at nsPath with addr/30 and a default route
// via gw.
func addVeth(nsPath, host string, gw, addr netip.Addr, bits int) (err error) {
	nsFd, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening network namespace: %w", err)
	}
	defer unix.Close(nsFd)
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: host, Group: linkGroup},
		PeerName:      sandboxLink,
		PeerNamespace: netlink.NsFd(nsFd),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("creating veth %s: %w", host, err)
	}
	defer func() {
		if err != nil {
			_ = deleteLink(host)
		}
	}()
	// No IPv6 on the host side either: no link-local address, no neighbour discovery.
	if err := writeSysctl("net/ipv6/conf/"+host+"/disable_ipv6", "1"); err != nil {
		return err
	}
	hl, err := netlink.LinkByName(host)
	if err != nil {
		return fmt.Errorf("finding veth %s: %w", host, err)
	}
	if err := netlink.AddrAdd(hl, &netlink.Addr{IPNet: ipNet(gw, bits)}); err != nil {
		return fmt.Errorf("adding address to %s: %w", host, err)
	}
	if err := netlink.LinkSetUp(hl); err != nil {
		return fmt.Errorf("bringing up %s: %w", host, err)
	}

	h, err := netlink.NewHandleAt(vnetns.NsHandle(nsFd))
	if err != nil {
		return fmt.Errorf("opening netlink in the sandbox namespace: %w", err)
	}
	defer h.Close()
	sl, err := h.LinkByName(sandboxLink)
	if err != nil {
		return fmt.Errorf("finding %s in the sandbox namespace: %w", sandboxLink, err)
	}
	if err := h.AddrAdd(sl, &netlink.Addr{IPNet: ipNet(addr, bits)}); err != nil {
		return fmt.Errorf("adding the sandbox address: %w", err)
	}
	if err := h.LinkSetUp(sl); err != nil {
		return fmt.Errorf("bringing up the sandbox interface: %w", err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: sl.Attrs().Index, Gw: gw.AsSlice(), Scope: netlink.SCOPE_UNIVERSE}); err != nil {
		return fmt.Errorf("adding the sandbox default route: %w", err)
	}
	return nil
}

// ensureForwarderAddr puts addr/32, the DNS forwarder's address that every sandbox reaches
// through its default route, on a dummy interface called name, created if needed. Where
// the kernel has no dummy interfaces the address goes on lo instead.
func ensureForwarderAddr(name string, addr netip.Addr) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		if !isLinkNotFound(err) {
			return fmt.Errorf("finding %s: %w", name, err)
		}
		err := netlink.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: name}})
		if errors.Is(err, unix.EOPNOTSUPP) {
			name = "lo"
		} else if err != nil {
			return fmt.Errorf("creating dummy interface %s: %w", name, err)
		}
		if l, err = netlink.LinkByName(name); err != nil {
			return fmt.Errorf("finding %s: %w", name, err)
		}
	} else if _, ok := l.(*netlink.Dummy); !ok {
		return fmt.Errorf("interface %s exists and is not a dummy interface (%s)", name, l.Type())
	}
	if name != "lo" {
		_ = writeSysctl("net/ipv6/conf/"+name+"/disable_ipv6", "1")
	}
	if err := netlink.AddrReplace(l, &netlink.Addr{IPNet: ipNet(addr, 32)}); err != nil {
		return fmt.Errorf("adding %s to %s: %w", addr, name, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("bringing up %s: %w", name, err)
	}
	return nil
}

// removeForwarderAddr undoes ensureForwarderAddr.
func removeForwarderAddr(name string, addr netip.Addr) error {
	if lo, err := netlink.LinkByName("lo"); err == nil {
		if err := netlink.AddrDel(lo, &netlink.Addr{IPNet: ipNet(addr, 32)}); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("removing %s from lo: %w", addr, err)
		}
	}
	return deleteLink(name)
}

// deleteLink deletes the interface name in the root namespace; a missing one is not an
// error. Deleting one end of a veth deletes both.
func deleteLink(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		if isLinkNotFound(err) {
			return nil
		}
		return fmt.Errorf("finding %s: %w", name, err)
	}
	if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("deleting %s: %w", name, err)
	}
	return nil
}

// linksWithPrefix lists the names of root-namespace interfaces starting with prefix.
func linksWithPrefix(prefix string) ([]string, error) {
	ls, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("listing interfaces: %w", err)
	}
	var out []string
	for _, l := range ls {
		if n := l.Attrs().Name; len(n) > len(prefix) && n[:len(prefix)] == prefix {
			out = append(out, n)
		}
	}
	return out, nil
}

func isLinkNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

func ipNet(a netip.Addr, bits int) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, 32)}
}
