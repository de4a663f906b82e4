package sandboxtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/sandbox"
)

// pyCheck is a Python program run inside a sandbox that prints "CONTAINED" when the attempt
// it makes fails the way it must, and anything else otherwise.
type pyCheck struct {
	name   string
	code   string
	asRoot bool // run as the sandbox's root (the agent's identity) instead of the user
}

// errnoAttempt wraps a libc call expected to fail with one of the errnos given.
func errnoAttempt(call string, errnos ...string) string {
	return fmt.Sprintf(`
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
r = %s
e = ctypes.get_errno()
print("CONTAINED" if r == -1 and e in (%s,) else "ESCAPED r=%%d errno=%%s" %% (r, errno.errorcode.get(e, e)))
`, call, strings.Join(errnos, ", "))
}

func (s *suite) testContainment(t *testing.T) {
	ctx := context.Background()
	m := marker()
	for _, d := range s.cfg.HostPaths {
		if _, err := os.Stat(d); err == nil {
			plantHostFile(t, d, m)
		}
	}
	plantHostFile(t, os.TempDir(), m)
	hostProcess(t, m)
	hostname, _ := os.Hostname()

	victim := s.create(t, s.spec(sandbox.Limits{}))
	vm := marker()
	s.mustSh(t, victim.ID, fmt.Sprintf("echo secret > /mnt/data/%s; echo secret > /tmp/%s; (exec -a %s sleep 600) >/dev/null 2>&1 &", vm, vm, vm))

	info := s.create(t, s.spec(sandbox.Limits{}))
	hostIPs := hostAddresses()

	checks := []pyCheck{
		{name: "host files invisible", code: fmt.Sprintf(`
import os
found = []
for root, dirs, files in os.walk("/"):
    if root in ("/proc", "/sys", "/dev"):
        dirs[:] = []
        continue
    for n in files + dirs:
        if %q in n or %q in n:
            found.append(os.path.join(root, n))
print("CONTAINED" if not found else "ESCAPED %%s" %% found)
`, m, vm)},
		{name: "host hostname not exposed", code: fmt.Sprintf(`
import socket
print("CONTAINED" if socket.gethostname() != %q else "ESCAPED")
`, hostname)},
		{name: "host and other sandbox processes invisible", code: fmt.Sprintf(`
import os
seen = []
for p in os.listdir("/proc"):
    if p.isdigit() and int(p) != os.getpid():
        try:
            c = open("/proc/%%s/cmdline" %% p, "rb").read()
        except OSError:
            continue
        if %q.encode() in c or %q.encode() in c:
            seen.append(p)
print("CONTAINED" if not seen else "ESCAPED %%s" %% seen)
`, m, vm)},
		{name: "few processes visible", code: `
import os
ps = [p for p in os.listdir("/proc") if p.isdigit()]
print("CONTAINED" if len(ps) < 10 and "1" in ps else "ESCAPED %s" % ps)
`},
		{name: "only loopback interface", code: `
import socket
names = [n for _, n in socket.if_nameindex()]
print("CONTAINED" if names == ["lo"] else "ESCAPED %s" % names)
`},
		{name: "no network reachable", code: fmt.Sprintf(`
import socket
reached = []
for host in %s:
    for port in (80, 443, 53):
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        s.settimeout(1)
        try:
            s.connect((host, port))
            reached.append((host, port))
        except OSError:
            pass
        finally:
            s.close()
try:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(b"x", ("8.8.8.8", 53))
    reached.append("udp 8.8.8.8")
except OSError:
    pass
print("CONTAINED" if not reached else "ESCAPED %%s" %% reached)
`, pyList(append([]string{"1.1.1.1", "8.8.8.8", "169.254.169.254", "10.0.0.1", "192.168.1.1"}, hostIPs...)))},
		{name: "mount fails for user", code: errnoAttempt(`libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)`, "errno.EPERM")},
		{name: "mount fails for sandbox root", asRoot: true, code: errnoAttempt(`libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)`, "errno.EPERM")},
		{name: "module loading fails", asRoot: true, code: errnoAttempt(`libc.syscall(313, os.open("/dev/null", os.O_RDONLY), b"", 0)`, "errno.EPERM", "errno.ENOSYS")},
		{name: "ptrace of init fails", code: errnoAttempt(`libc.ptrace(16, 1, None, None)`, "errno.EPERM", "errno.ESRCH")},
		{name: "user code has no capabilities and no_new_privs", code: `
st = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
caps = [st[k].strip() for k in ("CapInh", "CapPrm", "CapEff", "CapAmb")]
ok = all(int(c, 16) == 0 for c in caps) and st.get("NoNewPrivs", "").strip() == "1"
print("CONTAINED" if ok else "ESCAPED %s nnp=%s" % (caps, st.get("NoNewPrivs")))
`},
		{name: "user cannot signal the agent", code: errnoAttempt(`libc.kill(1, 9)`, "errno.EPERM")},
		{name: "user cannot reach the agent socket", code: `
import os
try:
    os.listdir("` + agentapi.SocketDir + `")
    print("ESCAPED listed")
except PermissionError:
    print("CONTAINED")
`},
		{name: "agent binary read-only", asRoot: true, code: `
try:
    open("` + agentapi.AgentPath + `", "ab").close()
    print("ESCAPED")
except OSError:
    print("CONTAINED")
`},
		{name: "raw sockets denied", code: errnoAttempt(`libc.socket(2, 3, 1)`, "errno.EPERM", "errno.EACCES")},
	}
	if s.rt.Capabilities().Isolation == "namespaces" {
		// On the host kernel, new user namespaces are attack surface; inside gVisor they
		// are the sentry's own and harmless.
		checks = append(checks, pyCheck{name: "user namespace creation fails", code: errnoAttempt(`libc.unshare(0x10000000)`, "errno.EPERM", "errno.EINVAL", "errno.ENOSPC")})
	}
	if s.rt.Capabilities().Seccomp {
		checks = append(checks, pyCheck{name: "seccomp filter active", code: `
st = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
print("CONTAINED" if st.get("Seccomp", "").strip() == "2" else "ESCAPED %s" % st.get("Seccomp"))
`}, pyCheck{name: "seccomp denies bpf for root", asRoot: true, code: errnoAttempt(`libc.syscall(321, 0, None, 0)`, "errno.EPERM")})
	}
	for _, c := range checks {
		t.Run(c.name, func(t *testing.T) {
			res := s.exec(t, info.ID, agentapi.ExecRequest{Argv: []string{"python3", "-c", c.code}, AsRoot: c.asRoot,
				TimeoutMS: Timeout(60 * time.Second).Milliseconds()})
			if strings.TrimSpace(res.Stdout) != "CONTAINED" {
				t.Errorf("exit %d: %s%s", res.ExitCode, res.Stdout, res.Stderr)
			}
		})
	}
	// The agent is still in charge after all of that.
	if _, err := s.rt.Agent(info.ID).Health(ctx); err != nil {
		t.Errorf("agent unhealthy after the battery: %v", err)
	}
	if s.rt.Capabilities().UserNamespace {
		t.Run("root inside is unprivileged on the host", func(t *testing.T) {
			if info.PID <= 0 {
				t.Fatalf("no host pid recorded for %s", info.ID)
			}
			b, err := os.ReadFile("/proc/" + strconv.Itoa(info.PID) + "/status")
			if err != nil {
				t.Fatalf("reading host status of the sandbox init: %v", err)
			}
			for _, l := range strings.Split(string(b), "\n") {
				if f := strings.Fields(l); len(f) >= 2 && f[0] == "Uid:" && f[1] == "0" {
					t.Errorf("sandbox init runs as host uid 0: %s", l)
				}
			}
		})
	}
}

// hostAddresses lists the host's own non-loopback IPv4 addresses.
func hostAddresses() []string {
	var out []string
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
			out = append(out, n.IP.String())
		}
	}
	return out
}

func pyList(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = strconv.Quote(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}
