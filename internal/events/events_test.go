package events

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"

	"github.com/sessiond/sessiond/internal/pool"
)

func seqs(evs []Event) []uint64 {
	var out []uint64
	for _, e := range evs {
		out = append(out, e.Seq)
	}
	return out
}

// TestRingBoundedAndOrdered: each pool keeps its last Size events, oldest first, whatever
// the other pools do.
func TestRingBoundedAndOrdered(t *testing.T) {
	l := New(5)
	for i := range 12 {
		l.Add(Event{Pool: "a", Kind: SandboxReady, Message: fmt.Sprint(i)})
		if i%4 == 0 {
			l.Add(Event{Pool: "b", Kind: SandboxReady})
		}
	}
	// a got seqs 1,3,4,5,6,8,9,10,11,13,14,15; b got 2,7,12.
	if diff := cmp.Diff([]uint64{10, 11, 13, 14, 15}, seqs(l.List("a", Query{}))); diff != "" {
		t.Errorf("pool a (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]uint64{2, 7, 12}, seqs(l.List("b", Query{}))); diff != "" {
		t.Errorf("pool b (-want +got):\n%s", diff)
	}
	if got := seqs(l.List("a", Query{Tail: 2})); !cmp.Equal(got, []uint64{14, 15}) {
		t.Errorf("tail 2 = %v", got)
	}
	if got := seqs(l.List("a", Query{After: 13, Tail: 10})); !cmp.Equal(got, []uint64{14, 15}) {
		t.Errorf("after 13 = %v", got)
	}
	if got := l.List("nope", Query{}); got != nil {
		t.Errorf("unknown pool = %v", got)
	}
	l.Forget("a")
	if got := l.List("a", Query{}); got != nil {
		t.Errorf("forgotten pool = %v", got)
	}
	if got := seqs(l.List("b", Query{})); !cmp.Equal(got, []uint64{2, 7, 12}) {
		t.Errorf("pool b after forgetting a = %v", got)
	}
}

func TestDefaultSizeAndTime(t *testing.T) {
	l := New(0)
	for range DefaultSize + 10 {
		l.Add(Event{Pool: "p"})
	}
	evs := l.List("p", Query{})
	if len(evs) != DefaultSize || evs[0].Seq != 11 {
		t.Fatalf("%d events from seq %d, want %d from 11", len(evs), evs[0].Seq, DefaultSize)
	}
	if evs[0].Time.IsZero() || evs[0].Time.Location() != time.UTC {
		t.Errorf("time = %v, want now in UTC", evs[0].Time)
	}
}

func TestMessageBounded(t *testing.T) {
	l := New(1)
	l.Add(Event{Pool: "p", Message: strings.Repeat("é", maxMessage)})
	m := l.List("p", Query{})[0].Message
	if len(m) > maxMessage+len("…") || !utf8.ValidString(m) || !strings.HasSuffix(m, "…") {
		t.Errorf("message of %d bytes (valid %v)", len(m), utf8.ValidString(m))
	}
}

// TestConcurrentAdd: the ring is safe for concurrent writers and readers (run with -race).
func TestConcurrentAdd(t *testing.T) {
	l := New(50)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for range 200 {
				l.Add(Event{Pool: fmt.Sprint("p", w%2)})
				l.List("p0", Query{Tail: 3})
			}
		})
	}
	wg.Wait()
	for _, p := range []string{"p0", "p1"} {
		evs := l.List(p, Query{})
		if len(evs) != 50 {
			t.Errorf("%s: %d events", p, len(evs))
		}
		for i := 1; i < len(evs); i++ {
			if evs[i].Seq <= evs[i-1].Seq {
				t.Fatalf("%s: out of order: %v", p, seqs(evs))
			}
		}
	}
}

// TestTransitions: what each state change of a pool records.
func TestTransitions(t *testing.T) {
	boom := errors.New("boom")
	type ev struct {
		Category   Category
		Kind       Kind
		Identifier string
		Reason     string
		Message    string
	}
	for _, tc := range []struct {
		name string
		t    pool.Transition
		want []ev
	}{
		{"create issued", pool.Transition{To: pool.StatePending}, nil},
		{"ready", pool.Transition{From: pool.StatePending, To: pool.StateReady}, []ev{{Pool, SandboxReady, "", "", ""}}},
		{"create failed", pool.Transition{From: pool.StatePending, To: pool.StateDestroyed, Reason: pool.ReasonCreateFailed, Err: boom},
			[]ev{{Pool, SandboxCreateFailed, "", pool.ReasonCreateFailed, "boom"}}},
		{"allocated", pool.Transition{From: pool.StateReady, To: pool.StateAllocated, Identifier: "id-1"},
			[]ev{{Session, SessionAllocated, "id-1", "", ""}}},
		{"recovered", pool.Transition{To: pool.StateAllocated, Identifier: "id-1", Reason: pool.ReasonRecovered},
			[]ev{{Session, SessionRecovered, "id-1", pool.ReasonRecovered, ""}}},
		{"detached", pool.Transition{From: pool.StateAllocated, To: pool.StateAllocated, Identifier: "id-1", Reason: pool.ReasonDetached},
			[]ev{{Session, SessionDetached, "id-1", pool.ReasonDetached, ""}}},
		{"cooldown", pool.Transition{From: pool.StateAllocated, To: pool.StateDeleting, Identifier: "id-1", Reason: pool.ReasonCooldown},
			[]ev{{Session, SessionEnded, "id-1", pool.ReasonCooldown, ""}}},
		{"session died", pool.Transition{From: pool.StateAllocated, To: pool.StateDeleting, Identifier: "id-1", Reason: pool.ReasonDead},
			[]ev{{Session, SessionEnded, "id-1", pool.ReasonDead, ""}, {Pool, SandboxDied, "id-1", pool.ReasonDead, ""}}},
		{"ready died", pool.Transition{From: pool.StateReady, To: pool.StateDeleting, Reason: pool.ReasonDead},
			[]ev{{Pool, SandboxDied, "", pool.ReasonDead, ""}}},
		{"surplus", pool.Transition{From: pool.StateReady, To: pool.StateDeleting, Reason: pool.ReasonSurplus},
			[]ev{{Pool, SandboxRetired, "", pool.ReasonSurplus, ""}}},
		{"destroy retried", pool.Transition{From: pool.StateDeleting, To: pool.StateDeleting, Reason: pool.ReasonDestroyFailed, Err: boom},
			[]ev{{Pool, SandboxDestroyFailed, "", pool.ReasonDestroyFailed, "boom"}}},
		{"destroy given up", pool.Transition{From: pool.StateDeleting, To: pool.StateDestroyed, Err: boom},
			[]ev{{Pool, SandboxDestroyFailed, "", "", "gave up destroying the sandbox: boom"}}},
		{"destroyed", pool.Transition{From: pool.StateDeleting, To: pool.StateDestroyed, Identifier: "id-1"},
			[]ev{{Pool, SandboxDestroyed, "id-1", "", ""}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := New(10)
			tc.t.SandboxID = "sb-1"
			tc.t.At = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
			l.Transition("p", tc.t)
			var got []ev
			for _, e := range l.List("p", Query{}) {
				if e.SandboxID != "sb-1" || !e.Time.Equal(tc.t.At) || e.Pool != "p" {
					t.Errorf("event %+v lacks the sandbox, time or pool", e)
				}
				got = append(got, ev{e.Category, e.Kind, e.Identifier, e.Reason, e.Message})
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("events (-want +got):\n%s", diff)
			}
		})
	}
}
