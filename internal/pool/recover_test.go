package pool

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/sandbox"
	"github.com/sessiond/sessiond/internal/sandbox/sandboxtest"
	"github.com/sessiond/sessiond/internal/store"
)

// TestRestartAdoptsSessions runs one pool in two managers, one after the other, as two
// control-plane processes: the first records its sessions and detaches; the second adopts
// them with their state, resumes their cooldowns from the recorded times, and destroys
// what it cannot adopt.
func TestRestartAdoptsSessions(t *testing.T) {
	ctx := context.Background()
	mem, err := store.NewMemory(store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := store.NewAsync(mem, store.AsyncOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := rec.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rec.Close(ctx) })
	const cooldown = 10 * time.Minute
	spec := Spec{Name: "test-pool", MaxConcurrentSessions: 4, ReadySessionInstances: 1, CooldownPeriod: cooldown}
	fp := newFakePool(t, spec, Options{Recorder: rec})
	fp.start(t)
	fp.waitReady(t, 1)

	alice := acquire(t, fp.m, "alice")
	res, err := alice.Agent.Exec(ctx, agentapi.ExecRequest{Shell: "echo kept > state.txt"})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("writing alice's file: %+v, %v", res, err)
	}
	alice.Release()
	acquire(t, fp.m, "bob").Release()
	fp.clock.Advance(time.Minute)
	acquire(t, fp.m, "alice").Release()
	aliceUsed := fp.clock.Now()
	before := map[string]string{}
	for _, s := range fp.m.Sessions() {
		before[s.Identifier] = s.SandboxID
	}
	// A sandbox of the pool that no record names (a create in flight at the crash).
	stray, err := fp.rt.Create(ctx, sandbox.Spec{RootFS: "/", Labels: map[string]string{LabelPool: spec.Name}})
	if err != nil {
		t.Fatal(err)
	}
	if err := fp.m.Detach(ctx); err != nil {
		t.Fatalf("Detach: %v", err)
	}
	if err := rec.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := fp.m.Get(ctx, "alice"); !errkind.Is(err, errkind.Unavailable) {
		t.Errorf("Get after Detach: %v, want Unavailable", err)
	}
	recs, err := mem.ListSessions(ctx, spec.Name)
	if err != nil || len(recs) != 2 {
		t.Fatalf("records after Detach: %+v, %v; want alice and bob", recs, err)
	}
	for _, r := range recs {
		if r.SandboxID != before[r.Identifier] || r.Runtime != fp.rt.Name() {
			t.Errorf("record %+v, want sandbox %s", r, before[r.Identifier])
		}
	}
	// A record whose sandbox is gone.
	recs = append(recs, store.Session{Pool: spec.Name, Identifier: "carol", SandboxID: "sb-0000000000000000", CreatedAt: aliceUsed, LastRequestAt: aliceUsed})
	if err := mem.PutSession(ctx, recs[len(recs)-1]); err != nil {
		t.Fatal(err)
	}

	// The next process: a runtime over the same state, the recorded sessions.
	rt2 := &sandboxtest.Fake{AgentBinary: agentBin, StateDir: fp.rt.StateDir}
	m2, err := New(Spec{Name: spec.Name, MaxConcurrentSessions: 4, ReadySessionInstances: 1, CooldownPeriod: cooldown},
		Options{Runtime: rt2, RootFS: "/", Clock: fp.clock, Recorder: rec, Recovered: recs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := m2.Close(cctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	if err := m2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	after := map[string]SessionInfo{}
	for _, s := range m2.Sessions() {
		after[s.Identifier] = s
	}
	if len(after) != 2 || after["alice"].SandboxID != before["alice"] || after["bob"].SandboxID != before["bob"] {
		t.Fatalf("adopted sessions %+v, want alice and bob on %v", after, before)
	}
	if want := aliceUsed.Add(cooldown); !after["alice"].ExpiresAt.Equal(want) {
		t.Errorf("alice expires at %v, want %v (the recorded last use + cooldown)", after["alice"].ExpiresAt, want)
	}
	l, err := m2.Get(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	res, err = l.Agent.Exec(ctx, agentapi.ExecRequest{Shell: "cat state.txt"})
	l.Release()
	if err != nil || strings.TrimSpace(res.Stdout) != "kept" {
		t.Errorf("alice's file after the restart: %+v, %v", res, err)
	}
	waitFor(t, "the stray sandbox to be destroyed and the ready queue refilled", func() bool {
		infos, _ := rt2.List(ctx)
		ids := make([]string, 0, len(infos))
		for _, i := range infos {
			ids = append(ids, i.ID)
		}
		c := m2.Counts()
		return !slices.Contains(ids, stray.ID) && c.Ready == 1 && c.Allocated == 2
	})
	if err := rec.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := mem.GetSession(ctx, spec.Name, "carol"); !errkind.Is(err, errkind.NotFound) {
		t.Errorf("carol's record (no sandbox) after Start: %v, want it forgotten", err)
	}
	// Bob's cooldown runs on from its recorded last use.
	fp.clock.Advance(cooldown - time.Minute)
	waitFor(t, "bob's session to expire", func() bool {
		_, err := m2.Get(ctx, "bob")
		return errkind.Is(err, errkind.NotFound)
	})
	if err := rec.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := mem.GetSession(ctx, spec.Name, "bob"); !errkind.Is(err, errkind.NotFound) {
		t.Errorf("bob's record after expiry: %v, want it deleted", err)
	}
}
