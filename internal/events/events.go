// Package events keeps each pool's recent lifecycle events in memory: sessions allocated,
// recovered and ended (the equivalent of Azure's AppEnvSessionLifecycleLogs), and
// sandboxes started, failed, died and destroyed, and changes to the pool itself (of
// AppEnvSessionPoolEvents). A Log is a pool.Observer; internal/api serves it at
// GET /v1/pools/{pool}/events.
//
// It keeps the last Size events of each pool and drops older ones; nothing is written to
// disk, so a restarted process starts empty. It is not the process's structured log
// (every state change is logged there too) and not a metrics store (internal/metrics).
// Imported by internal/api and cmd/sessiond; it imports pool.
package events

import (
	"slices"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/sessiond/sessiond/internal/pool"
)

// DefaultSize is how many events a Log keeps per pool by default.
const DefaultSize = 1000

// maxMessage bounds an event's message (an error's text), in bytes.
const maxMessage = 1000

// Category says which of Azure's log tables an event belongs to.
type Category string

const (
	// Session events are about sessions (AppEnvSessionLifecycleLogs).
	Session Category = "Session"
	// Pool events are about sandboxes and the pool (AppEnvSessionPoolEvents).
	Pool Category = "Pool"
)

// Kind is what happened.
type Kind string

// Session events.
const (
	// SessionAllocated: an identifier was bound to a sandbox.
	SessionAllocated Kind = "SessionAllocated"
	// SessionRecovered: a session an earlier process left running was adopted.
	SessionRecovered Kind = "SessionRecovered"
	// SessionEnded: a session was taken out of service; Reason says why (cooldown,
	// max-alive, dead, deleted, closing).
	SessionEnded Kind = "SessionEnded"
	// SessionDetached: a session was left running for the next process at shutdown.
	SessionDetached Kind = "SessionDetached"
)

// Pool events.
const (
	// SandboxReady: a sandbox started (and warmed up) and joined the ready queue.
	SandboxReady Kind = "SandboxReady"
	// SandboxCreateFailed: a sandbox could not be started; Message holds the error.
	SandboxCreateFailed Kind = "SandboxCreateFailed"
	// SandboxDied: a sandbox's agent stopped answering; it is destroyed.
	SandboxDied Kind = "SandboxDied"
	// SandboxRetired: a ready sandbox was taken out of service (Reason: surplus, closing).
	SandboxRetired Kind = "SandboxRetired"
	// SandboxDestroyed: a sandbox is gone.
	SandboxDestroyed Kind = "SandboxDestroyed"
	// SandboxDestroyFailed: destroying a sandbox failed (Message); it is retried, and
	// given up after a few attempts.
	SandboxDestroyFailed Kind = "SandboxDestroyFailed"
	// PoolStarted, PoolScaled (readySessionInstances or maxConcurrentSessions changed),
	// PoolUpdated (the template changed) and PoolStopped are recorded by the control
	// plane with Log.Add.
	PoolStarted Kind = "PoolStarted"
	PoolScaled  Kind = "PoolScaled"
	PoolUpdated Kind = "PoolUpdated"
	PoolStopped Kind = "PoolStopped"
)

// Event is one thing that happened in a pool. Its JSON form is what the API serves.
type Event struct {
	// Seq numbers the events of a Log, increasing from 1 across all pools: a reader asks
	// for the events after the last Seq it saw.
	Seq      uint64    `json:"seq"`
	Time     time.Time `json:"time"`
	Pool     string    `json:"pool"`
	Category Category  `json:"category"`
	Kind     Kind      `json:"kind"`
	// Identifier is the session's, for events about a bound sandbox.
	Identifier string `json:"identifier,omitempty"`
	SandboxID  string `json:"sandboxId,omitempty"`
	Reason     string `json:"reason,omitempty"`
	Message    string `json:"message,omitempty"`
}

// Log holds the recent events of every pool. It is safe for concurrent use; its methods
// never block on anything but its own short critical sections, so a pool's owner
// goroutine can call them.
type Log struct {
	size int

	mu sync.Mutex
	// seq is the last Seq given. Guarded by mu.
	seq uint64
	// pools are the events by pool. Guarded by mu.
	pools map[string]*ring
}

var _ pool.Observer = (*Log)(nil)

// New returns a Log that keeps the last size events of each pool (DefaultSize if
// size <= 0).
func New(size int) *Log {
	if size <= 0 {
		size = DefaultSize
	}
	return &Log{size: size, pools: map[string]*ring{}}
}

// Add records e, numbering it, and dropping the pool's oldest event if it has Size.
// A zero Time is now.
func (l *Log) Add(e Event) {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	e.Time = e.Time.UTC()
	e.Message = truncate(e.Message, maxMessage)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seq++
	e.Seq = l.seq
	r := l.pools[e.Pool]
	if r == nil {
		r = &ring{buf: make([]Event, 0, min(l.size, 64)), size: l.size}
		l.pools[e.Pool] = r
	}
	r.add(e)
}

// Query selects events. The zero value selects all of a pool's events.
type Query struct {
	// After selects events with a larger Seq.
	After uint64
	// Category and Identifier, when set, select events with that value.
	Category   Category
	Identifier string
	// Tail, when positive, keeps only the last Tail selected events.
	Tail int
}

// List returns the pool's selected events, oldest first (nil for a pool with none).
func (l *Log) List(pool string, q Query) []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.pools[pool]
	if r == nil {
		return nil
	}
	var out []Event
	for e := range r.all() {
		if e.Seq > q.After && (q.Category == "" || e.Category == q.Category) && (q.Identifier == "" || e.Identifier == q.Identifier) {
			out = append(out, e)
		}
	}
	if q.Tail > 0 && len(out) > q.Tail {
		out = slices.Clone(out[len(out)-q.Tail:])
	}
	return out
}

// Forget drops the pool's events (after the pool is deleted).
func (l *Log) Forget(pool string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.pools, pool)
}

// Transition implements pool.Observer: it records the events a state change means.
func (l *Log) Transition(poolName string, t pool.Transition) {
	e := Event{Time: t.At, Pool: poolName, Category: Pool, SandboxID: t.SandboxID, Identifier: t.Identifier, Reason: t.Reason}
	if t.Err != nil {
		e.Message = t.Err.Error()
	}
	add := func(c Category, k Kind) {
		e.Category, e.Kind = c, k
		l.Add(e)
	}
	switch {
	case t.From == pool.StatePending && t.To == pool.StateReady:
		add(Pool, SandboxReady)
	case t.From == pool.StatePending && t.To == pool.StateDestroyed:
		add(Pool, SandboxCreateFailed)
	case t.From == pool.StateReady && t.To == pool.StateAllocated:
		add(Session, SessionAllocated)
	case t.To == pool.StateAllocated && t.Reason == pool.ReasonRecovered:
		add(Session, SessionRecovered)
	case t.From == pool.StateAllocated && t.To == pool.StateAllocated && t.Reason == pool.ReasonDetached:
		add(Session, SessionDetached)
	case t.To == pool.StateDeleting && t.From != pool.StateDeleting:
		if t.From == pool.StateAllocated {
			add(Session, SessionEnded)
		}
		switch {
		case t.Reason == pool.ReasonDead:
			add(Pool, SandboxDied)
		case t.From == pool.StateReady:
			add(Pool, SandboxRetired)
		}
	case t.To == pool.StateDeleting && t.Err != nil:
		add(Pool, SandboxDestroyFailed)
	case t.To == pool.StateDestroyed && t.Err != nil:
		e.Message = "gave up destroying the sandbox: " + e.Message
		add(Pool, SandboxDestroyFailed)
	case t.To == pool.StateDestroyed:
		add(Pool, SandboxDestroyed)
	}
}

// Phase implements pool.Observer; a failed phase is recorded by the Transition that
// follows it.
func (l *Log) Phase(string, pool.Phase, time.Duration, error) {}

// Allocated implements pool.Observer; the allocation is recorded by its Transition.
func (l *Log) Allocated(string, time.Duration, bool) {}

// ring is a pool's last events.
type ring struct {
	buf  []Event
	size int
	// next is where the next event goes once buf is full.
	next int
}

func (r *ring) add(e Event) {
	if len(r.buf) < r.size {
		r.buf = append(r.buf, e)
		return
	}
	r.buf[r.next] = e
	r.next = (r.next + 1) % r.size
}

// all yields the events oldest first.
func (r *ring) all() func(yield func(Event) bool) {
	return func(yield func(Event) bool) {
		for i := range r.buf {
			if !yield(r.buf[(r.next+i)%len(r.buf)]) {
				return
			}
		}
	}
}

// truncate cuts s to at most n bytes, at a character boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
