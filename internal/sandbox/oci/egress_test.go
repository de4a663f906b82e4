package oci

import (
	"context"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/netns"
	"github.com/sessiond/sessiond/internal/netns/netnstest"
	"github.com/sessiond/sessiond/internal/sandbox"
	"github.com/sessiond/sessiond/internal/sandbox/sandboxtest"
)

var egressSubnet = netip.MustParsePrefix("10.231.9.0/24")

// newNetwork starts a stand-in internet and a network manager resolving through it, both
// removed when the test ends.
func newNetwork(t *testing.T) (*netns.Manager, *netnstest.Internet) {
	t.Helper()
	in := netnstest.Start(t, egressSubnet)
	m, err := netns.New(netns.Config{StateDir: t.TempDir(), Subnet: egressSubnet, Table: "sessiond-ocitest",
		LinkPrefix: "sdo-", Upstreams: []netip.AddrPort{in.DNS()}})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Uninstall(context.Background()); err != nil {
			t.Errorf("Uninstall: %v", err)
		}
	})
	return m, in
}

// egressProbe runs in a sandbox and prints one line per check: "name ok" when the
// destination answered, "name blocked: error" otherwise.
const egressProbe = `
import socket, urllib.request
def get(name, url):
    try:
        body = urllib.request.urlopen(url, timeout=4).read().decode().strip()
        print(name, "ok", body)
    except Exception as e:
        print(name, "blocked:", type(e).__name__)
def dns_direct(server):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07allowed\x07example\x03com\x00\x00\x01\x00\x01"
    try:
        s.sendto(q, (server, 53))
        s.recv(512)
        print("dns-direct ok")
    except Exception as e:
        print("dns-direct blocked:", type(e).__name__)
get("allowed", "http://allowed.example.com/")
get("wild", "http://a.wild.example.com/")
get("other-name", "http://other.example.com/")
get("other-ip", "http://198.51.100.11/")
get("metadata", "http://169.254.169.254/")
get("private", "http://10.203.0.10/")
get("host", "http://198.51.100.1/")
dns_direct("198.51.100.10")
print("resolv", open("/etc/resolv.conf").read().split("nameserver ")[1].split()[0])
print("ifaces", ",".join(sorted(n for _, n in socket.if_nameindex())))
try:
    import os
    print("sysnet", ",".join(sorted(os.listdir("/sys/class/net"))))
except OSError as e:
    print("sysnet", type(e).__name__)
`

func probe(t *testing.T, rt *Runtime, id string) map[string]string {
	t.Helper()
	res, err := rt.Agent(id).Exec(context.Background(), agentapi.ExecRequest{Argv: []string{"python3", "-c", egressProbe}, TimeoutMS: 120000})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 {
		t.Fatalf("probe exited %d: %s", res.ExitCode, res.Stderr)
	}
	out := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(res.Stdout), "\n") {
		name, rest, _ := strings.Cut(l, " ")
		out[name] = rest
	}
	return out
}

// TestEgress runs real sandboxes with egress (a domain allow-list) and without, against
// the stand-in internet, then checks that destroying and reaping them leaves no network
// behind.
func TestEgress(t *testing.T) {
	img := sandboxtest.TestImage(t)
	mgr, in := newNetwork(t)
	for _, name := range Names() {
		t.Run(name, func(t *testing.T) {
			state := filepath.Join(newStateDir(t), name)
			requireRuntime(t, name, state)
			cfg := testConfig(name, state)
			cfg.Network = mgr
			rt, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			egress, err := rt.Create(ctx, sandbox.Spec{RootFS: img.RootFS, Network: sandbox.Network{
				Egress: true, AllowDomains: []string{netnstest.AllowedName, "*." + netnstest.WildDomain}}})
			if err != nil {
				t.Fatal(err)
			}
			defer rt.Destroy(ctx, egress.ID)
			closed, err := rt.Create(ctx, sandbox.Spec{RootFS: img.RootFS})
			if err != nil {
				t.Fatal(err)
			}
			defer rt.Destroy(ctx, closed.ID)

			got := probe(t, rt, egress.ID)
			want := map[string]string{
				"allowed":    "ok internet " + netnstest.Addr.String(),
				"wild":       "ok internet " + netnstest.Wild.String(),
				"resolv":     mgr.ForwarderAddr().String(),
				"other-name": "blocked:", "other-ip": "blocked:", "metadata": "blocked:",
				"private": "blocked:", "host": "blocked:", "dns-direct": "blocked:",
				"ifaces": "eth0,lo",
			}
			if name == "runc" {
				want["sysnet"] = "eth0,lo" // its own namespace's sysfs, not the host's
			}
			for k, w := range want {
				if !strings.HasPrefix(got[k], w) {
					t.Errorf("egress sandbox: %s = %q, want %q...", k, got[k], w)
				}
			}
			before := in.Hits()
			got = probe(t, rt, closed.ID)
			for _, k := range []string{"allowed", "wild", "other-ip", "metadata", "private", "host", "dns-direct"} {
				if !strings.HasPrefix(got[k], "blocked:") {
					t.Errorf("sandbox without egress: %s = %q, want blocked", k, got[k])
				}
			}
			if n := in.Hits() - before; n != 0 {
				t.Errorf("the stand-in internet saw %d requests from a sandbox without egress", n)
			}

			// A control plane that restarts reaps what it does not keep, network included.
			fresh, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			res, err := sandbox.Recover(ctx, fresh, func(i sandbox.Info) bool { return i.ID == closed.ID })
			if err != nil || len(res.Reaped) != 1 || res.Reaped[0] != egress.ID {
				t.Fatalf("Recover = %+v, %v; want %s reaped", res, err, egress.ID)
			}
			if err := rt.Destroy(ctx, closed.ID); err != nil {
				t.Fatal(err)
			}
			if l := mgr.List(ctx); len(l) != 0 {
				t.Errorf("networks left after destroying every sandbox: %v", l)
			}
			assertNoLeftovers(t, state)
		})
	}
}

func TestEgressRefused(t *testing.T) {
	img := sandboxtest.TestImage(t)
	state := filepath.Join(newStateDir(t), "runc")
	rt := requireRuntime(t, "runc", state) // no network manager configured
	ctx := context.Background()
	for _, c := range []struct {
		net  sandbox.Network
		kind errkind.Kind
	}{
		{sandbox.Network{Egress: true}, errkind.Unavailable},
		{sandbox.Network{AllowDomains: []string{"example.com"}}, errkind.Invalid},
		{sandbox.Network{Egress: true, AllowDomains: []string{"bad name"}}, errkind.Invalid},
	} {
		_, err := rt.Create(ctx, sandbox.Spec{RootFS: img.RootFS, Network: c.net})
		if !errkind.Is(err, c.kind) {
			t.Errorf("Create with %+v = %v, want %v", c.net, err, c.kind)
		}
	}
	assertNoLeftovers(t, state)
}
