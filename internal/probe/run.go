package probe

import (
	"context"
	"fmt"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
)

// WaitStartup runs p as a startup probe: after InitialDelaySeconds it makes an attempt
// every PeriodSeconds until SuccessThreshold attempts in a row succeed, and returns nil;
// or until FailureThreshold attempts in a row fail, and returns an Unavailable error
// whose public message gives the count and the last failure. A probe that never succeeds
// thus fails InitialDelaySeconds + (FailureThreshold-1)×PeriodSeconds after the start,
// plus the last attempt's own time (at most TimeoutSeconds): within the
// FailureThreshold×PeriodSeconds that Azure gives a container to start. It returns ctx's
// error, wrapped, if ctx ends first.
func WaitStartup(ctx context.Context, c *agentapi.Client, p Probe) error {
	return run(ctx, c, p.WithDefaults(), true)
}

// Watch runs p as a liveness probe until ctx ends: after InitialDelaySeconds it makes an
// attempt every PeriodSeconds, and when FailureThreshold attempts in a row have failed it
// calls onDead, once, with an Unavailable error saying why, and returns. A success resets
// the count. Watch blocks: the caller runs it in a goroutine it owns and stops it with
// ctx; onDead is not called after ctx has ended.
func Watch(ctx context.Context, c *agentapi.Client, p Probe, onDead func(error)) {
	if err := run(ctx, c, p.WithDefaults(), false); err != nil && ctx.Err() == nil {
		onDead(err)
	}
}

// run makes attempts until the outcome is decided. With untilSuccess it returns nil after
// SuccessThreshold successes in a row; it always returns an error after FailureThreshold
// failures in a row.
func run(ctx context.Context, c *agentapi.Client, p Probe, untilSuccess bool) error {
	next := time.Now().Add(seconds(p.InitialDelaySeconds))
	t := time.NewTimer(time.Until(next))
	defer t.Stop()
	successes, failures := 0, 0
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s probe: %w", p.Type, ctx.Err())
		case <-t.C:
		}
		next = next.Add(seconds(p.PeriodSeconds))
		err := Check(ctx, c, p)
		if ctx.Err() != nil {
			return fmt.Errorf("%s probe: %w", p.Type, ctx.Err())
		}
		if err == nil {
			successes, failures = successes+1, 0
			if untilSuccess && successes >= p.SuccessThreshold {
				return nil
			}
		} else {
			successes, failures = 0, failures+1
			if failures >= p.FailureThreshold {
				return failedError(p, failures, err)
			}
		}
		// An attempt that took longer than the period is followed at once by the next.
		if now := time.Now(); next.Before(now) {
			next = now
		}
		t.Reset(time.Until(next))
	}
}

// failedError describes a probe that failed n times in a row, the last time with last.
func failedError(p Probe, n int, last error) error {
	why, ok := errkind.PublicMessage(last)
	if !ok || why == "" {
		why = "the sandbox could not be reached"
	}
	return &errkind.Error{Kind: errkind.Unavailable, Public: true, Err: last,
		Msg: fmt.Sprintf("%s probe failed %d times in a row, last: %s", p.Type, n, why)}
}
