package pool

import (
	"context"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/sandbox"
)

// TestUpdateRollsTheReadyQueue updates a running pool's template (a new image with its
// root filesystem, environment and warm-up): the ready sandboxes of the old template are
// replaced by new ones, while an allocated session keeps its sandbox and the state in it.
func TestUpdateRollsTheReadyQueue(t *testing.T) {
	var oldPrepared, newPrepared atomic.Int32
	fp := newFakePool(t, Spec{MaxConcurrentSessions: 4, ReadySessionInstances: 2, Image: "img-1"}, Options{
		Env: []string{"TEMPLATE=one"},
		Prepare: func(context.Context, sandbox.Info, *agentapi.Client) error {
			oldPrepared.Add(1)
			return nil
		},
	})
	fp.start(t)
	fp.waitReady(t, 2)
	alice := acquire(t, fp.m, "alice")
	defer alice.Release()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := alice.Agent.Exec(ctx, agentapi.ExecRequest{Shell: "echo kept > state.txt"}); err != nil {
		t.Fatal(err)
	}
	fp.waitReady(t, 2)
	before := fp.live(t)

	rootFS2 := t.TempDir()
	spec := fp.m.Spec()
	spec.Image = "img-2"
	spec.MaxConcurrentSessions = 3
	err := fp.m.Update(ctx, spec, UpdateOptions{RootFS: rootFS2, Env: []string{"TEMPLATE=two"},
		Prepare: func(context.Context, sandbox.Info, *agentapi.Client) error {
			newPrepared.Add(1)
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	if got := fp.m.Spec(); got.Image != "img-2" || got.MaxConcurrentSessions != 3 {
		t.Errorf("Spec after Update = %+v", got)
	}
	waitFor(t, "the ready queue to roll", func() bool {
		c := fp.m.Counts()
		return c.Ready == 2 && c.Pending == 0 && c.Outdated == 0 && c.Deleting == 0
	})
	after := fp.live(t)
	if len(after) != 3 || !slices.Contains(after, alice.Session.SandboxID) {
		t.Fatalf("sandboxes after the roll = %v, want alice's %s and two new ones", after, alice.Session.SandboxID)
	}
	for _, id := range after {
		if id == alice.Session.SandboxID {
			continue
		}
		if slices.Contains(before, id) {
			t.Errorf("ready sandbox %s of the old template survived the update", id)
		}
		if info := fp.info(t, id); info.Image != "img-2" {
			t.Errorf("new sandbox %s has image %q, want img-2", id, info.Image)
		}
		res, err := fp.rt.Agent(id).Exec(ctx, agentapi.ExecRequest{Shell: "echo $TEMPLATE"})
		if err != nil || strings.TrimSpace(res.Stdout) != "two" {
			t.Errorf("new sandbox %s environment: %q, %v", id, res.Stdout, err)
		}
	}
	if newPrepared.Load() != 2 || oldPrepared.Load() != 3 {
		t.Errorf("prepared %d sandboxes with the new hook and %d with the old, want 2 and 3", newPrepared.Load(), oldPrepared.Load())
	}

	// alice's session is untouched: same sandbox, same files, same identifier.
	again := acquire(t, fp.m, "alice")
	defer again.Release()
	if again.Session.SandboxID != alice.Session.SandboxID {
		t.Errorf("alice moved from %s to %s", alice.Session.SandboxID, again.Session.SandboxID)
	}
	res, err := again.Agent.Exec(ctx, agentapi.ExecRequest{Shell: "cat state.txt; echo $TEMPLATE"})
	if err != nil || res.Stdout != "kept\none\n" {
		t.Errorf("alice's session after the update: %q, %v", res.Stdout, err)
	}
	// A new identifier gets a sandbox of the new template.
	bob := acquire(t, fp.m, "bob")
	defer bob.Release()
	if info := fp.info(t, bob.Session.SandboxID); info.Image != "img-2" {
		t.Errorf("bob got a sandbox of image %q", info.Image)
	}
}

// TestUpdateInPlace changes scale and lifecycle properties: no sandbox is replaced.
func TestUpdateInPlace(t *testing.T) {
	fp := newFakePool(t, Spec{MaxConcurrentSessions: 2, ReadySessionInstances: 1}, Options{})
	fp.start(t)
	fp.waitReady(t, 1)
	before := fp.live(t)
	spec := fp.m.Spec()
	spec.ReadySessionInstances = 2
	spec.CooldownPeriod = 2 * time.Minute
	spec.ExecutionTimeoutCap = time.Minute
	if err := fp.m.Update(context.Background(), spec, UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	fp.waitReady(t, 2)
	after := fp.live(t)
	if !slices.Contains(after, before[0]) {
		t.Errorf("the ready sandbox %s was replaced by an in-place update: %v", before[0], after)
	}
	if c := fp.m.Counts(); c.Outdated != 0 {
		t.Errorf("counts after an in-place update: %+v", c)
	}
	if got := fp.m.Spec(); got.CooldownPeriod != 2*time.Minute || got.ExecutionTimeoutCap != time.Minute {
		t.Errorf("Spec = %+v", got)
	}
}

// TestUpdateRefuses: what cannot change is refused as Invalid, and the pool keeps its spec.
func TestUpdateRefuses(t *testing.T) {
	fp := newFakePool(t, Spec{MaxConcurrentSessions: 2, ReadySessionInstances: 0, Runtime: "runc"}, Options{})
	fp.start(t)
	orig := fp.m.Spec()
	for name, change := range map[string]func(*Spec){
		"name":          func(s *Spec) { s.Name = "other-pool" },
		"containerType": func(s *Spec) { s.ContainerType = Shell },
		"runtime":       func(s *Spec) { s.Runtime = "runsc" },
		"image":         func(s *Spec) { s.Image = "another" }, // without its root filesystem
		"invalid":       func(s *Spec) { s.MaxConcurrentSessions = 0 },
	} {
		s := orig
		change(&s)
		err := fp.m.Update(context.Background(), s, UpdateOptions{})
		if !errkind.Is(err, errkind.Invalid) {
			t.Errorf("%s: Update = %v, want Invalid", name, err)
		} else if msg, _ := errkind.PublicMessage(err); name != "invalid" && name != "image" && !strings.Contains(msg, name) {
			t.Errorf("%s: the error does not name the property: %q", name, msg)
		}
	}
	if got := fp.m.Spec(); !reflect.DeepEqual(got, orig) {
		t.Errorf("Spec changed by refused updates: %+v", got)
	}
}

// TestUpdateNotRunning: a pool that is not running cannot be updated.
func TestUpdateNotRunning(t *testing.T) {
	fp := newFakePool(t, Spec{MaxConcurrentSessions: 1}, Options{})
	if err := fp.m.Update(context.Background(), fp.m.Spec(), UpdateOptions{}); !errkind.Is(err, errkind.Unavailable) {
		t.Errorf("Update before Start = %v, want Unavailable", err)
	}
}
