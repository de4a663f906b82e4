package oci

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/sandbox"
)

// userNSSize is the number of host ids mapped into a runc sandbox's user namespace.
const userNSSize = 65536

// agentCaps are the only capabilities the agent (the sandbox's init, root inside) keeps:
// enough to switch to the unprivileged user, signal and reap what it started, hand files to
// the user and bring up loopback in its own network namespace. User code runs as an
// unprivileged uid with no capabilities at all (no ambient set, no_new_privs).
var agentCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_KILL",
	"CAP_SETGID", "CAP_SETUID", "CAP_NET_ADMIN",
}

// maskedPaths hide kernel information and interfaces from the sandbox.
var maskedPaths = []string{
	"/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
	"/proc/latency_stats", "/proc/sched_debug", "/proc/scsi", "/proc/timer_list",
	"/proc/timer_stats", "/sys/firmware", "/sys/devices/virtual/powercap", "/sys/kernel/debug",
}

// readonlyPaths are kernel interfaces the sandbox may read but never write.
var readonlyPaths = []string{
	"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
}

// bundleParams is everything a runtime-spec config is built from.
type bundleParams struct {
	id       string
	spec     sandbox.Spec
	limits   sandbox.Limits
	rootPath string // the rootfs runc or runsc is given
	rootRO   bool
	rwDir    string // host dir holding data/, tmp/, home/
	sockDir  string // host dir mounted at agentapi.SocketDir
	agentBin string
	preload  string // host path of the kernel preload; "" for none
	userNS   bool
	uidBase  uint32
	seccomp  bool
	cgroup   string
	// hostPids is the pids cgroup limit; see flavor.hostPids.
	hostPids int64
	// hostMemory is the memory cgroup limit and memGuard the agent's (flavor.hostMemory).
	hostMemory, memGuard int64
	// netnsPath, for an egress sandbox, is the network namespace to join and resolvConf
	// the host file mounted at /etc/resolv.conf; see flavor.noIPv6Sysctl.
	netnsPath, resolvConf string
	noIPv6Sysctl          bool
	// cpuPeriod is the CFS period in microseconds (flavor.cpuPeriod; 0: 100 ms).
	cpuPeriod uint64
	// sysfs, if set, is a host mount of sysfs made inside the sandbox's network namespace,
	// bound at /sys instead of a new sysfs (see Runtime.mountSysfs).
	sysfs string
}

// buildSpec returns the runtime-spec configuration of a sandbox.
func buildSpec(p bundleParams) *specs.Spec {
	args := []string{agentapi.AgentPath,
		"-socket", agentapi.SocketDir + "/" + agentapi.SocketName,
		"-data-dir", agentapi.DataDir,
		"-uid", strconv.Itoa(agentapi.UserUID), "-gid", strconv.Itoa(agentapi.UserGID),
		"-home", homeDir}
	if p.memGuard > 0 {
		args = append(args, "-memory-limit", strconv.FormatInt(p.memGuard, 10))
	}
	if p.limits.CPUMillis > 0 {
		args = append(args, "-cpus", strconv.FormatInt((p.limits.CPUMillis+999)/1000, 10))
	}
	if p.spec.Kernel != "" {
		args = append(args, "-kernel", p.spec.Kernel)
		if p.preload != "" {
			args = append(args, "-kernel-preload", agentapi.KernelPreloadPath)
		}
	}
	if p.spec.WorkingDir != "" {
		args = append(args, "-workdir", p.spec.WorkingDir)
	}
	if u := p.spec.User; u != nil {
		args = append(args, "-main-user", strconv.Itoa(u.UID)+":"+strconv.Itoa(u.GID))
	}
	if len(p.spec.Command) > 0 {
		args = append(args, "--")
		args = append(args, p.spec.Command...)
	}
	env := []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=" + homeDir,
		"LANG=C.UTF-8",
	}
	// The spec's entries replace the defaults of the same name: a process sees only the
	// first of duplicate names (Go's runtime drops the others), so an image's PATH must
	// not follow the default one.
	for _, kv := range p.spec.Env {
		k, _, _ := strings.Cut(kv, "=")
		if i := slices.IndexFunc(env, func(e string) bool { return strings.HasPrefix(e, k+"=") }); i >= 0 {
			env[i] = kv
			continue
		}
		env = append(env, kv)
	}
	nofile := p.limits.OpenFiles
	s := &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{
			User: specs.User{UID: 0, GID: 0},
			Args: args,
			Env:  env,
			Cwd:  "/",
			Capabilities: &specs.LinuxCapabilities{
				Bounding:  agentCaps,
				Effective: agentCaps,
				Permitted: agentCaps,
			},
			Rlimits: []specs.POSIXRlimit{
				{Type: "RLIMIT_NOFILE", Hard: nofile, Soft: nofile},
				{Type: "RLIMIT_CORE", Hard: 0, Soft: 0},
				// Processes per user: inside gVisor this is what bounds a fork bomb (the
				// host pids cgroup must leave room for the sentry's own threads).
				{Type: "RLIMIT_NPROC", Hard: uint64(p.limits.Pids), Soft: uint64(p.limits.Pids)},
			},
			NoNewPrivileges: true,
		},
		Root:     &specs.Root{Path: p.rootPath, Readonly: p.rootRO},
		Hostname: "sandbox",
		Mounts:   mounts(p),
		Linux: &specs.Linux{
			CgroupsPath: p.cgroup,
			Resources:   resources(p.limits, p.hostMemory, p.hostPids, p.cpuPeriod, p.spec.Background),
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace},
				{Type: specs.MountNamespace}, {Type: specs.NetworkNamespace, Path: p.netnsPath},
			},
			MaskedPaths:   maskedPaths,
			ReadonlyPaths: readonlyPaths,
		},
	}
	if p.userNS {
		s.Linux.Namespaces = append(s.Linux.Namespaces,
			specs.LinuxNamespace{Type: specs.UserNamespace}, specs.LinuxNamespace{Type: specs.CgroupNamespace})
		s.Linux.UIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: p.uidBase, Size: userNSSize}}
		s.Linux.GIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: p.uidBase, Size: userNSSize}}
	}
	if p.seccomp {
		s.Linux.Seccomp = seccompProfile()
	}
	if p.noIPv6Sysctl && p.netnsPath != "" {
		s.Linux.Sysctl = map[string]string{"net.ipv6.conf.all.disable_ipv6": "1"}
	}
	return s
}

// homeDir is the unprivileged user's home inside every sandbox.
const homeDir = "/home/user"

func mounts(p bundleParams) []specs.Mount {
	nosuid := []string{"nosuid", "nodev"}
	ms := []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		// A private /run, writable by the sandbox's root (the image's /run is not, under a
		// user namespace): the agent keeps the kernel's connection file there.
		{Destination: "/run", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "noexec", "mode=755", "size=16m"}},
		{Destination: agentapi.DataDir, Type: "bind", Source: filepath.Join(p.rwDir, "data"), Options: append([]string{"rbind", "rw"}, nosuid...)},
		{Destination: "/tmp", Type: "bind", Source: filepath.Join(p.rwDir, "tmp"), Options: append([]string{"rbind", "rw"}, nosuid...)},
		{Destination: homeDir, Type: "bind", Source: filepath.Join(p.rwDir, "home"), Options: append([]string{"rbind", "rw"}, nosuid...)},
		{Destination: agentapi.SocketDir, Type: "bind", Source: p.sockDir, Options: append([]string{"rbind", "rw", "noexec"}, nosuid...)},
		{Destination: agentapi.AgentPath, Type: "bind", Source: p.agentBin, Options: append([]string{"bind", "ro"}, nosuid...)},
	}
	if p.preload != "" {
		ms = append(ms, specs.Mount{Destination: agentapi.KernelPreloadPath, Type: "bind", Source: p.preload, Options: append([]string{"bind", "ro"}, nosuid...)})
	}
	if p.sysfs != "" {
		for i := range ms {
			if ms[i].Destination == "/sys" {
				ms[i] = specs.Mount{Destination: "/sys", Type: "bind", Source: p.sysfs, Options: []string{"rbind", "ro", "nosuid", "noexec", "nodev"}}
			}
		}
	}
	if p.resolvConf != "" {
		ms = append(ms, specs.Mount{Destination: "/etc/resolv.conf", Type: "bind", Source: p.resolvConf, Options: append([]string{"bind", "ro", "noexec"}, nosuid...)})
	}
	if p.userNS {
		// A cgroup namespace shows the sandbox only its own cgroup.
		ms = append(ms, specs.Mount{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}})
	}
	return ms
}

// CPU weights (cgroup v1 cpu.shares): a sandbox warming up in the background gets an
// eighth of the weight of one serving a session, so that on a busy machine the pool's refill
// does not slow down the executions users wait for.
const (
	normalShares     = 1024
	backgroundShares = 128
)

// cpuBandwidth returns the CFS quota and burst, in microseconds, of a sandbox limited to
// cpuMillis thousandths of a core with the given period (0: 100 ms). The burst (cgroup v1
// cpu.cfs_burst_us, v2 cpu.max.burst) lets a sandbox save up to one period's quota while
// it is idle and spend it on top of the quota later: the first execution after a pause
// gets up to twice the cores for one period, while the long-run share stays the quota.
// It matters under gVisor, whose sentry answers a request on several threads at once.
func cpuBandwidth(cpuMillis int64, period uint64) (quota int64, burst uint64) {
	if period == 0 {
		period = 100000
	}
	quota = cpuMillis * int64(period) / 1000
	return quota, uint64(quota)
}

func resources(l sandbox.Limits, hostMemory, hostPids int64, period uint64, background bool) *specs.LinuxResources {
	mem := hostMemory
	var swappiness uint64
	if period == 0 {
		period = 100000
	}
	quota, burst := cpuBandwidth(l.CPUMillis, period)
	shares := uint64(normalShares)
	if background {
		shares = backgroundShares
	}
	return &specs.LinuxResources{
		Memory: &specs.LinuxMemory{Limit: &mem, Swap: &mem, Swappiness: &swappiness},
		CPU:    &specs.LinuxCPU{Quota: &quota, Period: &period, Shares: &shares, Burst: &burst},
		Pids:   &specs.LinuxPids{Limit: &hostPids},
		Devices: []specs.LinuxDeviceCgroup{
			{Allow: false, Access: "rwm"},
		},
	}
}

// writeBundle writes config.json into dir.
func writeBundle(dir string, s *specs.Spec) error {
	b, err := json.MarshalIndent(s, "", "\t")
	if err != nil {
		return fmt.Errorf("encoding runtime config: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o600); err != nil {
		return fmt.Errorf("writing runtime config: %w", err)
	}
	return nil
}
