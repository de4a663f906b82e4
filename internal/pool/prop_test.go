package pool

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"pgregory.net/rapid"
)

// TestPropertiesOfThePool drives the core with random sequences of requests, runtime
// results (successes and failures, in any order), updates of the spec (caps, lifecycle,
// template) and clock moves, and checks after every
// event that the pool never goes above its caps, that an identifier never maps to two
// sandboxes, that a sandbox is never bound to two identifiers nor returned to the ready
// queue, and that sessions expire exactly at their cooldown or maximum lifetime. At the
// end it lets the runtime succeed and time pass, and checks that the ready count
// converges to ReadySessionInstances of the current template (or, after close, that
// nothing is left). Above caps an update lowered, the numbers never grow.
func TestPropertiesOfThePool(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		spec := Spec{
			Name:                  "prop",
			MaxConcurrentSessions: rapid.IntRange(1, 4).Draw(t, "max"),
			ReadySessionInstances: rapid.IntRange(0, 3).Draw(t, "ready"),
			LifecycleType:         rapid.SampledFrom([]string{LifecycleTimed, LifecycleTimed, LifecycleOnContainerExit}).Draw(t, "lifecycle"),
			MaxAlivePeriod:        rapid.SampledFrom([]time.Duration{0, 0, 7 * time.Second, time.Minute}).Draw(t, "maxAlive"),
		}
		if spec.LifecycleType == LifecycleTimed {
			spec.CooldownPeriod = rapid.SampledFrom([]time.Duration{time.Second, 10 * time.Second}).Draw(t, "cooldown")
		}
		p := policy{
			Spec:               spec,
			CreateParallelism:  rapid.IntRange(1, 3).Draw(t, "createPar"),
			DestroyParallelism: rapid.IntRange(1, 2).Draw(t, "destroyPar"),
			ProbeParallelism:   rapid.IntRange(1, 2).Draw(t, "probePar"),
			HealthInterval:     rapid.SampledFrom([]time.Duration{0, 5 * time.Second}).Draw(t, "health"),
			ProbeRetry:         time.Second,
			DeadAfter:          2,
			SurplusGrace:       30 * time.Second,
			RefillDelay:        rapid.SampledFrom([]time.Duration{0, 300 * time.Millisecond}).Draw(t, "refillDelay"),
		}
		s := newSim(p)
		ok := func(err error) {
			if err != nil {
				t.Fatal(err)
			}
			if err := s.check(); err != nil {
				t.Fatalf("%v\nstate:\n%s", err, dumpState(s))
			}
		}
		ok(s.step())
		identifiers := []string{"a", "b", "c", "d", "e"}
		failure := errors.New("injected failure")
		closed := false

		t.Repeat(map[string]func(*rapid.T){
			"acquire": func(t *rapid.T) {
				ok(s.acquire(rapid.SampledFrom(identifiers).Draw(t, "identifier"), rapid.IntRange(0, 4).Draw(t, "create") > 0))
			},
			"release": func(t *rapid.T) {
				if len(s.leases) == 0 {
					t.Skip("no lease")
				}
				ok(s.release(rapid.SampledFrom(s.leases).Draw(t, "lease")))
			},
			"withdraw": func(t *rapid.T) {
				var waiting []string
				for id := range s.requests {
					waiting = append(waiting, id)
				}
				if len(waiting) == 0 {
					t.Skip("nobody waits")
				}
				slicesSort(waiting)
				ok(s.withdraw(rapid.SampledFrom(waiting).Draw(t, "identifier")))
			},
			"delete": func(t *rapid.T) {
				ok(s.remove(rapid.SampledFrom(identifiers).Draw(t, "identifier")))
			},
			"complete": func(t *rapid.T) {
				if len(s.ops) == 0 {
					t.Skip("nothing in flight")
				}
				op := rapid.SampledFrom(s.ops).Draw(t, "op")
				var err error
				if rapid.IntRange(0, 3).Draw(t, "fail") == 0 {
					err = failure
				}
				ok(s.complete(op.kind, op.id, err))
			},
			"advance": func(t *rapid.T) {
				ok(s.advance(rapid.SampledFrom([]time.Duration{0, time.Millisecond, 999 * time.Millisecond, time.Second, 3 * time.Second, 10 * time.Second, time.Minute}).Draw(t, "d")))
			},
			"update": func(t *rapid.T) {
				if closed {
					t.Skip("closed")
				}
				np := s.pol
				np.Spec.MaxConcurrentSessions = rapid.IntRange(1, 4).Draw(t, "newMax")
				np.Spec.ReadySessionInstances = rapid.IntRange(0, 3).Draw(t, "newReady")
				np.Spec.MaxAlivePeriod = rapid.SampledFrom([]time.Duration{0, 7 * time.Second, time.Minute}).Draw(t, "newMaxAlive")
				if np.Spec.LifecycleType == LifecycleTimed {
					np.Spec.CooldownPeriod = rapid.SampledFrom([]time.Duration{time.Second, 10 * time.Second}).Draw(t, "newCooldown")
				}
				ok(s.update(np, rapid.Bool().Draw(t, "template")))
			},
			"close": func(t *rapid.T) {
				if closed || rapid.IntRange(0, 9).Draw(t, "close") != 0 {
					t.Skip("not closing")
				}
				closed = true
				ok(s.close())
			},
		})

		// Quiesce: clients go away, the runtime succeeds, time passes.
		for len(s.leases) > 0 {
			ok(s.release(s.leases[0]))
		}
		for id, n := range s.requests {
			for range n {
				ok(s.withdraw(id))
			}
		}
		spec = s.pol.Spec // as updated
		if spec.LifecycleType == LifecycleOnContainerExit && spec.MaxAlivePeriod == 0 {
			// Such sessions live until their sandbox dies or they are deleted.
			for _, id := range identifiers {
				ok(s.remove(id))
			}
		}
		for i := 0; ; i++ {
			if i > 1000 {
				t.Fatalf("no convergence:\n%s", dumpState(s))
			}
			if len(s.ops) > 0 {
				op := s.ops[0]
				ok(s.complete(op.kind, op.id, nil))
				continue
			}
			c := s.st.counts()
			if closed {
				if s.st.done() {
					break
				}
			} else if c.Pending == 0 && c.Allocated == 0 && c.Deleting == 0 && c.Outdated == 0 && c.Ready == spec.ReadySessionInstances {
				break
			}
			if s.wake.IsZero() {
				t.Fatalf("stuck, nothing in flight and no wake-up:\n%s", dumpState(s))
			}
			ok(s.advance(s.wake.Sub(s.now)))
		}
	})
}

func slicesSort(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

func dumpState(s *sim) string {
	out := fmt.Sprintf("now %s, in flight %+v (%v), waiting %d, createAfter %s\n", s.rel(s.now), s.st.fl, s.ops, len(s.st.waiting), s.rel(s.st.createAfter))
	for _, b := range s.st.boxes {
		out += fmt.Sprintf("  %s %s %q leases=%d alloc=%s last=%s probeFail=%d\n", b.ID, b.State, b.Identifier, b.Leases, s.rel(b.AllocatedAt), s.rel(b.LastAccess), b.ProbeFailures)
	}
	return out
}
