package sandboxtest

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/sandbox"
)

// bystander keeps executing in a second sandbox while an attack runs and reports the slowest
// round trip, so that tests can check the attack stayed inside its own sandbox.
type bystander struct {
	stop chan struct{}
	done chan struct{}

	mu sync.Mutex
	// worst is the slowest round trip seen. Guarded by mu.
	worst time.Duration
	// err is the first failure. Guarded by mu.
	err error
}

func (s *suite) startBystander(t *testing.T) *bystander {
	info := s.create(t, s.spec(sandbox.Limits{}))
	b := &bystander{stop: make(chan struct{}), done: make(chan struct{})}
	ag := s.rt.Agent(info.ID)
	go func() {
		defer close(b.done)
		for {
			select {
			case <-b.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			t0 := time.Now()
			res, err := ag.Exec(ctx, agentapi.ExecRequest{Argv: []string{"echo", "alive"}})
			d := time.Since(t0)
			cancel()
			b.mu.Lock()
			if d > b.worst {
				b.worst = d
			}
			if err == nil && strings.TrimSpace(res.Stdout) != "alive" {
				err = errUnexpected(res.Stdout)
			}
			if err != nil && b.err == nil {
				b.err = err
			}
			b.mu.Unlock()
		}
	}()
	t.Cleanup(b.finish)
	return b
}

// finish stops the bystander and waits for it; it is idempotent.
func (b *bystander) finish() {
	select {
	case <-b.stop:
	default:
		close(b.stop)
	}
	<-b.done
}

// check fails t if the bystander failed or ever took longer than max.
func (b *bystander) check(t *testing.T, max time.Duration) {
	t.Helper()
	b.finish()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		t.Errorf("second sandbox failed during the attack: %v", b.err)
	}
	if b.worst > max {
		t.Errorf("second sandbox took %v to answer during the attack, want at most %v", b.worst, max)
	}
}

type errUnexpected string

func (e errUnexpected) Error() string { return "unexpected output " + strconv.Quote(string(e)) }

func (s *suite) testLimits(t *testing.T) {
	t.Run("MemoryBomb", s.testMemoryBomb)
	t.Run("ForkBomb", s.testForkBomb)
	t.Run("DiskFill", s.testDiskFill)
	t.Run("BusyLoop", s.testBusyLoop)
	t.Run("OpenFiles", s.testOpenFiles)
	t.Run("TimeoutKillsProcessGroup", s.testTimeout)
}

func (s *suite) testMemoryBomb(t *testing.T) {
	by := s.startBystander(t)
	info := s.create(t, s.spec(sandbox.Limits{MemoryBytes: 128 << 20}))
	res := s.exec(t, info.ID, agentapi.ExecRequest{Argv: []string{"python3", "-c", `
chunks = []
for i in range(64):
    chunks.append(bytearray(16 << 20))
    for j in range(0, len(chunks[-1]), 4096):
        chunks[-1][j] = 1
print("ALLOCATED", len(chunks) * 16, "MiB")
`}, TimeoutMS: Timeout(60 * time.Second).Milliseconds()})
	if res.ExitCode == 0 && strings.Contains(res.Stdout, "ALLOCATED") {
		t.Fatalf("allocated 1 GiB in a sandbox limited to 128 MiB: %s", res.Stdout)
	}
	if res.Signal != "SIGKILL" && !strings.Contains(res.Stderr, "MemoryError") {
		t.Errorf("memory bomb ended with exit %d signal %q stderr %q, want SIGKILL or MemoryError", res.ExitCode, res.Signal, res.Stderr)
	}
	// The sandbox survives its own OOM: the agent answers and new work runs.
	if got := s.mustSh(t, info.ID, "echo still here"); got != "still here" {
		t.Errorf("after the OOM: %q", got)
	}
	by.check(t, 5*time.Second)
}

func (s *suite) testForkBomb(t *testing.T) {
	by := s.startBystander(t)
	const pids = 64
	info := s.create(t, s.spec(sandbox.Limits{Pids: pids, MemoryBytes: 512 << 20}))
	t0 := time.Now()
	res := s.exec(t, info.ID, agentapi.ExecRequest{Shell: `
python3 -c '
import os, time
n = 0
try:
    while True:
        os.fork()
        n += 1
except OSError as e:
    print("FORK FAILED", e, flush=True)
time.sleep(3)
'`, TimeoutMS: 6000})
	if d := time.Since(t0); d > Timeout(30*time.Second) {
		t.Errorf("fork bomb ran %v despite a 6 s timeout", d)
	}
	if !strings.Contains(res.Stdout, "FORK FAILED") {
		t.Errorf("fork never failed under a %d-process limit: exit %d %q %q", pids, res.ExitCode, res.Stdout, res.Stderr)
	}
	// The timeout killed the whole process group: the sandbox is usable again. Until the
	// killed processes are reaped (under gVisor that takes a moment), the check itself may
	// find no process slot ("Cannot fork"): that too means not yet.
	deadline := time.Now().Add(Timeout(10 * time.Second))
	for {
		res := s.sh(t, info.ID, "ls /proc | grep -c '^[0-9]'")
		n, err := strconv.Atoi(strings.TrimSpace(res.Stdout))
		if res.ExitCode == 0 && err == nil && n < 10 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("the sandbox is not usable again after the fork bomb's timeout: %d processes; exit %d, stderr %q", n, res.ExitCode, res.Stderr)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	by.check(t, 5*time.Second)
}

func (s *suite) testDiskFill(t *testing.T) {
	by := s.startBystander(t)
	const disk = 64 << 20
	info := s.create(t, s.spec(sandbox.Limits{DiskBytes: disk, MemoryBytes: 512 << 20}))
	for _, target := range []string{"/mnt/data/fill", "/tmp/fill", "/home/user/fill", "/var/tmp/fill"} {
		res := s.sh(t, info.ID, "dd if=/dev/zero of="+target+" bs=1M count=256 2>&1; sync; stat -c %s "+target)
		if res.ExitCode == 0 && strings.Contains(res.Stdout, "268435456") {
			t.Errorf("wrote 256 MiB to %s with a %d MiB disk limit", target, disk>>20)
		}
		if !strings.Contains(res.Stdout, "No space left") && !strings.Contains(res.Stdout, "Disk quota") {
			t.Errorf("filling %s: want ENOSPC, got exit %d: %s", target, res.ExitCode, res.Stdout)
		}
		s.mustSh(t, info.ID, "rm -f "+target)
	}
	// Space is usable again after cleaning up.
	s.mustSh(t, info.ID, "dd if=/dev/zero of=/mnt/data/again bs=1M count=8 2>/dev/null")
	by.check(t, 5*time.Second)
}

func (s *suite) testBusyLoop(t *testing.T) {
	by := s.startBystander(t)
	info := s.create(t, s.spec(sandbox.Limits{CPUMillis: 250}))
	ctx := context.Background()
	before, err := s.rt.Stats(ctx, info.ID)
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	t0 := time.Now()
	s.sh(t, info.ID, "timeout 3 sh -c 'while :; do :; done' & timeout 3 sh -c 'while :; do :; done'; wait")
	wall := time.Since(t0)
	after, err := s.rt.Stats(ctx, info.ID)
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	used := after.CPUTime - before.CPUTime
	// Two busy loops under a quarter-core quota get about a quarter of the wall time.
	if limit := time.Duration(float64(wall)*0.25*1.6) + 300*time.Millisecond; used > limit {
		t.Errorf("busy loops used %v of CPU in %v, above the 0.25-core quota (limit %v)", used, wall, limit)
	}
	if used < 100*time.Millisecond {
		t.Errorf("busy loops used only %v of CPU; is the cgroup accounted?", used)
	}
	by.check(t, 3*time.Second)
}

func (s *suite) testOpenFiles(t *testing.T) {
	info := s.create(t, s.spec(sandbox.Limits{OpenFiles: 256}))
	if got := s.mustSh(t, info.ID, "ulimit -n"); got != "256" {
		t.Errorf("ulimit -n = %q, want 256", got)
	}
	res := s.exec(t, info.ID, agentapi.ExecRequest{Argv: []string{"python3", "-c", `
import os
fds = []
try:
    while True:
        fds.append(os.open("/dev/null", os.O_RDONLY))
except OSError as e:
    print(len(fds), e.errno)
`}})
	f := strings.Fields(res.Stdout)
	if len(f) != 2 || f[1] != "24" {
		t.Fatalf("opening files until failure: %q %q, want EMFILE (24)", res.Stdout, res.Stderr)
	}
	if n, _ := strconv.Atoi(f[0]); n > 256 {
		t.Errorf("opened %d files under a limit of 256", n)
	}
}

func (s *suite) testTimeout(t *testing.T) {
	info := s.create(t, s.spec(sandbox.Limits{}))
	t0 := time.Now()
	res := s.exec(t, info.ID, agentapi.ExecRequest{Shell: "sleep 100 & sleep 100", TimeoutMS: 1000})
	if d := time.Since(t0); d > Timeout(10*time.Second) {
		t.Errorf("a 1 s timeout returned after %v", d)
	}
	if !res.TimedOut {
		t.Errorf("result = %+v, want TimedOut", res)
	}
	if got := s.mustSh(t, info.ID, "cat /proc/[0-9]*/comm 2>/dev/null | grep -c '^sleep$' || true"); got != "0" {
		t.Errorf("%s sleep processes survived the timeout", got)
	}
}
