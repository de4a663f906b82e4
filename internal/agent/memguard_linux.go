package agent

import (
	"context"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The memory guard enforces a sandbox's memory limit from inside, by killing the largest
// user process when the processes' resident memory together passes the limit. It exists
// for gVisor: there the host memory cgroup holds the sentry together with the sandbox's
// processes, and a host OOM kill takes down the whole sandbox (agent included) instead of
// the process that used the memory (gvisor#2520, #1967). The runtime gives the host
// cgroup headroom above the limit and passes the limit to the agent (-memory-limit); the
// guard then acts first, like the kernel's OOM killer would under runc: the kernel process
// dies, its execution ends with "Execution aborted", a fresh kernel starts.
//
// Under runc the host kernel's cgroup OOM killer is exact and the guard is off.

// The guard samples memory at an interval that shrinks as use nears the limit. Under
// gVisor's systrap platform every wake-up of the agent is expensive (measured: an idle
// sandbox spent 12.7% of a core at a fixed 20 ms, 6.5% at 500 ms, 0.3% with no guard; the
// sample's own reads cost under 2 ms), so far from the limit it samples twice a second.
// Page faults under gVisor cost microseconds, so a process grows by some hundreds of MiB
// per second: from a quarter of the limit to the host cgroup's hard bound (limit × 1.25 +
// 256 MiB) takes longer than the slow interval, and past half the limit the guard samples
// every 20 ms. (At one sample a second, 400 MiB allocated in a 256 MiB sandbox finished
// between two samples.)
func memGuardInterval(used, limit int64) time.Duration {
	switch {
	case used < limit/4:
		return 500 * time.Millisecond
	case used < limit/2:
		return 100 * time.Millisecond
	default:
		return 20 * time.Millisecond
	}
}

// runMemGuard samples until ctx is done. Pids other than the agent's own are candidates.
func (a *Agent) runMemGuard(ctx context.Context, limit int64) {
	self := os.Getpid()
	page := int64(os.Getpagesize())
	interval := memGuardInterval(0, limit)
	for {
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		// Two estimates of the sandbox's use, each too high in its own way: the sum of
		// resident sizes counts pages shared between processes once per process (forked
		// workers), and gVisor's accounting still holds memory for a while after the
		// process that used it died (so the next process would be blamed). The smaller of
		// the two is what is really in use.
		used, ok := usedMemory()
		if ok && used <= limit {
			// The smaller estimate is at most this one: nothing to do, and no need for the
			// process scan, which costs real CPU under gVisor.
			interval = memGuardInterval(used, limit)
			continue
		}
		victim, victimRSS, rssTotal := 0, int64(0), int64(0)
		ents, err := os.ReadDir("/proc")
		if err != nil {
			continue
		}
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || pid == self {
				continue
			}
			rss := statmRSS(pid) * page
			rssTotal += rss
			if rss > victimRSS {
				victim, victimRSS = pid, rss
			}
		}
		total := rssTotal
		if ok {
			total = min(used, rssTotal)
		}
		interval = memGuardInterval(total, limit)
		if total > limit && victim > 0 {
			a.log.Warn("memory limit reached: killing the largest process", "pid", victim,
				"rss", victimRSS, "total", total, "limit", limit)
			_ = syscall.Kill(victim, syscall.SIGKILL)
		}
	}
}

// usedMemory returns the memory in use as /proc/meminfo reports it (MemTotal minus
// MemAvailable). Under gVisor that is the sentry's own accounting of the whole sandbox: every
// page counted once, shared or not, page cache and tmpfs included.
func usedMemory() (int64, bool) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, false
	}
	var total, avail int64 = -1, -1
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "MemTotal:":
			total = n << 10
		case "MemAvailable:":
			avail = n << 10
		}
	}
	if total < 0 || avail < 0 {
		return 0, false
	}
	return total - avail, true
}

// statmRSS returns the resident pages of pid, 0 if unknown.
func statmRSS(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	n, _ := strconv.ParseInt(f[1], 10, 64)
	return n
}
