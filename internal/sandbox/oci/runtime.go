// Package oci runs sandboxes with an OCI runtime (runc, or gVisor's runsc) from
// runtime-spec bundles. It implements sandbox.Runtime: every sandbox gets a directory under
// the runtime's state directory holding its bundle, its state record, its writable storage
// (a size-limited tmpfs) and the socket directory where its agent listens.
//
// Layout of <StateDir>/<id>/:
//
//	state.json    versioned record read back by List and Attach after a restart
//	config.json   the runtime-spec configuration (the directory is the bundle)
//	rootfs/       runc only: overlay of the shared image (lower) and rw/upper
//	rw/           tmpfs of Limits.DiskBytes: upper/, work/ (runc), data/, tmp/, home/,
//	              and gVisor's overlay filestore (runsc)
//	sock/         mounted at /run/sessiond; the agent creates agent.sock here
//	resolv.conf   egress sandboxes only: mounted read-only at /etc/resolv.conf
//	sys/          runc egress sandboxes only: sysfs of their network namespace (mountSysfs)
//	runtime.log   the OCI runtime's own log (never written by sandbox code)
//
// A sandbox without egress gets a new, empty network namespace from the runtime (runc) or
// gVisor's loopback-only netstack (runsc --network=none). One with egress joins the
// namespace that netns.Manager set up for it (runsc: --network=sandbox, gVisor's netstack
// takes over that namespace's interface); the firewall stays on the host.
//
// The package imports sandbox, netns, agentapi and errkind; only cmd/sessiond constructs it.
package oci

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/netns"
	"github.com/sessiond/sessiond/internal/sandbox"
)

// flavor is what differs between the OCI runtimes sessiond drives.
type flavor struct {
	isolation string
	// userNS: runc sandboxes get a user namespace of their own (root inside is an
	// unprivileged host uid range); gVisor's sentry is the boundary for runsc.
	userNS bool
	// seccomp: apply the default-deny profile (runc). gVisor filters its own host syscalls.
	seccomp bool
	// hostOverlay: the rootfs is an overlayfs mounted by sessiond (runc); otherwise the
	// runtime overlays the shared image itself (runsc --overlay2).
	hostOverlay bool
	// hostMemory returns the host memory cgroup limit for a sandbox limited to mem bytes,
	// and the limit the agent's memory guard enforces inside (0: none).
	hostMemory func(mem int64) (host, guard int64)
	// hostPids returns the host pids cgroup limit for a sandbox limited to pids processes.
	hostPids func(pids int64) int64
	// flags renders the runtime-specific global flags for one sandbox.
	flags func(rwDir string, l sandbox.Limits, egress bool) []string
	// noIPv6Sysctl: an egress sandbox's spec says net.ipv6.conf.all.disable_ipv6=1. runsc
	// reads it to leave IPv6 out of its netstack; runc would write it, which its user
	// namespace may not do in the host-owned namespace (where netns has set it already).
	noIPv6Sysctl bool
	// cpuPeriod is the CFS period of the sandbox's CPU quota, in microseconds (0: the
	// kernel's default of 100 ms). See the runsc entry.
	cpuPeriod uint64
	// writeBurst: the runtime ignores the spec's CPU burst, so it is written to the
	// sandbox's cgroup after start.
	writeBurst bool
}

// agentPidsHeadroom is how many tasks a runc sandbox's pids cgroup allows beyond the
// user's process limit: the agent's threads and the processes it starts as root.
const agentPidsHeadroom = 64

// flavors is the table of supported OCI runtimes.
var flavors = map[string]flavor{
	"runc": {
		isolation: "namespaces", userNS: true, seccomp: true, hostOverlay: true,
		// User code is bounded by RLIMIT_NPROC (its uid's tasks); the cgroup leaves the
		// agent room above that, so that a fork bomb cannot stop the sandbox's init from
		// starting the threads it needs (the Go runtime dies when it cannot).
		hostPids: func(pids int64) int64 { return pids + agentPidsHeadroom },
		// The host kernel's memory cgroup kills the process that overdraws, inside the
		// sandbox only.
		hostMemory: func(mem int64) (int64, int64) { return mem, 0 },
		flags:      func(string, sandbox.Limits, bool) []string { return nil },
	},
	"runsc": {
		isolation: "gvisor",
		// The sentry, the gofer and systrap's stub processes are host tasks that the
		// sandbox's processes do not map to one to one: the pids limit is enforced inside
		// gVisor (RLIMIT_NPROC), and the host cgroup only bounds a runaway sentry.
		hostPids: func(pids int64) int64 { return 4*pids + 512 },
		// A host OOM kill would take the sentry, so the whole sandbox: the agent's memory
		// guard enforces the limit inside, and the host cgroup, with headroom for the
		// sentry and the guard's sampling interval, stays the hard bound.
		hostMemory:   func(mem int64) (int64, int64) { return mem + mem/4 + 256<<20, mem },
		noIPv6Sysctl: true,
		// gVisor's sentry and its systrap stubs work in short bursts on several threads,
		// which spend a 100 ms period's quota early and then wait for the next period: a
		// Jupyter `1+1` took 53 ms p50 at one core with 100 ms periods, 38 ms with 20 ms and
		// 35 ms with 10 ms (runc: 11 ms either way). The share of CPU is the same.
		cpuPeriod: 10000,
		// runsc sets quota, period and shares from the spec but not the burst.
		writeBurst: true,
		flags: func(rwDir string, l sandbox.Limits, egress bool) []string {
			network := "--network=none" // loopback only
			if egress {
				// gVisor's netstack takes over the interface of the namespace in the spec,
				// which netns.Manager set up; the host's firewall filters what leaves it.
				network = "--network=sandbox"
			}
			return []string{
				// systrap works without /dev/kvm and on nested virtualization.
				"--platform=systrap",
				// The agent creates its socket in a host directory.
				"--host-uds=create",
				network,
				// A fresh empty network namespace per gofer, instead of one shared namespace
				// kept mounted in the runtime root for ever.
				"--gofer-network-namespace=new",
				// The upper layer of the root overlay is a file in the sandbox's
				// size-limited tmpfs, so the writable layer counts against DiskBytes.
				"--overlay2=root:dir=" + rwDir + ",size=" + strconv.FormatInt(l.DiskBytes, 10),
			}
		},
	},
}

// Names lists the OCI runtimes this package can drive.
func Names() []string { return []string{"runsc", "runc"} }

// Config configures one OCI runtime.
type Config struct {
	// Name is "runc" or "runsc".
	Name string
	// Binary is the runtime executable; default: Name looked up in PATH.
	Binary string
	// StateDir holds this runtime's sandboxes; it must be on a local file system and
	// short enough for a unix socket path below it (at most 48 bytes).
	StateDir string
	// AgentBinary is the host path of the static sessiond-agent executable.
	AgentBinary string
	// KernelPreload is the host path of the kernel preload library that code-interpreter
	// sandboxes get (agent.Config.KernelPreload); default agentapi.KernelPreloadName
	// beside AgentBinary, if that file exists. Without one, kernels run without it.
	KernelPreload string
	// CgroupParent is the cgroup (in every hierarchy) under which sandboxes get theirs;
	// default DefaultCgroupParent.
	CgroupParent string
	// UIDBase is the first host uid handed to runc user namespaces (default 1<<20); each
	// sandbox gets its own range of 65536 ids above it.
	UIDBase uint32
	// Network sets up the networks of sandboxes with Spec.Network.Egress; nil refuses them
	// (Unavailable). Sandboxes without egress never use it.
	Network *netns.Manager
	Log     *slog.Logger
}

// maxStateDir keeps <StateDir>/<id>/sock/agent.sock within the 107-byte unix socket limit.
const maxStateDir = 48

// Runtime is a sandbox.Runtime backed by an OCI runtime binary.
type Runtime struct {
	cfg    Config
	fl     flavor
	binary string
	log    *slog.Logger

	mu sync.Mutex
	// clients caches one agent client per sandbox. Guarded by mu.
	clients map[string]*agentapi.Client
}

var (
	_ sandbox.Runtime  = (*Runtime)(nil)
	_ sandbox.Promoter = (*Runtime)(nil)
)

// New returns a runtime for cfg. It has no side effects; Capabilities tells whether the
// runtime can run here.
func New(cfg Config) (*Runtime, error) {
	fl, ok := flavors[cfg.Name]
	if !ok {
		return nil, errkind.New(errkind.Invalid, "unknown OCI runtime %q (known: %s)", cfg.Name, strings.Join(Names(), ", "))
	}
	if cfg.StateDir == "" || !filepath.IsAbs(cfg.StateDir) {
		return nil, errkind.New(errkind.Invalid, "%s: state directory must be an absolute path, got %q", cfg.Name, cfg.StateDir)
	}
	cfg.StateDir = filepath.Clean(cfg.StateDir)
	if len(cfg.StateDir) > maxStateDir {
		return nil, errkind.New(errkind.Invalid, "%s: state directory %q is longer than %d bytes (unix socket paths below it would not fit)", cfg.Name, cfg.StateDir, maxStateDir)
	}
	if cfg.AgentBinary == "" {
		return nil, errkind.New(errkind.Invalid, "%s: no agent binary configured", cfg.Name)
	}
	if cfg.KernelPreload == "" {
		cfg.KernelPreload = sandbox.KernelPreloadBeside(cfg.AgentBinary)
	}
	if cfg.CgroupParent == "" {
		cfg.CgroupParent = DefaultCgroupParent
	}
	if !idPattern.MatchString(cfg.CgroupParent) {
		return nil, errkind.New(errkind.Invalid, "%s: cgroup parent %q: want a-z, 0-9 and '-'", cfg.Name, cfg.CgroupParent)
	}
	if cfg.UIDBase == 0 {
		cfg.UIDBase = 1 << 20
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	bin := cfg.Binary
	if bin == "" {
		if p, err := exec.LookPath(cfg.Name); err == nil {
			bin = p
		} else {
			bin = cfg.Name
		}
	}
	return &Runtime{
		cfg: cfg, fl: fl, binary: bin,
		log:     cfg.Log.With("component", "sandbox", "runtime", cfg.Name),
		clients: map[string]*agentapi.Client{},
	}, nil
}

// Name implements sandbox.Runtime.
func (r *Runtime) Name() string { return r.cfg.Name }

// Capabilities implements sandbox.Runtime.
func (r *Runtime) Capabilities() sandbox.Capabilities {
	c := sandbox.Capabilities{Isolation: r.fl.isolation, UserNamespace: r.fl.userNS, Seccomp: r.fl.seccomp}
	if _, err := exec.LookPath(r.binary); err != nil {
		c.Reason = fmt.Sprintf("%s not found: %v", r.binary, err)
		return c
	}
	if fi, err := os.Stat(r.cfg.AgentBinary); err != nil || fi.IsDir() {
		c.Reason = fmt.Sprintf("agent binary %s not usable: %v", r.cfg.AgentBinary, err)
		return c
	}
	if os.Geteuid() != 0 {
		c.Reason = "sessiond must run as root to create sandboxes"
		return c
	}
	c.Available = true
	return c
}

var (
	idPattern     = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,39}$`)
	kernelPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)
)

// newID returns a fresh sandbox ID.
func newID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "sb-" + hex.EncodeToString(b[:])
}

func (r *Runtime) dir(id string) string { return filepath.Join(r.cfg.StateDir, id) }

func (r *Runtime) socketPath(id string) string {
	return filepath.Join(r.dir(id), "sock", agentapi.SocketName)
}

// cli returns the runtime CLI for calls about sandbox dir (its log goes there).
func (r *Runtime) cli(extra ...string) *cli {
	g := []string{"--root", filepath.Join(r.cfg.StateDir, ".runtime")}
	return &cli{binary: r.binary, global: append(g, extra...)}
}

func validateSpec(s sandbox.Spec) error {
	if s.ID != "" && !idPattern.MatchString(s.ID) {
		return errkind.New(errkind.Invalid, "sandbox ID %q: want 1-40 characters of a-z, 0-9 and '-', starting with a letter or digit", s.ID)
	}
	if s.RootFS == "" || !filepath.IsAbs(s.RootFS) {
		return errkind.New(errkind.Invalid, "root filesystem must be an absolute path, got %q", s.RootFS)
	}
	if fi, err := os.Stat(s.RootFS); err != nil || !fi.IsDir() {
		return errkind.New(errkind.Invalid, "root filesystem %s is not a directory", s.RootFS)
	}
	l := s.Limits
	switch {
	case l.MemoryBytes < 0 || (l.MemoryBytes > 0 && l.MemoryBytes < 32<<20):
		return errkind.New(errkind.Invalid, "memory limit %d: want at least 32 MiB", l.MemoryBytes)
	case l.CPUMillis < 0 || (l.CPUMillis > 0 && l.CPUMillis < 10):
		return errkind.New(errkind.Invalid, "CPU limit %d millicores: want at least 10", l.CPUMillis)
	case l.Pids < 0 || (l.Pids > 0 && l.Pids < 8):
		return errkind.New(errkind.Invalid, "process limit %d: want at least 8", l.Pids)
	case l.DiskBytes < 0 || (l.DiskBytes > 0 && l.DiskBytes < 1<<20):
		return errkind.New(errkind.Invalid, "disk limit %d: want at least 1 MiB", l.DiskBytes)
	case l.OpenFiles > 0 && l.OpenFiles < 64:
		return errkind.New(errkind.Invalid, "open files limit %d: want at least 64", l.OpenFiles)
	}
	if u := s.User; u != nil && (u.UID < 0 || u.GID < 0 || u.UID >= userNSSize || u.GID >= userNSSize) {
		return errkind.New(errkind.Invalid, "user %d:%d: want ids from 0 to %d (a sandbox maps %d ids)", u.UID, u.GID, userNSSize-1, userNSSize)
	}
	if s.Kernel != "" && !kernelPattern.MatchString(s.Kernel) {
		return errkind.New(errkind.Invalid, "kernel name %q: want letters, digits, '.', '_' and '-'", s.Kernel)
	}
	for _, e := range s.Env {
		if !strings.Contains(e, "=") || strings.ContainsRune(e, 0) {
			return errkind.New(errkind.Invalid, "environment entry %q: want KEY=VALUE", e)
		}
	}
	_, err := netPolicy(s.Network).Validate()
	return err
}

// netPolicy is the netns policy of a sandbox's network.
func netPolicy(n sandbox.Network) netns.Policy {
	return netns.Policy{Enabled: n.Egress, AllowCIDRs: n.AllowCIDRs, AllowDomains: n.AllowDomains}
}

// Create implements sandbox.Runtime.
func (r *Runtime) Create(ctx context.Context, spec sandbox.Spec) (info sandbox.Info, err error) {
	if err := validateSpec(spec); err != nil {
		return sandbox.Info{}, err
	}
	if c := r.Capabilities(); !c.Available {
		return sandbox.Info{}, errkind.New(errkind.Unavailable, "runtime %s unavailable: %s", r.cfg.Name, c.Reason)
	}
	if spec.Network.Egress && r.cfg.Network == nil {
		return sandbox.Info{}, errkind.New(errkind.Unavailable, "runtime %s: egress networking is not configured", r.cfg.Name)
	}
	id := spec.ID
	if id == "" {
		id = newID()
	}
	// gVisor refuses mount paths through symlinks, and the record should name the tree
	// itself: resolve a data directory reached through a link.
	if real, err := filepath.EvalSymlinks(spec.RootFS); err == nil {
		spec.RootFS = real
	}
	timeout := spec.StartTimeout
	if timeout <= 0 {
		timeout = sandbox.DefaultStartTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	limits := spec.Limits.WithDefaults()

	if err := os.MkdirAll(r.cfg.StateDir, 0o711); err != nil {
		return sandbox.Info{}, fmt.Errorf("creating state directory: %w", err)
	}
	dir := r.dir(id)
	if err := os.Mkdir(dir, 0o711); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return sandbox.Info{}, errkind.New(errkind.AlreadyExists, "sandbox %s already exists", id)
		}
		return sandbox.Info{}, fmt.Errorf("creating sandbox directory: %w", err)
	}
	defer func() {
		if err != nil {
			if derr := r.Destroy(context.WithoutCancel(ctx), id); derr != nil {
				r.log.Error("cleaning up failed create", "sandbox", id, "err", derr)
			}
		}
	}()

	rec := record{ID: id, Runtime: r.cfg.Name, Image: spec.Image, RootFS: spec.RootFS,
		State: sandbox.StateCreating, Created: start.UTC(), Labels: spec.Labels, Limits: limits}
	unlock := func() {}
	if r.fl.userNS {
		base, u, err := r.allocUIDs(id)
		if err != nil {
			return sandbox.Info{}, err
		}
		rec.UIDBase, unlock = base, u
	}
	err = writeRecord(dir, rec)
	unlock()
	if err != nil {
		return sandbox.Info{}, err
	}
	// Only the sandbox's root (for runc's mounts inside the user namespace) may traverse
	// the sandbox directory; host users may not see session files.
	if err := os.Chown(dir, 0, int(rec.UIDBase)); err != nil {
		return sandbox.Info{}, fmt.Errorf("setting owner of sandbox directory: %w", err)
	}
	if err := os.Chmod(dir, 0o710); err != nil {
		return sandbox.Info{}, fmt.Errorf("setting mode of sandbox directory: %w", err)
	}
	// The network comes before the bundle, which names its namespace; Destroy (above, on
	// failure) tears it down again.
	var att *netns.Attachment
	if spec.Network.Egress {
		if att, err = r.cfg.Network.Setup(ctx, id, netPolicy(spec.Network)); err != nil {
			return sandbox.Info{}, fmt.Errorf("preparing sandbox %s: %w", id, err)
		}
		if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), att.ResolvConf, 0o644); err != nil {
			return sandbox.Info{}, fmt.Errorf("preparing sandbox %s: writing resolv.conf: %w", id, err)
		}
	}
	if err := r.prepare(dir, spec, rec, att); err != nil {
		return sandbox.Info{}, fmt.Errorf("preparing sandbox %s: %w", id, err)
	}
	pidFile := filepath.Join(dir, "pid")
	c := r.cli(append([]string{"--log", filepath.Join(dir, "runtime.log")}, r.fl.flags(filepath.Join(dir, "rw"), limits, att != nil)...)...)
	if err := c.runDetached(ctx, id, dir, pidFile); err != nil {
		return sandbox.Info{}, fmt.Errorf("starting sandbox %s: %w%s", id, err, r.logTail(dir))
	}
	if r.fl.writeBurst {
		if _, burst := cpuBandwidth(limits.CPUMillis, r.fl.cpuPeriod); burst > 0 {
			if err := setCPUBurst(r.cfg.CgroupParent, id, burst); err != nil {
				return sandbox.Info{}, err
			}
		}
	}
	if err := r.waitHealthy(ctx, id); err != nil {
		return sandbox.Info{}, fmt.Errorf("waiting for the agent of sandbox %s: %w%s", id, err, r.logTail(dir))
	}
	if b, err := os.ReadFile(pidFile); err == nil {
		rec.PID, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	rec.State = sandbox.StateRunning
	if err := writeRecord(dir, rec); err != nil {
		return sandbox.Info{}, err
	}
	r.log.Debug("sandbox created", "sandbox", id, "duration", time.Since(start))
	return rec.info(), nil
}

// prepare builds the sandbox's storage and bundle in dir; att is its egress network (nil:
// none).
func (r *Runtime) prepare(dir string, spec sandbox.Spec, rec record, att *netns.Attachment) error {
	root := rec.UIDBase // host uid of root inside the sandbox (0 without a user namespace)
	user := root + agentapi.UserUID
	rw := filepath.Join(dir, "rw")
	if err := os.Mkdir(rw, 0o711); err != nil {
		return fmt.Errorf("creating writable storage: %w", err)
	}
	if err := mountTmpfs(rw, rec.Limits.DiskBytes, 0, root); err != nil {
		return err
	}
	for _, d := range []struct {
		name     string
		mode     os.FileMode
		uid, gid uint32
	}{
		{"upper", 0o755, root, root}, {"work", 0o700, 0, 0},
		{"data", 0o755, user, user}, {"home", 0o755, user, user}, {"tmp", 0o1777, root, root},
	} {
		p := filepath.Join(rw, d.name)
		if err := os.Mkdir(p, d.mode); err != nil {
			return fmt.Errorf("creating %s: %w", d.name, err)
		}
		if err := os.Chmod(p, d.mode); err != nil { // Mkdir applies the umask
			return fmt.Errorf("setting mode of %s: %w", d.name, err)
		}
		if err := os.Chown(p, int(d.uid), int(d.gid)); err != nil {
			return fmt.Errorf("setting owner of %s: %w", d.name, err)
		}
	}
	if err := seedHome(spec.RootFS, filepath.Join(rw, "home"), int(user), int(user)); err != nil {
		return err
	}
	sock := filepath.Join(dir, "sock")
	if err := os.Mkdir(sock, 0o700); err != nil {
		return fmt.Errorf("creating socket directory: %w", err)
	}
	if err := os.Chown(sock, int(root), int(root)); err != nil {
		return fmt.Errorf("setting owner of socket directory: %w", err)
	}
	var preload string // the kernel preload, for code-interpreter sandboxes
	if spec.Kernel != "" {
		preload = r.cfg.KernelPreload
	}
	rootPath, rootRO := spec.RootFS, false
	if r.fl.hostOverlay {
		rootPath = filepath.Join(dir, "rootfs")
		if err := os.Mkdir(rootPath, 0o755); err != nil {
			return fmt.Errorf("creating rootfs mount point: %w", err)
		}
		if err := mountOverlay(spec.RootFS, filepath.Join(rw, "upper"), filepath.Join(rw, "work"), rootPath); err != nil {
			return err
		}
		// Root inside a user namespace does not own the image's directories, so the
		// runtime could not create mount points in them: make them here, as host root.
		// They land in the sandbox's own upper layer.
		if err := makeMountPoints(rootPath, att != nil, preload != ""); err != nil {
			return err
		}
	}
	hostMem, guard := r.fl.hostMemory(rec.Limits.MemoryBytes)
	var err error
	p := bundleParams{
		id: rec.ID, spec: spec, limits: rec.Limits, rootPath: rootPath, rootRO: rootRO,
		rwDir: rw, sockDir: sock, agentBin: r.cfg.AgentBinary, preload: preload,
		userNS: r.fl.userNS, uidBase: rec.UIDBase, seccomp: r.fl.seccomp, hostPids: r.fl.hostPids(rec.Limits.Pids), memGuard: guard, hostMemory: hostMem, cgroup: "/" + r.cfg.CgroupParent + "/" + rec.ID,
		cpuPeriod: r.fl.cpuPeriod,
	}
	if att != nil {
		p.netnsPath, p.resolvConf, p.noIPv6Sysctl = att.Path, filepath.Join(dir, "resolv.conf"), r.fl.noIPv6Sysctl
		if r.fl.userNS {
			if p.sysfs, err = mountSysfs(dir, att.Path); err != nil {
				return err
			}
		}
	}
	return writeBundle(dir, buildSpec(p))
}

// mountSysfs mounts a read-only sysfs at dir/sys from inside the network namespace at
// nsPath and returns its path. A sandbox in a user namespace of its own may not mount
// sysfs itself in a network namespace the host owns (the kernel wants CAP_SYS_ADMIN over
// the namespace's owner), but it may bind this one, which shows the same as its own
// would: the devices of its namespace (lo, eth0), not the host's.
func mountSysfs(dir, nsPath string) (string, error) {
	target := filepath.Join(dir, "sys")
	if err := os.Mkdir(target, 0o755); err != nil {
		return "", fmt.Errorf("creating sysfs mount point: %w", err)
	}
	err := netns.Do(nsPath, func() error {
		return unix.Mount("sysfs", target, "sysfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
	})
	if err != nil {
		return "", fmt.Errorf("mounting sysfs for the sandbox: %w", err)
	}
	return target, nil
}

// makeMountPoints creates the mount points of sessiond's own mounts below rootfs, through
// an os.Root: the image may hold symlinks (an "mnt -> /etc"), which must never lead this
// host-root code out of the sandbox's tree. With resolvConf, /etc/resolv.conf too, unless
// the image has one (a file or a link, which runc resolves inside the rootfs); with
// preload, the kernel preload's.
func makeMountPoints(rootfs string, resolvConf, preload bool) error {
	root, err := os.OpenRoot(rootfs)
	if err != nil {
		return fmt.Errorf("opening rootfs: %w", err)
	}
	defer root.Close()
	for _, d := range []string{agentapi.DataDir, "/tmp", homeDir, agentapi.SocketDir, filepath.Dir(agentapi.AgentPath)} {
		if err := root.MkdirAll(strings.TrimPrefix(d, "/"), 0o755); err != nil {
			return fmt.Errorf("creating mount point %s: %w", d, err)
		}
	}
	files := []string{agentapi.AgentPath}
	if preload {
		files = append(files, agentapi.KernelPreloadPath)
	}
	if resolvConf {
		if _, err := root.Lstat("etc/resolv.conf"); err != nil {
			files = append(files, "/etc/resolv.conf")
		}
	}
	for _, name := range files {
		if err := root.MkdirAll(filepath.Dir(strings.TrimPrefix(name, "/")), 0o755); err != nil {
			return fmt.Errorf("creating mount point %s: %w", name, err)
		}
		f, err := root.OpenFile(strings.TrimPrefix(name, "/"), os.O_CREATE|os.O_RDONLY, 0o755)
		if err != nil {
			return fmt.Errorf("creating mount point %s: %w", name, err)
		}
		f.Close()
	}
	return nil
}

// waitHealthy polls the agent until it answers or ctx ends.
func (r *Runtime) waitHealthy(ctx context.Context, id string) error {
	sock := r.socketPath(id)
	c := r.Agent(id)
	delay := 500 * time.Microsecond
	var lastErr error
	for {
		if _, err := os.Stat(sock); err == nil {
			hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_, err := c.Health(hctx)
			cancel()
			if err == nil {
				return nil
			}
			lastErr = err
		}
		select {
		case <-ctx.Done():
			if lastErr == nil {
				lastErr = errors.New("agent socket never appeared")
			}
			return errkind.Wrap(errkind.Timeout, fmt.Errorf("%w: %v", ctx.Err(), lastErr))
		case <-time.After(delay):
		}
		if delay < 5*time.Millisecond {
			delay *= 2
		}
	}
}

// logTail returns the end of the runtime's log for an error message.
func (r *Runtime) logTail(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, "runtime.log"))
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 1500 {
		b = b[len(b)-1500:]
	}
	return "; runtime log: " + strings.TrimSpace(string(b))
}

// Attach implements sandbox.Runtime.
func (r *Runtime) Attach(ctx context.Context, id string) (sandbox.Info, error) {
	if !idPattern.MatchString(id) {
		return sandbox.Info{}, errkind.New(errkind.NotFound, "no sandbox %q", id)
	}
	rec, err := readRecord(r.dir(id))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return sandbox.Info{}, errkind.New(errkind.NotFound, "no sandbox %q", id)
		}
		return sandbox.Info{}, errkind.Wrap(errkind.Unavailable, fmt.Errorf("attaching sandbox %s: %w", id, err))
	}
	if rec.State != sandbox.StateRunning {
		return sandbox.Info{}, errkind.Wrap(errkind.Unavailable, fmt.Errorf("attaching sandbox %s: recorded state %s", id, rec.State))
	}
	st, err := r.cli().state(ctx, id)
	if err != nil {
		return sandbox.Info{}, errkind.Wrap(errkind.Unavailable, fmt.Errorf("attaching sandbox %s: %w", id, err))
	}
	if st.Status != "running" {
		return sandbox.Info{}, errkind.Wrap(errkind.Unavailable, fmt.Errorf("attaching sandbox %s: runtime status %q", id, st.Status))
	}
	hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := r.Agent(id).Health(hctx); err != nil {
		return sandbox.Info{}, errkind.Wrap(errkind.Unavailable, fmt.Errorf("attaching sandbox %s: %w", id, err))
	}
	return rec.info(), nil
}

// List implements sandbox.Runtime.
func (r *Runtime) List(ctx context.Context) ([]sandbox.Info, error) {
	ents, err := os.ReadDir(r.cfg.StateDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("listing sandboxes: %w", err)
	}
	seen := map[string]bool{}
	var out []sandbox.Info
	for _, e := range ents {
		if !e.IsDir() || !idPattern.MatchString(e.Name()) {
			continue
		}
		seen[e.Name()] = true
		rec, err := readRecord(r.dir(e.Name()))
		if err != nil {
			out = append(out, sandbox.Info{ID: e.Name(), Runtime: r.cfg.Name, State: sandbox.StateUnknown})
			continue
		}
		out = append(out, rec.info())
	}
	// Containers the runtime knows without a directory of ours (a crash between removing
	// the directory and the runtime's state) are listed so that they can be reaped.
	if _, err := os.Stat(filepath.Join(r.cfg.StateDir, ".runtime")); err == nil {
		ids, err := r.cli().list(ctx)
		if err != nil {
			return nil, fmt.Errorf("listing %s containers: %w", r.cfg.Name, err)
		}
		for _, id := range ids {
			if !seen[id] && idPattern.MatchString(id) {
				out = append(out, sandbox.Info{ID: id, Runtime: r.cfg.Name, State: sandbox.StateUnknown})
			}
		}
	}
	return out, nil
}

// Destroy implements sandbox.Runtime.
func (r *Runtime) Destroy(ctx context.Context, id string) error {
	if !idPattern.MatchString(id) {
		return nil // no sandbox can have this ID
	}
	// Cleanup runs to the end even if the caller gives up.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 60*time.Second)
	defer cancel()
	dir := r.dir(id)
	if rec, err := readRecord(dir); err == nil && rec.State != sandbox.StateDestroying {
		rec.State = sandbox.StateDestroying
		_ = writeRecord(dir, rec) // best effort: Destroy proceeds from any state
	}
	r.mu.Lock()
	if c := r.clients[id]; c != nil {
		c.Close()
		delete(r.clients, id)
	}
	r.mu.Unlock()

	var errs []error
	if err := r.cli().deleteForce(ctx, id); err != nil {
		errs = append(errs, err)
	}
	// Safety nets behind the runtime's own delete: processes in the sandbox's cgroups, and
	// runtime helpers (gVisor's sentry and gofer) whose command line names the bundle.
	killBundleProcesses(dir)
	if err := removeCgroups(r.cfg.CgroupParent, id, time.Now().Add(10*time.Second)); err != nil {
		errs = append(errs, err)
	}
	// The network goes once nothing runs in it; idempotent, and a no-op for sandboxes
	// without egress.
	if r.cfg.Network != nil {
		if err := r.cfg.Network.Teardown(ctx, id); err != nil {
			errs = append(errs, err)
		}
	}
	if err := unmount(filepath.Join(dir, "rootfs")); err != nil {
		errs = append(errs, err)
	}
	if err := unmount(filepath.Join(dir, "sys")); err != nil {
		errs = append(errs, err)
	}
	if err := unmount(filepath.Join(dir, "rw")); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("removing sandbox directory: %w", err))
		}
	}
	r.mu.Lock()
	delete(r.clients, id) // in case Agent cached it again while the sandbox went away
	r.mu.Unlock()
	if len(errs) > 0 {
		return fmt.Errorf("destroying sandbox %s: %w", id, errors.Join(errs...))
	}
	return nil
}

// killBundleProcesses kills host processes whose command line mentions the bundle
// directory: gVisor's sandbox and gofer processes are started with it.
func killBundleProcesses(dir string) {
	for _, pid := range bundleProcesses(dir) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

func containsArg(cmdline, needle []byte) bool {
	s := string(cmdline)
	n := string(needle)
	return strings.Contains(s, "\x00"+n) || strings.HasPrefix(s, n) || strings.Contains(s, "="+n)
}

// Stats implements sandbox.Runtime.
func (r *Runtime) Stats(ctx context.Context, id string) (sandbox.Stats, error) {
	if !idPattern.MatchString(id) {
		return sandbox.Stats{}, errkind.New(errkind.NotFound, "no sandbox %q", id)
	}
	if _, err := os.Stat(r.dir(id)); err != nil {
		return sandbox.Stats{}, errkind.New(errkind.NotFound, "no sandbox %q", id)
	}
	pids := map[int]bool{}
	for _, p := range cgroupPids(r.cfg.CgroupParent, id) {
		pids[p] = true
	}
	for _, p := range bundleProcesses(r.dir(id)) {
		pids[p] = true
	}
	st := sandbox.Stats{MemoryBytes: cgroupMemory(r.cfg.CgroupParent, id), CPUTime: cgroupCPU(r.cfg.CgroupParent, id), Processes: len(pids)}
	for p := range pids {
		st.PSSBytes += pss(p)
	}
	return st, nil
}

// bundleProcesses lists host pids, other than this process's, whose command line
// mentions dir.
func bundleProcesses(dir string) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	needle := []byte(dir + "\x00")
	self := os.Getpid()
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		if b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline"); err == nil && containsArg(b, needle) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// Promote implements sandbox.Promoter.
func (r *Runtime) Promote(id string) error {
	if !idPattern.MatchString(id) {
		return errkind.New(errkind.NotFound, "no sandbox %q", id)
	}
	if err := setCPUShares(r.cfg.CgroupParent, id, normalShares); err != nil {
		return errkind.Wrap(errkind.NotFound, fmt.Errorf("promoting sandbox %s: %w", id, err))
	}
	return nil
}

// Agent implements sandbox.Runtime. Clients of sandboxes that exist are cached (they keep
// connections open); for any other ID a throw-away client is returned, so that late calls
// after Destroy do not leak cache entries.
func (r *Runtime) Agent(id string) *agentapi.Client {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.clients[id]; c != nil {
		return c
	}
	c := agentapi.NewClient(r.socketPath(id))
	if _, err := os.Stat(r.dir(id)); err == nil {
		r.clients[id] = c
	}
	return c
}

// allocUIDs reserves a user-namespace id range for sandbox id and returns its first host
// uid and a function to call once the sandbox's record (which claims the range) is
// written. Every record on disk is read under a lock shared by all processes using this
// state directory (the server and the CLI), so that no two sandboxes share host uids.
func (r *Runtime) allocUIDs(id string) (base uint32, unlock func(), err error) {
	lf, err := os.OpenFile(filepath.Join(r.cfg.StateDir, ".uids.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return 0, nil, fmt.Errorf("allocating user namespace ids: %w", err)
	}
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX); err != nil {
		lf.Close()
		return 0, nil, fmt.Errorf("allocating user namespace ids: %w", err)
	}
	unlock = func() { lf.Close() } // closing releases the lock
	used := map[uint32]bool{}
	ents, _ := os.ReadDir(r.cfg.StateDir)
	for _, e := range ents {
		if rec, err := readRecord(r.dir(e.Name())); err == nil && rec.UIDBase >= r.cfg.UIDBase {
			used[(rec.UIDBase-r.cfg.UIDBase)/userNSSize] = true
		}
	}
	maxSlots := (uint32(1<<31) - r.cfg.UIDBase) / userNSSize
	for slot := uint32(0); slot < maxSlots; slot++ {
		if !used[slot] {
			return r.cfg.UIDBase + slot*userNSSize, unlock, nil
		}
	}
	unlock()
	return 0, nil, errkind.New(errkind.LimitExceeded, "no free user namespace id range for sandbox %s", id)
}
