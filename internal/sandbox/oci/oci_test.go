package oci

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sessiond/sessiond/internal/sandbox"
	"github.com/sessiond/sessiond/internal/sandbox/sandboxtest"
)

// agentBin is the sessiond-agent built for this test binary (empty if the build failed).
var agentBin string

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(runHelper())
	}
	dir, err := os.MkdirTemp("", "sessiond-agent-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	agentBin, err = sandboxtest.BuildAgent(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// newStateDir returns a short state directory, traversable by user-namespaced sandboxes,
// removed when the test ends.
func newStateDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "sdt-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// requireRuntime skips (or fails under SESSIOND_TEST_REQUIRE=1) when name cannot run here.
func requireRuntime(t *testing.T, name, stateDir string) *Runtime {
	t.Helper()
	rt, err := New(testConfig(name, stateDir))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // the test's cgroup parents, once its sandboxes are gone
		parent := testCgroupParent(stateDir)
		dirs, _ := filepath.Glob(filepath.Join(cgroupRoot, "*", parent))
		for _, d := range append(dirs, filepath.Join(cgroupRoot, parent)) {
			os.Remove(d) // fails while another subtest's sandbox still lives in it
		}
	})
	if c := rt.Capabilities(); !c.Available {
		sandboxtest.SkipOrFail(t, "%s unavailable: %s", name, c.Reason)
	}
	return rt
}

func TestConformance(t *testing.T) {
	img := sandboxtest.TestImage(t)
	for _, name := range Names() {
		t.Run(name, func(t *testing.T) {
			state := filepath.Join(newStateDir(t), name)
			requireRuntime(t, name, state)
			sandboxtest.Run(t, sandboxtest.Config{
				New: func(t *testing.T) sandbox.Runtime {
					rt, err := New(testConfig(name, state))
					if err != nil {
						t.Fatal(err)
					}
					return rt
				},
				RootFS:      img.RootFS,
				Image:       img.Name,
				Containment: true,
				HostPaths:   []string{state, sandboxtest.DataDir()},
			})
			assertNoLeftovers(t, state)
		})
	}
}

// testConfig configures a runtime whose sandboxes live in their own cgroup parent, named
// after the state directory, so that leftover checks see only this test's cgroups.
func testConfig(name, state string) Config {
	return Config{Name: name, StateDir: state, AgentBinary: agentBin, CgroupParent: testCgroupParent(state)}
}

func testCgroupParent(state string) string {
	return "sessiond-test-" + strings.TrimPrefix(filepath.Base(filepath.Dir(state)), "sdt-")
}

// TestPromote checks that a background sandbox starts with a low CPU weight and gets the
// normal weight when promoted, and that its CPU burst is one period's quota.
func TestPromote(t *testing.T) {
	img := sandboxtest.TestImage(t)
	for _, name := range Names() {
		t.Run(name, func(t *testing.T) {
			state := filepath.Join(newStateDir(t), name)
			rt := requireRuntime(t, name, state)
			ctx := context.Background()
			info, err := rt.Create(ctx, sandbox.Spec{RootFS: img.RootFS, Background: true})
			if err != nil {
				t.Fatal(err)
			}
			defer rt.Destroy(ctx, info.ID)
			read := func(name string) string {
				b, err := os.ReadFile(filepath.Join(cgroupRoot, "cpu", rt.cfg.CgroupParent, info.ID, name))
				if err != nil {
					t.Fatal(err)
				}
				return strings.TrimSpace(string(b))
			}
			shares := func() string { return read("cpu.shares") }
			if _, err := os.Stat(filepath.Join(cgroupRoot, "cpu", rt.cfg.CgroupParent, info.ID, "cpu.cfs_burst_us")); err == nil {
				if q, b := read("cpu.cfs_quota_us"), read("cpu.cfs_burst_us"); q != b || b == "0" {
					t.Errorf("cpu.cfs_quota_us = %s, cpu.cfs_burst_us = %s: want the burst to be one quota", q, b)
				}
			}
			if got := shares(); got != "128" {
				t.Errorf("background sandbox cpu.shares = %s, want 128", got)
			}
			if err := rt.Promote(info.ID); err != nil {
				t.Fatal(err)
			}
			if got := shares(); got != "1024" {
				t.Errorf("promoted sandbox cpu.shares = %s, want 1024", got)
			}
			if err := rt.Promote("no-such-sandbox"); err == nil {
				t.Errorf("Promote of an unknown sandbox succeeded")
			}
		})
	}
}
