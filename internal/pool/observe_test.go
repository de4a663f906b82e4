package pool

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/sandbox"
)

// recorder is an Observer that remembers what it was told.
type recordingObserver struct {
	mu          sync.Mutex
	transitions []Transition
	phases      []string
	allocations []string
}

func (o *recordingObserver) Transition(pool string, t Transition) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if pool != "test-pool" {
		panic("observed pool " + pool)
	}
	o.transitions = append(o.transitions, t)
}

func (o *recordingObserver) Phase(pool string, p Phase, d time.Duration, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.phases = append(o.phases, fmt.Sprintf("%s %v", p, err != nil))
	if d <= 0 {
		o.phases = append(o.phases, "non-positive duration")
	}
}

func (o *recordingObserver) Allocated(pool string, d time.Duration, cold bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.allocations = append(o.allocations, map[bool]string{false: "warm", true: "cold"}[cold])
}

// changes renders the transitions of sandbox id (all if "") as "from>to reason".
func (o *recordingObserver) changes(id string) []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []string
	for _, t := range o.transitions {
		if id == "" || t.SandboxID == id {
			out = append(out, fmt.Sprintf("%s>%s %s", t.From, t.To, t.Reason))
		}
	}
	return out
}

func (o *recordingObserver) get() (phases, allocations []string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.phases), slices.Clone(o.allocations)
}

// TestObserver: the observer sees each sandbox's transitions with their reasons, the
// timed start phases (and a failed one), and each allocation as warm or cold. Observers
// tells every observer it combines.
func TestObserver(t *testing.T) {
	var o1, o2 recordingObserver
	var prepares atomic.Int32
	fp := newFakePool(t, Spec{MaxConcurrentSessions: 3, ReadySessionInstances: 1, CooldownPeriod: 10 * time.Second}, Options{
		Observer: Observers(&o1, nil, &o2),
		Prepare: func(ctx context.Context, _ sandbox.Info, ag *agentapi.Client) error {
			if prepares.Add(1) == 1 {
				return errors.New("warm-up failed")
			}
			_, err := ag.Health(ctx)
			return err
		},
	})
	fp.start(t)
	waitFor(t, "the failed start", func() bool { return fp.m.LastError() != nil })
	fp.clock.Advance(time.Second) // back-off
	fp.waitReady(t, 1)

	// Warm: the ready sandbox. Cold: the second identifier, with creates held back until
	// it waits.
	fp.block.Store(true)
	warm := acquire(t, fp.m, "warm-1")
	waitFor(t, "the refill to start", func() bool { return fp.m.Counts().Pending == 1 })
	done := make(chan *Lease)
	go func() { done <- acquire(t, fp.m, "cold-1") }()
	waitFor(t, "the cold request to wait", func() bool { return fp.m.Counts().Waiting == 1 })
	fp.block.Store(false)
	fp.unblockCreates()
	cold := <-done
	cold.Release()
	warm.Release()
	fp.sync()
	fp.clock.Advance(10 * time.Second)
	waitFor(t, "the cooldown", func() bool { return len(fp.m.Sessions()) == 0 && fp.m.Counts().Deleting == 0 })
	// The refills end before the phases are read: a worker reports its phases before its
	// sandbox leaves Pending, so a create whose prepare is still running is not counted.
	waitFor(t, "the refills", func() bool { c := fp.m.Counts(); return c.Pending == 0 && c.Ready == 1 })

	for _, o := range []*recordingObserver{&o1, &o2} {
		phases, allocations := o.get()
		// The first start fails in prepare, the second succeeds; then concurrent starts.
		if diff := cmp.Diff([]string{"create false", "prepare true", "create false", "prepare false"}, phases[:4]); diff != "" {
			t.Errorf("phases (-want +got):\n%s", diff)
		}
		rest := phases[4:]
		slices.Sort(rest)
		if n := len(rest) / 2; n < 1 || !slices.Equal(rest[:n], slices.Repeat([]string{"create false"}, n)) ||
			!slices.Equal(rest[n:], slices.Repeat([]string{"prepare false"}, len(rest)-n)) {
			t.Errorf("later phases = %q, want successful creates and prepares in pairs", rest)
		}
		if diff := cmp.Diff([]string{"warm", "cold"}, allocations); diff != "" {
			t.Errorf("allocations (-want +got):\n%s", diff)
		}
		want := []string{">Pending ", "Pending>Ready ", "Ready>Allocated ", "Allocated>Deleting cooldown", "Deleting>Destroyed "}
		for _, id := range []string{warm.Session.SandboxID, cold.Session.SandboxID} {
			if diff := cmp.Diff(want, o.changes(id)); diff != "" {
				t.Errorf("transitions of %s (-want +got):\n%s", id, diff)
			}
		}
		if !slices.Contains(o.changes(""), "Pending>Destroyed "+ReasonCreateFailed) {
			t.Errorf("no failed create among %q", o.changes(""))
		}
	}
}
