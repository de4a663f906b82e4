// Package pooltest holds test doubles for code that uses internal/pool: a fake Clock that
// moves only when told to. Only tests import it. It does not import pool, so that pool's
// own internal tests can use it.
package pooltest

import (
	"sort"
	"sync"
	"time"
)

// Clock is a fake pool.Clock: Now stands still until Advance or Set moves it, and the
// functions given to AfterFunc run, in deadline order, from the goroutine that moves it.
// It is safe for concurrent use.
type Clock struct {
	mu sync.Mutex
	// now is the current fake time. Guarded by mu.
	now time.Time
	// timers are the armed AfterFunc calls. Guarded by mu.
	timers []*timer
	// seq orders timers with equal deadlines by arming order. Guarded by mu.
	seq int
}

type timer struct {
	at  time.Time
	seq int
	f   func()
}

// NewClock returns a fake clock set to start (a fixed date when start is zero).
func NewClock(start time.Time) *Clock {
	if start.IsZero() {
		start = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	}
	return &Clock{now: start}
}

// Now returns the fake time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// AfterFunc arms f to run when the clock reaches Now()+d. A d ≤ 0 runs f at the next
// Advance or Set (even by zero), as a real timer would run it at once.
func (c *Clock) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	t := &timer{at: c.now.Add(d), seq: c.seq, f: f}
	c.timers = append(c.timers, t)
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for i, x := range c.timers {
			if x == t {
				c.timers = append(c.timers[:i], c.timers[i+1:]...)
				return true
			}
		}
		return false
	}
}

// Advance moves the clock forward by d and runs the timers that fall due, each with the
// clock set to its deadline, in order.
func (c *Clock) Advance(d time.Duration) {
	c.Set(c.Now().Add(d))
}

// Set moves the clock to t (never backwards) and runs the timers that fall due.
func (c *Clock) Set(t time.Time) {
	for {
		c.mu.Lock()
		sort.Slice(c.timers, func(i, j int) bool {
			if !c.timers[i].at.Equal(c.timers[j].at) {
				return c.timers[i].at.Before(c.timers[j].at)
			}
			return c.timers[i].seq < c.timers[j].seq
		})
		if len(c.timers) == 0 || c.timers[0].at.After(t) {
			if t.After(c.now) {
				c.now = t
			}
			c.mu.Unlock()
			return
		}
		next := c.timers[0]
		c.timers = c.timers[1:]
		if next.at.After(c.now) {
			c.now = next.at
		}
		c.mu.Unlock()
		next.f()
	}
}

// Pending reports how many timers are armed.
func (c *Clock) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}
