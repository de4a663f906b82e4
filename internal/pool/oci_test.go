package pool

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/sandbox/oci"
	"github.com/sessiond/sessiond/internal/sandbox/sandboxtest"
)

// TestOCIPool runs a pool on the real runtimes (runc and gVisor's runsc) with the wall
// clock: sessions run commands and keep their files per identifier, expire after a 1 s
// cooldown, the cap refuses a third session, and a sandbox destroyed behind the pool's
// back is noticed and replaced.
func TestOCIPool(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real sandboxes")
	}
	img := sandboxtest.TestImage(t)
	for _, name := range oci.Names() {
		t.Run(name, func(t *testing.T) {
			base, err := os.MkdirTemp("/tmp", "spo-")
			if err != nil {
				t.Fatal(err)
			}
			os.Chmod(base, 0o711)
			state := filepath.Join(base, name)
			cgroupParent := "sessiond-test-" + strings.TrimPrefix(filepath.Base(base), "spo-")
			rt, err := oci.New(oci.Config{Name: name, StateDir: state, AgentBinary: agentBin, CgroupParent: cgroupParent})
			if err != nil {
				t.Fatal(err)
			}
			if c := rt.Capabilities(); !c.Available {
				os.RemoveAll(base)
				sandboxtest.SkipOrFail(t, "%s unavailable: %s", name, c.Reason)
			}
			m, err := New(Spec{Name: "oci-" + name, MaxConcurrentSessions: 2, ReadySessionInstances: 2,
				CooldownPeriod: time.Second, Image: img.Name},
				Options{Runtime: rt, RootFS: img.RootFS, HealthInterval: 300 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			t.Cleanup(func() {
				if err := m.Close(context.Background()); err != nil {
					t.Errorf("Close: %v", err)
				}
				if infos, _ := rt.List(context.Background()); len(infos) > 0 {
					t.Errorf("sandboxes left after Close: %+v", infos)
				}
				ents, _ := os.ReadDir(state)
				for _, e := range ents {
					if !strings.HasPrefix(e.Name(), ".") { // .runtime, .uids.lock
						t.Errorf("leftover sandbox directory %s", e.Name())
					}
				}
				parents, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", cgroupParent))
				parents = append(parents, filepath.Join("/sys/fs/cgroup", cgroupParent))
				for _, p := range parents {
					os.Remove(p)
				}
				os.RemoveAll(base)
			})
			start := time.Now()
			if err := m.Start(ctx); err != nil {
				t.Fatal(err)
			}
			waitReal(t, "two ready sandboxes", 60*time.Second, func() bool { c := m.Counts(); return c.Ready == 2 && c.Pending == 0 })
			t.Logf("%s: ready queue of 2 filled in %v", name, time.Since(start))

			// Exec through the lease's agent; files are kept per identifier.
			alice := acquireCtx(ctx, t, m, "alice")
			if got := run(ctx, t, alice, "echo hello"); got.Stdout != "hello\n" {
				t.Fatalf("echo: %+v", got)
			}
			run(ctx, t, alice, "echo alice-secret > note.txt")
			alice.Release()
			again := acquireCtx(ctx, t, m, "alice")
			if again.New || again.Session.SandboxID != alice.Session.SandboxID {
				t.Errorf("second request for alice: %s (new %v), want her session %s", again.Session.SandboxID, again.New, alice.Session.SandboxID)
			}
			if got := run(ctx, t, again, "cat note.txt"); got.Stdout != "alice-secret\n" {
				t.Errorf("alice's file: %+v", got)
			}
			bob := acquireCtx(ctx, t, m, "bob")
			if got := run(ctx, t, bob, "cat note.txt"); got.ExitCode == 0 {
				t.Errorf("bob sees alice's file: %+v", got)
			}

			// The cap.
			if _, err := m.Acquire(ctx, "carol"); !errkind.Is(err, errkind.LimitExceeded) {
				t.Errorf("a third session: %v, want LimitExceeded", err)
			}
			again.Release()
			bob.Release()

			// 1 s idle: destroyed; the next request gets a new sandbox.
			released := time.Now()
			waitReal(t, "the sessions to expire", 20*time.Second, func() bool { return len(m.Sessions()) == 0 })
			if idle := time.Since(released); idle < time.Second {
				t.Errorf("sessions expired after %v idle, before their 1 s cooldown", idle)
			}
			waitReal(t, "their sandboxes to be destroyed", 30*time.Second, func() bool {
				ids := liveIDs(t, rt)
				return !slices.Contains(ids, alice.Session.SandboxID) && !slices.Contains(ids, bob.Session.SandboxID)
			})
			fresh := acquireCtx(ctx, t, m, "alice")
			if !fresh.New || fresh.Session.SandboxID == alice.Session.SandboxID {
				t.Errorf("alice after expiry: %s (new %v), want a new sandbox", fresh.Session.SandboxID, fresh.New)
			}
			if got := run(ctx, t, fresh, "cat note.txt"); got.ExitCode == 0 {
				t.Errorf("a new session sees the old session's file: %+v", got)
			}
			fresh.Release()

			// A ready sandbox destroyed behind the pool's back is replaced.
			waitReal(t, "the ready queue to refill", 60*time.Second, func() bool { c := m.Counts(); return c.Ready == 2 && c.Pending == 0 })
			var victim string
			var readyIDs []string
			for _, id := range liveIDs(t, rt) {
				if id != fresh.Session.SandboxID {
					readyIDs = append(readyIDs, id)
				}
			}
			victim = readyIDs[0]
			if err := rt.Destroy(ctx, victim); err != nil {
				t.Fatal(err)
			}
			killed := time.Now()
			// Replaced: a sandbox that was not there before is ready.
			waitReal(t, "the destroyed sandbox to be replaced", 60*time.Second, func() bool {
				c := m.Counts()
				if c.Ready != 2 || c.Pending != 0 || c.Deleting != 0 {
					return false
				}
				for _, id := range liveIDs(t, rt) {
					if id != fresh.Session.SandboxID && !slices.Contains(readyIDs, id) {
						return true
					}
				}
				return false
			})
			t.Logf("%s: a dead ready sandbox was replaced in %v", name, time.Since(killed))

			// A session whose sandbox dies is dropped, though its lease (held here, so no
			// cooldown runs) would keep it; the identifier then gets a fresh sandbox.
			dave := acquireCtx(ctx, t, m, "dave")
			defer dave.Release()
			if err := rt.Destroy(ctx, dave.Session.SandboxID); err != nil {
				t.Fatal(err)
			}
			waitReal(t, "the dead session to be dropped", 30*time.Second, func() bool {
				l, err := m.Get(ctx, "dave")
				if err == nil {
					l.Release()
				}
				return errkind.Is(err, errkind.NotFound)
			})
			dave2 := acquireCtx(ctx, t, m, "dave")
			if got := run(ctx, t, dave2, "echo again"); !dave2.New || got.Stdout != "again\n" {
				t.Errorf("dave after his sandbox died: new %v, echo %+v", dave2.New, got)
			}
			dave2.Release()
		})
	}
}

func waitReal(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func acquireCtx(ctx context.Context, t *testing.T, m *Manager, identifier string) *Lease {
	t.Helper()
	l, err := m.Acquire(ctx, identifier)
	if err != nil {
		t.Fatalf("Acquire(%q): %v", identifier, err)
	}
	return l
}

func run(ctx context.Context, t *testing.T, l *Lease, shell string) agentapi.ExecResult {
	t.Helper()
	res, err := l.Agent.Exec(ctx, agentapi.ExecRequest{Shell: shell, TimeoutMS: 20000})
	if err != nil {
		t.Fatalf("exec %q in %s: %v", shell, l.Session.SandboxID, err)
	}
	return res
}

func liveIDs(t *testing.T, rt *oci.Runtime) []string {
	t.Helper()
	infos, err := rt.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, i := range infos {
		ids = append(ids, i.ID)
	}
	return ids
}
