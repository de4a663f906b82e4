package pool

import "time"

// Clock is the manager's source of time. Every expiry, back-off and health-check deadline
// is computed from Now and waited for with AfterFunc, so that tests drive a pool with a
// fake clock (pooltest.Clock) instead of sleeping.
type Clock interface {
	Now() time.Time
	// AfterFunc calls f in its own goroutine (or, for a fake clock, from the goroutine
	// that advances it) once d has passed. stop cancels the call and reports whether it
	// did so before f ran.
	AfterFunc(d time.Duration, f func()) (stop func() bool)
}

// realClock is the wall clock.
type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) AfterFunc(d time.Duration, f func()) func() bool {
	return time.AfterFunc(d, f).Stop
}
