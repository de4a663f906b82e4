// Package netns gives sandboxes their network: none at all (a network namespace with only
// loopback), or egress through a veth pair and NAT on the host, filtered by an nftables
// table on the host that the sandbox cannot touch. The filter always denies the host
// itself, other sandboxes, private, shared, loopback, link-local (cloud metadata),
// multicast and reserved IPv4 ranges, all IPv6, and DNS to anything but the host's own DNS
// forwarder; per-sandbox allow-lists of CIDRs and domain names (*.example.com) restrict
// egress further, names being enforced through the forwarder, which admits an answer's
// addresses for the answer's lifetime.
//
// Addressing: the configured subnet (default 10.88.0.0/16) is carved into /30 blocks. The
// first block holds the forwarder's address (the subnet's first host address, on a dummy
// interface, or on lo where the kernel has no dummy interfaces); block n (slot n) holds the host side of sandbox n's veth (.1 of the block,
// its gateway) and the sandbox's eth0 (.2). A /16 gives 16383 sandboxes.
//
// State lives under Config.StateDir (on tmpfs, as network namespaces do not survive a
// reboot either): a record per sandbox in attachments/ and the namespaces bind-mounted in
// ns/. A Manager started after a restart rebuilds
// the firewall from the records, keeping the addresses sandboxes had resolved, and
// removes namespaces and veths no record claims.
//
// Host changes: net.ipv4.ip_forward is set to 1 (the original value is saved in
// /run/sessiond and restored by Uninstall when no other sessiond table is left); if it was 0,
// the firewall drops all forwarding that does not involve a sandbox, so the host does not
// become a router for anything else. Nothing outside the table, the dummy interface and
// the sandbox veths is touched.
//
// Only cmd/sessiond and the sandbox runtimes (internal/sandbox/oci) import this package.
package netns

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sessiond/sessiond/internal/errkind"
)

// Defaults of Config.
const (
	DefaultStateDir   = "/run/sessiond/net"
	DefaultTable      = "sessiond"
	DefaultLinkPrefix = "sd-"
	DefaultDNSMinTTL  = 30 * time.Second
	DefaultDNSMaxTTL  = 10 * time.Minute
	DefaultDNSTimeout = 5 * time.Second
	// DefaultMaxResolved bounds the addresses one sandbox's names may resolve to at once.
	DefaultMaxResolved = 4096
	// DefaultMaxDNSInFlight bounds the queries the forwarder handles at once (all
	// sandboxes); beyond it queries get SERVFAIL at once.
	DefaultMaxDNSInFlight = 256
)

// DefaultSubnet is carved into the sandboxes' /30 blocks.
var DefaultSubnet = netip.MustParsePrefix("10.88.0.0/16")

// Config configures a Manager. Zero fields take the defaults above.
type Config struct {
	// StateDir holds records and namespace mounts; it should be on a tmpfs (/run).
	StateDir string
	// Subnet is the IPv4 network sandbox addresses come from, /8 to /28. It must not be
	// used elsewhere on the host; it is always denied as a destination.
	Subnet netip.Prefix
	// Table names the nftables table (family inet) this Manager owns.
	Table string
	// LinkPrefix starts the names of the host-side veths: 1-8 characters of a-z and 0-9,
	// then '-'. The forwarder's dummy interface is named LinkPrefix without '-' plus "dns".
	LinkPrefix string
	// Upstreams are the resolvers the forwarder asks; default: the nameservers of
	// /etc/resolv.conf (port 53).
	Upstreams []netip.AddrPort
	// DenyCIDRs are further IPv4 networks no sandbox may reach whatever its policy (a
	// control plane or a metadata service on another host, say).
	DenyCIDRs []netip.Prefix
	// DNSMinTTL and DNSMaxTTL bound how long a resolved address stays reachable after
	// the answer; answers' TTLs are capped to DNSMaxTTL.
	DNSMinTTL, DNSMaxTTL time.Duration
	// DNSTimeout bounds one upstream exchange.
	DNSTimeout time.Duration
	// MaxResolved bounds the addresses a sandbox may have resolved at once.
	MaxResolved uint32
	// MaxDNSInFlight bounds the forwarder's concurrent queries.
	MaxDNSInFlight int
	Log            *slog.Logger
}

var (
	idPattern     = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,63}$`)
	prefixPattern = regexp.MustCompile(`^[a-z0-9]{1,8}-$`)
)

func (c Config) withDefaults() (Config, error) {
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if !filepath.IsAbs(c.StateDir) {
		return c, errkind.New(errkind.Invalid, "network state directory %q: want an absolute path", c.StateDir)
	}
	if !c.Subnet.IsValid() {
		c.Subnet = DefaultSubnet
	}
	if !c.Subnet.Addr().Is4() || c.Subnet.Bits() < 8 || c.Subnet.Bits() > 28 {
		return c, errkind.New(errkind.Invalid, "sandbox subnet %s: want an IPv4 prefix of /8 to /28", c.Subnet)
	}
	c.Subnet = c.Subnet.Masked()
	if c.Table == "" {
		c.Table = DefaultTable
	}
	if !idPattern.MatchString(c.Table) || len(c.Table) > 32 {
		return c, errkind.New(errkind.Invalid, "nftables table name %q: want up to 32 characters of a-z, 0-9 and '-'", c.Table)
	}
	if c.LinkPrefix == "" {
		c.LinkPrefix = DefaultLinkPrefix
	}
	if !prefixPattern.MatchString(c.LinkPrefix) {
		return c, errkind.New(errkind.Invalid, "veth name prefix %q: want 1-8 characters of a-z and 0-9, then '-'", c.LinkPrefix)
	}
	if len(c.Upstreams) == 0 {
		ups, err := resolvConfServers("/etc/resolv.conf")
		if err != nil {
			return c, errkind.Wrap(errkind.Invalid, fmt.Errorf("finding upstream DNS resolvers: %w", err))
		}
		c.Upstreams = ups
	}
	for _, u := range c.Upstreams {
		if !u.IsValid() || u.Port() == 0 {
			return c, errkind.New(errkind.Invalid, "upstream DNS resolver %q: want address:port", u.String())
		}
	}
	for _, d := range c.DenyCIDRs {
		if !d.IsValid() || !d.Addr().Is4() {
			return c, errkind.New(errkind.Invalid, "denied CIDR %q: want an IPv4 prefix", d.String())
		}
	}
	if c.DNSMinTTL <= 0 {
		c.DNSMinTTL = DefaultDNSMinTTL
	}
	if c.DNSMaxTTL <= 0 {
		c.DNSMaxTTL = DefaultDNSMaxTTL
	}
	if c.DNSMaxTTL < c.DNSMinTTL {
		return c, errkind.New(errkind.Invalid, "DNS TTL bounds: maximum %s below minimum %s", c.DNSMaxTTL, c.DNSMinTTL)
	}
	if c.DNSTimeout <= 0 {
		c.DNSTimeout = DefaultDNSTimeout
	}
	if c.MaxResolved == 0 {
		c.MaxResolved = DefaultMaxResolved
	}
	if c.MaxDNSInFlight <= 0 {
		c.MaxDNSInFlight = DefaultMaxDNSInFlight
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// resolvConfServers returns the nameservers of a resolv.conf file, port 53.
func resolvConfServers(path string) ([]netip.AddrPort, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []netip.AddrPort
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "nameserver" {
			if a, err := netip.ParseAddr(f[1]); err == nil && a.Is4() && !a.IsLoopback() {
				out = append(out, netip.AddrPortFrom(a, 53))
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no usable IPv4 nameserver in %s (a loopback resolver is not reachable from the forwarder's view: configure Upstreams)", path)
	}
	return out, nil
}

// Attachment is one sandbox's network.
type Attachment struct {
	ID     string `json:"id"`
	Policy Policy `json:"policy"`
	// Slot numbers the sandbox's /30 block (0 without egress).
	Slot uint32 `json:"slot,omitempty"`
	// Path is the bind-mounted network namespace the sandbox's runtime joins.
	Path string `json:"path"`
	// Address is the sandbox's IPv4 address and Gateway its default route (the host side
	// of its veth); both invalid without egress.
	Address netip.Addr `json:"address,omitzero"`
	Gateway netip.Addr `json:"gateway,omitzero"`
	// HostLink is the host-side veth ("" without egress).
	HostLink string `json:"hostLink,omitempty"`
	// ResolvConf is the content for the sandbox's /etc/resolv.conf: the forwarder only
	// (nil without egress).
	ResolvConf []byte    `json:"-"`
	Created    time.Time `json:"created"`
}

// Manager sets up and tears down sandbox networks on this host. One Manager at a time
// uses a state directory (a lock held from Start to Close says so). Its methods are safe
// for concurrent use.
type Manager struct {
	cfg       Config
	log       *slog.Logger
	forwarder netip.Addr

	// opMu serializes Setup, Teardown, Reap and Uninstall (namespace and link work is
	// slow; DNS lookups only need mu).
	opMu sync.Mutex

	mu sync.Mutex
	// Guarded by mu.
	started, closed bool
	lock            *os.File               // the state directory lock
	fw              *firewall              // nil before Start
	dns             *forwarder             // nil before Start
	atts            map[string]*Attachment // by ID
	byAddr          map[netip.Addr]*Attachment
}

// New returns a Manager for cfg. It has no side effects: Start sets up the host.
func New(cfg Config) (*Manager, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Manager{
		cfg: cfg, log: cfg.Log.With("component", "netns"),
		forwarder: cfg.Subnet.Addr().Next(),
		atts:      map[string]*Attachment{}, byAddr: map[netip.Addr]*Attachment{},
	}, nil
}

// ForwarderAddr is the address of the DNS forwarder that egress sandboxes use.
func (m *Manager) ForwarderAddr() netip.Addr { return m.forwarder }

func (m *Manager) nsDir() string  { return filepath.Join(m.cfg.StateDir, "ns") }
func (m *Manager) recDir() string { return filepath.Join(m.cfg.StateDir, "attachments") }
func (m *Manager) dummyLink() string {
	return strings.TrimSuffix(m.cfg.LinkPrefix, "-") + "dns"
}

// Start takes the state directory, turns IPv4 forwarding on, installs the firewall
// (rebuilding it from the records of an earlier process), removes namespaces and veths
// that no record claims, and starts the DNS forwarder. Unavailable if another process
// holds the state directory. On error nothing is left running (Close is still safe).
func (m *Manager) Start(ctx context.Context) (err error) {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	m.mu.Lock()
	if m.started || m.closed {
		m.mu.Unlock()
		return errkind.New(errkind.Invalid, "network manager already started")
	}
	m.started = true
	m.mu.Unlock()
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	for _, d := range []string{m.cfg.StateDir, m.nsDir(), m.recDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("creating network state directory: %w", err)
		}
	}
	lf, err := os.OpenFile(filepath.Join(m.cfg.StateDir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("locking network state directory: %w", err)
	}
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lf.Close()
		return errkind.Wrap(errkind.Unavailable, fmt.Errorf("network state directory %s is in use by another process: %w", m.cfg.StateDir, err))
	}
	m.mu.Lock()
	m.lock = lf
	m.mu.Unlock()

	recs, err := m.readRecords()
	if err != nil {
		return err
	}
	guard, err := enableForwarding()
	if err != nil {
		return err
	}
	fw, err := newFirewall(m.cfg.Table, m.cfg.LinkPrefix, m.cfg.Subnet, m.forwarder, m.cfg.DenyCIDRs, m.cfg.MaxResolved)
	if err != nil {
		return err
	}
	fw.guard = guard
	m.mu.Lock()
	m.fw = fw
	m.mu.Unlock()

	// Records whose namespace is gone (a reboot, or a crash in Teardown) are dropped.
	var live []*Attachment
	for _, a := range recs {
		if isNamespace(a.Path) {
			live = append(live, a)
			continue
		}
		m.log.Info("dropping network record without namespace", "sandbox", a.ID)
		if err := m.teardownLocked(a); err != nil {
			return err
		}
	}
	var fws []fwSandbox
	var slots []uint32
	for _, a := range live {
		if a.Policy.Enabled {
			fws = append(fws, m.fwSandbox(a))
			slots = append(slots, a.Slot)
		}
	}
	if err := fw.install(fws, fw.resolvedElements(slots)); err != nil {
		return fmt.Errorf("installing nftables table %s: %w", m.cfg.Table, err)
	}
	m.mu.Lock()
	for _, a := range live {
		m.addLocked(a)
	}
	m.mu.Unlock()
	if err := m.removeOrphans(); err != nil {
		return err
	}
	if err := ensureForwarderAddr(m.dummyLink(), m.forwarder); err != nil {
		return err
	}
	d, err := startForwarder(forwarderConfig{
		addr: m.forwarder, upstreams: m.cfg.Upstreams, timeout: m.cfg.DNSTimeout,
		minTTL: m.cfg.DNSMinTTL, maxTTL: m.cfg.DNSMaxTTL,
		maxInFlight: m.cfg.MaxDNSInFlight, maxTCPConns: m.cfg.MaxDNSInFlight,
		sandbox: m.sandboxByAddr, allow: fw.allowResolved, log: m.log,
	})
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.dns = d
	m.mu.Unlock()
	m.log.Info("sandbox networking started", "subnet", m.cfg.Subnet, "forwarder", m.forwarder, "sandboxes", len(live))
	return nil
}

// Close stops the DNS forwarder and releases the state directory. Sandbox networks and
// the firewall stay in place for the next Manager (sandboxes outlive the control plane);
// see Uninstall. Close is idempotent.
func (m *Manager) Close() error {
	m.mu.Lock()
	m.closed = true
	d, lock := m.dns, m.lock
	m.dns, m.lock = nil, nil
	m.mu.Unlock()
	if d != nil {
		d.close()
	}
	if lock != nil {
		lock.Close()
	}
	return nil
}

// Uninstall tears down every sandbox network, removes the firewall table and the
// forwarder's interface, restores ip_forward if no other sessiond table is left, and
// closes the Manager. For a host leaving sessiond behind, and for tests.
func (m *Manager) Uninstall(ctx context.Context) error {
	if err := m.ready(); err != nil {
		return err
	}
	_, err := m.Reap(ctx, func(string) bool { return false })
	errs := []error{err}
	m.opMu.Lock()
	defer m.opMu.Unlock()
	m.mu.Lock()
	fw := m.fw
	m.mu.Unlock()
	m.Close()
	errs = append(errs, fw.remove(), removeForwarderAddr(m.dummyLink(), m.forwarder), restoreForwarding(m.cfg.Table))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("uninstalling sandbox networking: %w", err)
	}
	return nil
}

func (m *Manager) ready() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.started || m.closed || m.dns == nil {
		return errkind.New(errkind.Unavailable, "sandbox networking is not running")
	}
	return nil
}

// Setup gives sandbox id its network according to p and returns where it is. With
// egress disabled that is a namespace with only loopback; otherwise a veth to the host,
// an address, a default route, the firewall rules of p and resolv.conf content naming the
// forwarder. Rules are in place before the veth exists, and a failure at any step fails
// Setup and leaves nothing behind. Errors: Invalid (bad id or policy), AlreadyExists,
// LimitExceeded (no free address), Unavailable (not started).
func (m *Manager) Setup(ctx context.Context, id string, p Policy) (att *Attachment, err error) {
	if !idPattern.MatchString(id) {
		return nil, errkind.New(errkind.Invalid, "sandbox ID %q: want 1-64 characters of a-z, 0-9 and '-'", id)
	}
	p, err = p.Validate()
	if err != nil {
		return nil, err
	}
	if err := m.ready(); err != nil {
		return nil, err
	}
	m.opMu.Lock()
	defer m.opMu.Unlock()
	m.mu.Lock()
	_, exists := m.atts[id]
	m.mu.Unlock()
	if exists {
		return nil, errkind.New(errkind.AlreadyExists, "sandbox %s already has a network", id)
	}
	a := &Attachment{ID: id, Policy: p, Path: filepath.Join(m.nsDir(), id), Created: time.Now().UTC()}
	if p.Enabled {
		slot, err := m.freeSlot()
		if err != nil {
			return nil, err
		}
		a.Slot = slot
		a.Gateway, a.Address = m.slotAddrs(slot)
		a.HostLink = m.cfg.LinkPrefix + strconv.FormatUint(uint64(slot), 16)
	}
	// The record goes first, so that whatever a crash leaves behind is found and reaped.
	if err := m.writeRecord(a); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			if terr := m.teardownLocked(a); terr != nil {
				m.log.Error("cleaning up failed network setup", "sandbox", id, "err", terr)
			}
		}
	}()
	if err := createNamespace(a.Path); err != nil {
		return nil, fmt.Errorf("setting up network of sandbox %s: %w", id, err)
	}
	if p.Enabled {
		if err := m.fw.addSandbox(m.fwSandbox(a)); err != nil {
			return nil, fmt.Errorf("setting up network of sandbox %s: installing firewall rules: %w", id, err)
		}
		if err := addVeth(a.Path, a.HostLink, a.Gateway, a.Address, 30); err != nil {
			return nil, fmt.Errorf("setting up network of sandbox %s: %w", id, err)
		}
	}
	m.mu.Lock()
	m.addLocked(a)
	m.mu.Unlock()
	return m.withResolvConf(a), nil
}

func (m *Manager) withResolvConf(a *Attachment) *Attachment {
	c := *a
	if a.Policy.Enabled {
		c.ResolvConf = []byte("# sessiond: the host's DNS forwarder is the only resolver a sandbox can reach\n" +
			"nameserver " + m.forwarder.String() + "\noptions ndots:0 timeout:2 attempts:2\n")
	}
	return &c
}

// Teardown removes sandbox id's network: its rules, veth, namespace and record. It is
// idempotent (an unknown id is not an error) and finishes even if ctx is cancelled.
func (m *Manager) Teardown(ctx context.Context, id string) error {
	if !idPattern.MatchString(id) {
		return nil
	}
	m.opMu.Lock()
	defer m.opMu.Unlock()
	m.mu.Lock()
	a := m.atts[id]
	m.mu.Unlock()
	if a == nil {
		// Not started yet, or unknown: a record on disk may still name it.
		rec, err := m.readRecord(filepath.Join(m.recDir(), id+".json"))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return removeNamespace(filepath.Join(m.nsDir(), id))
			}
			return err
		}
		a = rec
	}
	return m.teardownLocked(a)
}

// teardownLocked removes a's network. Preconditions: opMu held.
func (m *Manager) teardownLocked(a *Attachment) error {
	m.mu.Lock()
	if m.atts[a.ID] == a {
		delete(m.atts, a.ID)
		delete(m.byAddr, a.Address)
	}
	fw := m.fw
	m.mu.Unlock()
	var errs []error
	if a.Policy.Enabled {
		if fw != nil {
			errs = append(errs, fw.removeSandbox(m.fwSandbox(a)))
		}
		errs = append(errs, deleteLink(a.HostLink))
	}
	errs = append(errs, removeNamespace(filepath.Join(m.nsDir(), a.ID)))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("tearing down network of sandbox %s: %w", a.ID, err)
	}
	if err := os.Remove(filepath.Join(m.recDir(), a.ID+".json")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("tearing down network of sandbox %s: %w", a.ID, err)
	}
	return nil
}

// List returns the sandbox networks this Manager knows, by ID.
func (m *Manager) List(ctx context.Context) []Attachment {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Attachment, 0, len(m.atts))
	for _, a := range m.atts {
		out = append(out, *m.withResolvConf(a))
	}
	slices.SortFunc(out, func(x, y Attachment) int { return strings.Compare(x.ID, y.ID) })
	return out
}

// Reap tears down every sandbox network whose ID keep rejects (the control plane calls it
// after recovering its runtimes, with keep answering whether a runtime still has that
// sandbox) and returns the IDs it removed.
func (m *Manager) Reap(ctx context.Context, keep func(id string) bool) ([]string, error) {
	var reaped []string
	var errs []error
	for _, a := range m.List(ctx) {
		if keep(a.ID) {
			continue
		}
		if err := m.Teardown(ctx, a.ID); err != nil {
			errs = append(errs, err)
			continue
		}
		reaped = append(reaped, a.ID)
	}
	return reaped, errors.Join(errs...)
}

// addLocked registers a. Preconditions: mu held.
func (m *Manager) addLocked(a *Attachment) {
	m.atts[a.ID] = a
	if a.Address.IsValid() {
		m.byAddr[a.Address] = a
	}
}

// sandboxByAddr is the forwarder's view of the sandboxes.
func (m *Manager) sandboxByAddr(addr netip.Addr) (uint32, Policy, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	a := m.byAddr[addr]
	if a == nil {
		return 0, Policy{}, false
	}
	return a.Slot, a.Policy, true
}

func (m *Manager) fwSandbox(a *Attachment) fwSandbox {
	return fwSandbox{slot: a.Slot, link: a.HostLink, addr: a.Address, policy: a.Policy}
}

// slotAddrs returns the gateway (host side) and sandbox addresses of a slot.
func (m *Manager) slotAddrs(slot uint32) (gw, addr netip.Addr) {
	b := m.cfg.Subnet.Addr().As4()
	base := binary.BigEndian.Uint32(b[:]) + 4*slot
	return u32Addr(base + 1), u32Addr(base + 2)
}

func u32Addr(v uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// freeSlot returns the lowest slot no attachment uses. Preconditions: opMu held.
func (m *Manager) freeSlot() (uint32, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	used := map[uint32]bool{}
	for _, a := range m.atts {
		used[a.Slot] = true
	}
	n := uint32(1) << (32 - m.cfg.Subnet.Bits() - 2)
	for s := uint32(1); s < n; s++ {
		if !used[s] {
			return s, nil
		}
	}
	return 0, errkind.New(errkind.LimitExceeded, "no free sandbox address in %s (%d sandboxes with egress)", m.cfg.Subnet, n-1)
}

// removeOrphans removes namespace mounts and veths that no attachment claims.
// Preconditions: opMu held.
func (m *Manager) removeOrphans() error {
	m.mu.Lock()
	claimed := map[string]bool{}
	for _, a := range m.atts {
		claimed[a.ID] = true
		claimed["link:"+a.HostLink] = true
	}
	m.mu.Unlock()
	var errs []error
	ents, _ := os.ReadDir(m.nsDir())
	for _, e := range ents {
		if !claimed[e.Name()] {
			m.log.Info("removing orphaned network namespace", "sandbox", e.Name())
			errs = append(errs, removeNamespace(filepath.Join(m.nsDir(), e.Name())))
		}
	}
	links, err := linksWithPrefix(m.cfg.LinkPrefix)
	errs = append(errs, err)
	for _, l := range links {
		if !claimed["link:"+l] {
			m.log.Info("removing orphaned veth", "link", l)
			errs = append(errs, deleteLink(l))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("removing orphaned sandbox networks: %w", err)
	}
	return nil
}

// recordVersion versions the attachment record format; records of another version are
// torn down (by what they name) and dropped.
const recordVersion = 1

type record struct {
	Version int `json:"version"`
	Attachment
}

func (m *Manager) writeRecord(a *Attachment) error {
	b, err := json.Marshal(record{Version: recordVersion, Attachment: *a})
	if err != nil {
		return fmt.Errorf("encoding network record: %w", err)
	}
	p := filepath.Join(m.recDir(), a.ID+".json")
	if err := os.WriteFile(p+".tmp", b, 0o600); err != nil {
		return fmt.Errorf("writing network record: %w", err)
	}
	if err := os.Rename(p+".tmp", p); err != nil {
		return fmt.Errorf("writing network record: %w", err)
	}
	return nil
}

func (m *Manager) readRecord(path string) (*Attachment, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("decoding network record %s: %w", path, err)
	}
	if r.Version != recordVersion || !idPattern.MatchString(r.ID) || r.ID+".json" != filepath.Base(path) {
		return nil, fmt.Errorf("network record %s: version %d or ID %q not understood", path, r.Version, r.ID)
	}
	a := r.Attachment
	a.Path = filepath.Join(m.nsDir(), a.ID) // never trust a path from disk
	if a.Policy.Enabled {
		a.Gateway, a.Address = m.slotAddrs(a.Slot)
		a.HostLink = m.cfg.LinkPrefix + strconv.FormatUint(uint64(a.Slot), 16)
	}
	return &a, nil
}

// readRecords reads every record; unreadable ones are removed (what they named is then
// an orphan, removed by removeOrphans).
func (m *Manager) readRecords() ([]*Attachment, error) {
	ents, err := os.ReadDir(m.recDir())
	if err != nil {
		return nil, fmt.Errorf("reading network records: %w", err)
	}
	var out []*Attachment
	for _, e := range ents {
		p := filepath.Join(m.recDir(), e.Name())
		if !strings.HasSuffix(e.Name(), ".json") {
			_ = os.Remove(p) // a .tmp left by a crash
			continue
		}
		a, err := m.readRecord(p)
		if err != nil {
			m.log.Warn("dropping unreadable network record", "path", p, "err", err)
			_ = os.Remove(p)
			continue
		}
		out = append(out, a)
	}
	return out, nil
}

// forwardSysctl is the IPv4 forwarding switch.
const forwardSysctl = "net/ipv4/ip_forward"

// forwardSaved keeps the host's ip_forward value from before any sessiond Manager turned
// it on. The setting is host-wide, so the file is too, whatever the state directories.
var forwardSaved = "/run/sessiond/ip_forward.orig"

// enableForwarding turns IPv4 forwarding on and reports whether it was off before
// sessiond first turned it on (saved, so that a restart does not mistake sessiond's own
// setting for the host's).
func enableForwarding() (wasOff bool, err error) {
	if err := os.MkdirAll(filepath.Dir(forwardSaved), 0o755); err != nil {
		return false, fmt.Errorf("saving ip_forward: %w", err)
	}
	b, err := os.ReadFile(forwardSaved)
	if errors.Is(err, fs.ErrNotExist) {
		cur, rerr := readSysctl(forwardSysctl)
		if rerr != nil {
			return false, rerr
		}
		f, cerr := os.OpenFile(forwardSaved, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if cerr == nil {
			_, cerr = f.WriteString(cur)
			if err := f.Close(); cerr == nil {
				cerr = err
			}
		}
		if cerr != nil && !errors.Is(cerr, fs.ErrExist) {
			return false, fmt.Errorf("saving ip_forward: %w", cerr)
		}
		b, err = os.ReadFile(forwardSaved) // another Manager may have saved it first
	}
	if err != nil {
		return false, fmt.Errorf("reading saved ip_forward: %w", err)
	}
	if err := writeSysctl(forwardSysctl, "1"); err != nil {
		return false, err
	}
	return strings.TrimSpace(string(b)) == "0", nil
}

// restoreForwarding puts ip_forward back as sessiond found it once no sessiond table
// other than except is left.
func restoreForwarding(except string) error {
	b, err := os.ReadFile(forwardSaved)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("reading saved ip_forward: %w", err)
	}
	others, err := otherTables(except)
	if err != nil || len(others) > 0 {
		return err
	}
	if err := writeSysctl(forwardSysctl, strings.TrimSpace(string(b))); err != nil {
		return err
	}
	return os.Remove(forwardSaved)
}
