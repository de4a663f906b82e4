package oci

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cgroupRoot is where the host's cgroup hierarchies are mounted.
const cgroupRoot = "/sys/fs/cgroup"

// DefaultCgroupParent is the cgroup under which every sandbox gets its own, named by
// sandbox ID.
const DefaultCgroupParent = "sessiond"

// cgroupDirs returns the sandbox's cgroup directories that exist, across all hierarchies
// (cgroup v1 controllers, and the v2 hierarchy if mounted).
func cgroupDirs(cgroupParent, id string) []string {
	var dirs []string
	ents, err := os.ReadDir(cgroupRoot)
	if err != nil {
		return nil
	}
	for _, e := range ents {
		d := filepath.Join(cgroupRoot, e.Name(), cgroupParent, id)
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			dirs = append(dirs, d)
		}
	}
	if fi, err := os.Stat(filepath.Join(cgroupRoot, cgroupParent, id)); err == nil && fi.IsDir() {
		dirs = append(dirs, filepath.Join(cgroupRoot, cgroupParent, id))
	}
	return dirs
}

// cgroupPids returns the host pids in the sandbox's cgroups (all hierarchies, deduplicated),
// including those in nested cgroups.
func cgroupPids(cgroupParent, id string) []int {
	seen := map[int]bool{}
	var pids []int
	for _, d := range cgroupDirs(cgroupParent, id) {
		_ = filepath.WalkDir(d, func(path string, de os.DirEntry, err error) error {
			if err != nil || !de.IsDir() {
				return nil
			}
			b, err := os.ReadFile(filepath.Join(path, "cgroup.procs"))
			if err != nil {
				return nil
			}
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil && !seen[pid] {
					seen[pid] = true
					pids = append(pids, pid)
				}
			}
			return nil
		})
	}
	return pids
}

// removeCgroups kills every process left in the sandbox's cgroups and removes them, deepest
// first. It is the safety net behind the runtime's own delete.
func removeCgroups(cgroupParent, id string, deadline time.Time) error {
	for {
		pids := cgroupPids(cgroupParent, id)
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		var errs []error
		for _, d := range cgroupDirs(cgroupParent, id) {
			if err := removeCgroupTree(d); err != nil {
				errs = append(errs, err)
			}
		}
		if len(errs) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("removing cgroups of %s: %w", id, errors.Join(errs...))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func removeCgroupTree(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return err
	}
	for _, e := range ents {
		if e.IsDir() {
			if err := removeCgroupTree(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	if err := os.Remove(dir); err != nil && !os.IsNotExist(err) {
		return err
	}
	return nil
}

// cgroupMemory returns the memory charged to the sandbox's memory cgroup.
func cgroupMemory(cgroupParent, id string) int64 {
	for _, f := range []string{
		filepath.Join(cgroupRoot, "memory", cgroupParent, id, "memory.usage_in_bytes"),
		filepath.Join(cgroupRoot, cgroupParent, id, "memory.current"),
	} {
		if b, err := os.ReadFile(f); err == nil {
			n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
			return n
		}
	}
	return 0
}

// cgroupCPU returns the CPU time used by the sandbox's cgroup.
func cgroupCPU(cgroupParent, id string) time.Duration {
	if b, err := os.ReadFile(filepath.Join(cgroupRoot, "cpuacct", cgroupParent, id, "cpuacct.usage")); err == nil {
		n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		return time.Duration(n)
	}
	if b, err := os.ReadFile(filepath.Join(cgroupRoot, cgroupParent, id, "cpu.stat")); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == "usage_usec" {
				n, _ := strconv.ParseInt(f[1], 10, 64)
				return time.Duration(n) * time.Microsecond
			}
		}
	}
	return 0
}

// pss returns the proportional set size of pid in bytes, or 0 if it cannot be read.
func pss(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/smaps_rollup")
	if err != nil {
		return 0
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == "Pss:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb * 1024
		}
	}
	return 0
}

// cpuFile returns the path of the sandbox's CPU controller file: v1 in the cpu hierarchy
// if the sandbox has one, else v2 in the unified hierarchy; inV2 says which. ok is false
// when neither exists.
func cpuFile(cgroupParent, id, v1, v2 string) (path string, inV2, ok bool) {
	for _, ctrl := range []string{"cpu", "cpu,cpuacct"} {
		f := filepath.Join(cgroupRoot, ctrl, cgroupParent, id, v1)
		if _, err := os.Stat(f); err == nil {
			return f, false, true
		}
	}
	f := filepath.Join(cgroupRoot, cgroupParent, id, v2)
	if _, err := os.Stat(f); err == nil {
		return f, true, true
	}
	return "", false, false
}

// setCPUShares writes the sandbox's CPU weight (cgroup v1 cpu.shares, or the v2 hierarchy's
// cpu.weight when that is where the sandbox lives).
func setCPUShares(cgroupParent, id string, shares uint64) error {
	f, inV2, ok := cpuFile(cgroupParent, id, "cpu.shares", "cpu.weight")
	if !ok {
		return fmt.Errorf("no cpu controller for sandbox %s", id)
	}
	if inV2 {
		// cgroup v2 weights run 1..10000 with 100 the default; shares 1024 map to 100.
		shares = max(1, shares*100/1024)
	}
	return os.WriteFile(f, []byte(strconv.FormatUint(shares, 10)), 0)
}

// setCPUBurst writes the sandbox's CFS burst in microseconds (cgroup v1 cpu.cfs_burst_us,
// or cpu.max.burst in the v2 hierarchy), for runtimes that do not apply the spec's.
func setCPUBurst(cgroupParent, id string, burst uint64) error {
	f, _, ok := cpuFile(cgroupParent, id, "cpu.cfs_burst_us", "cpu.max.burst")
	if !ok {
		return nil // a kernel without CFS burst (before 5.14): quota only
	}
	if err := os.WriteFile(f, []byte(strconv.FormatUint(burst, 10)), 0); err != nil {
		return fmt.Errorf("setting the CPU burst of sandbox %s: %w", id, err)
	}
	return nil
}
