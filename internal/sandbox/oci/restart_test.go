package oci

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/sandbox"
	"github.com/sessiond/sessiond/internal/sandbox/sandboxtest"
)

// helperEnv makes the test binary act as a control plane that creates sandboxes and then
// hangs in the middle of one more create, to be killed with SIGKILL by TestKilledControlPlane.
const helperEnv = "SESSIOND_TEST_HELPER_CREATE"

type helperArgs struct {
	Runtime, StateDir, Agent, RootFS string
	N                                int
}

// runHelper is the control plane that gets killed: it creates N sandboxes, printing each
// ID, then starts one more create and never returns from it.
func runHelper() int {
	var a helperArgs
	if err := json.Unmarshal([]byte(os.Getenv(helperEnv)), &a); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	cfg := testConfig(a.Runtime, a.StateDir)
	cfg.AgentBinary = a.Agent
	rt, err := New(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx := context.Background()
	for i := 0; i < a.N; i++ {
		info, err := rt.Create(ctx, sandbox.Spec{RootFS: a.RootFS, Labels: map[string]string{"n": fmt.Sprint(i)}})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println(info.ID)
	}
	fmt.Println("creating")
	_, _ = rt.Create(ctx, sandbox.Spec{RootFS: a.RootFS})
	select {} // hang until killed
}

// TestKilledControlPlane kills a control plane with SIGKILL while it holds sandboxes and is
// half way through creating another, then recovers: half of the sandboxes are adopted (and
// keep their state), the rest and the half-created one are reaped, and after destroying the
// adopted ones nothing is left: no processes, mounts, cgroups or directories.
func TestKilledControlPlane(t *testing.T) {
	img := sandboxtest.TestImage(t)
	for _, name := range Names() {
		t.Run(name, func(t *testing.T) {
			state := filepath.Join(newStateDir(t), name)
			requireRuntime(t, name, state)
			const n = 4
			args, _ := json.Marshal(helperArgs{Runtime: name, StateDir: state, Agent: agentBin, RootFS: img.RootFS, N: n})
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), helperEnv+"="+string(args))
			cmd.Stderr = os.Stderr
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			var ids []string
			sc := bufio.NewScanner(out)
			for sc.Scan() && sc.Text() != "creating" {
				ids = append(ids, sc.Text())
			}
			if len(ids) != n {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("helper created %d sandboxes, want %d", len(ids), n)
			}
			// Let the last create get part way (directories, mounts, maybe the runtime).
			time.Sleep(60 * time.Millisecond)
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			cmd.Wait()

			ctx := context.Background()
			// Before restarting, give the adopted sandboxes some state.
			fresh, err := New(testConfig(name, state))
			if err != nil {
				t.Fatal(err)
			}
			for _, id := range ids {
				if _, err := fresh.Agent(id).Exec(ctx, agentapi.ExecRequest{Shell: "echo " + id + " > /mnt/data/id"}); err != nil {
					t.Fatalf("sandbox %s not reachable after the kill: %v", id, err)
				}
			}
			keep := map[string]bool{ids[0]: true, ids[2]: true}
			res, err := sandbox.Recover(ctx, fresh, func(i sandbox.Info) bool { return keep[i.ID] })
			if err != nil {
				t.Fatalf("Recover: %v", err)
			}
			var adopted []string
			for _, i := range res.Adopted {
				adopted = append(adopted, i.ID)
			}
			if len(adopted) != 2 || !keep[adopted[0]] || !keep[adopted[1]] {
				t.Errorf("adopted %v, want %s and %s", adopted, ids[0], ids[2])
			}
			if len(res.Reaped) < n-2 {
				t.Errorf("reaped %v, want at least %d", res.Reaped, n-2)
			}
			for _, id := range adopted {
				r, err := fresh.Agent(id).Exec(ctx, agentapi.ExecRequest{Shell: "cat /mnt/data/id"})
				if err != nil || strings.TrimSpace(r.Stdout) != id {
					t.Errorf("adopted sandbox %s lost its state: %+v %v", id, r, err)
				}
			}
			// A second recovery finds only the adopted ones.
			list, err := fresh.List(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(list) != 2 {
				t.Errorf("after recovery List = %d sandboxes, want 2: %+v", len(list), list)
			}
			for _, id := range adopted {
				if err := fresh.Destroy(ctx, id); err != nil {
					t.Fatal(err)
				}
			}
			assertNoLeftovers(t, state)
		})
	}
}

// assertNoLeftovers checks that no sandbox under state left anything behind.
func assertNoLeftovers(t *testing.T, state string) {
	t.Helper()
	ents, _ := os.ReadDir(state)
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), ".") { // .runtime, .uids.lock
			t.Errorf("leftover sandbox directory %s", e.Name())
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(state, ".runtime")); len(ents) > 0 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		// runsc keeps lock and metadata files of its own; only container directories count.
		for _, n := range names {
			if idPattern.MatchString(n) && !strings.HasSuffix(n, ".lock") {
				if fi, err := os.Stat(filepath.Join(state, ".runtime", n)); err == nil && fi.IsDir() {
					t.Errorf("leftover runtime state %s", n)
				}
			}
		}
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(mi), "\n") {
		if strings.Contains(l, state+"/") {
			t.Errorf("leftover mount: %s", l)
		}
	}
	if pids := processesMentioning(state + "/"); len(pids) > 0 {
		t.Errorf("leftover processes mentioning %s: %v", state, pids)
	}
	cgs, _ := filepath.Glob(filepath.Join(cgroupRoot, "*", testCgroupParent(state), "*"))
	for _, cg := range cgs {
		if fi, err := os.Stat(cg); err == nil && fi.IsDir() {
			t.Errorf("leftover cgroup %s", cg)
		}
	}
	// The test's cgroup parents themselves are removed here.
	parents, _ := filepath.Glob(filepath.Join(cgroupRoot, "*", testCgroupParent(state)))
	for _, p := range parents {
		os.Remove(p)
	}
}

// processesMentioning lists host pids whose command line contains s.
func processesMentioning(s string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline"); err == nil && strings.Contains(string(b), s) {
			pids = append(pids, pid)
		}
	}
	return pids
}
