package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sessiond/sessiond/internal/errkind"
)

// Defaults of AsyncOptions.
const (
	// DefaultMaxPending bounds the records waiting to be written. Writes coalesce by key,
	// so the queue holds at most one write per live record (sessions, executions, pools);
	// the bound is far above that and is reached only when the disk stops taking writes.
	DefaultMaxPending = 1 << 16
	// DefaultMaxBatch bounds the records of one transaction, and so the time the writer
	// holds the file's write lock.
	DefaultMaxBatch = 1024
	// DefaultRetryMin and DefaultRetryMax bound the back-off between attempts of a failed
	// write: it doubles from the first to the second.
	DefaultRetryMin = 50 * time.Millisecond
	DefaultRetryMax = 5 * time.Second
)

// AsyncOptions configure an Async.
type AsyncOptions struct {
	// MaxPending bounds the records held for writing, counted by key: a write to a key
	// already held replaces the held one and is always accepted. A write to another key
	// beyond the bound is refused (errkind.LimitExceeded). DefaultMaxPending if 0.
	MaxPending int
	// MaxBatch bounds the records written in one transaction (DefaultMaxBatch if 0).
	MaxBatch int
	// RetryMin and RetryMax bound the back-off between attempts of a failed write
	// (DefaultRetryMin and DefaultRetryMax if 0).
	RetryMin, RetryMax time.Duration
	// OnError, if set, is called by the writer goroutine with every failed write (the
	// batch is kept and retried) and every record the store refused (a *RecordError; the
	// record is dropped). It must not block; it may call Stats.
	OnError func(error)
}

// AsyncStats are an Async's counters since it was made.
type AsyncStats struct {
	// Pending counts the records waiting to be written, including a batch being written.
	Pending int
	// Enqueued counts accepted writes; Coalesced those of them that replaced a held write
	// to the same key; Refused the writes refused because MaxPending records were held.
	Enqueued, Coalesced, Refused uint64
	// Commits counts committed transactions, Written the records they wrote.
	Commits, Written uint64
	// Failures counts failed transactions (retried); Dropped the records the store refused.
	Failures, Dropped uint64
}

// Async writes behind a Store, for the hot path: Enqueue (and its typed shorthands)
// validate a write, hold it in memory and return without waiting for the disk. One writer
// goroutine writes the held records in batches, one transaction each; writes to a key
// that is still held replace the held one, so that many updates of one record (a
// session's last request, bumped by every request) cost one write. Flush waits until
// everything enqueued before it is durable.
//
// A failed write is reported to OnError and retried with back-off; nothing is dropped but
// records the store refuses (which validation at Enqueue makes impossible with the default
// limits). No order between writes to different keys is kept, except that a Flush covers
// all writes enqueued before it.
//
// The methods are safe for concurrent use. The lifecycle is NewAsync, Start, Close.
type Async struct {
	st   Store
	opts AsyncOptions

	kick chan struct{} // there is something to write; capacity 1
	quit chan struct{} // closed by Close when it stops the writer
	done chan struct{} // closed when the writer has exited
	// life is the writer's lifetime: its writes run under it, and Close cancels it when it
	// gives up.
	life   context.Context
	cancel context.CancelFunc

	// lifeMu serializes Start and Close.
	lifeMu sync.Mutex
	// phase is where the Async is in its life. Guarded by lifeMu.
	phase    int
	closeErr error // guarded by lifeMu
	// started is set once the writer runs.
	started atomic.Bool

	mu sync.Mutex
	// pending holds the writes waiting for the writer, one per key. Guarded by mu.
	pending map[Key]pendingOp
	// inFlight counts the records of the batch being written. Guarded by mu.
	inFlight int
	// seq numbers the accepted writes: seq is the last one's. Every write numbered up to
	// durable is durable (or was refused by the store and reported). durableCh is closed
	// and replaced whenever durable advances. Guarded by mu.
	seq, durable uint64
	durableCh    chan struct{}
	// closed refuses writes once Close began. Guarded by mu.
	closed bool
	// lastErr is the last failed write's error, nil after a successful one. Guarded by mu.
	lastErr error
	stats   AsyncStats // guarded by mu
	// flushedDrops is stats.Dropped as the last Flush to return saw it. Guarded by mu.
	flushedDrops uint64

	// Owned by the writer goroutine.
	batch []pendingOp
	ops   []Op
	// spare is an empty map that take swaps with pending.
	spare map[Key]pendingOp
}

// pendingOp is a held write. seq is the number of the oldest write to the key that is not
// yet durable: the held op replaced the writes since, so writing it makes them durable.
type pendingOp struct {
	op  Op
	seq uint64
}

const (
	asyncNew = iota
	asyncRunning
	asyncClosed
)

// NewAsync returns a write-behind layer over st. It validates opts and has no side
// effects: Start starts the writer. st stays the caller's: Close does not close it.
func NewAsync(st Store, opts AsyncOptions) (*Async, error) {
	if st == nil {
		return nil, errkind.New(errkind.Invalid, "write-behind store: no store")
	}
	if opts.MaxPending < 0 || opts.MaxBatch < 0 || opts.RetryMin < 0 || opts.RetryMax < 0 {
		return nil, errkind.New(errkind.Invalid, "write-behind store: options %+v: no limit may be negative", opts)
	}
	if opts.MaxPending == 0 {
		opts.MaxPending = DefaultMaxPending
	}
	if opts.MaxBatch == 0 {
		opts.MaxBatch = DefaultMaxBatch
	}
	if opts.RetryMin == 0 {
		opts.RetryMin = DefaultRetryMin
	}
	if opts.RetryMax == 0 {
		opts.RetryMax = DefaultRetryMax
	}
	if opts.RetryMax < opts.RetryMin {
		return nil, errkind.New(errkind.Invalid, "write-behind store: retry back-off %v to %v: the maximum is below the minimum", opts.RetryMin, opts.RetryMax)
	}
	life, cancel := context.WithCancel(context.Background())
	return &Async{st: st, opts: opts,
		kick: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{}),
		life: life, cancel: cancel,
		pending: map[Key]pendingOp{}, spare: map[Key]pendingOp{}, durableCh: make(chan struct{}),
	}, nil
}

// Start starts the writer goroutine. Writes enqueued before are written then. It fails if
// the Async was started or closed before.
func (a *Async) Start() error {
	a.lifeMu.Lock()
	defer a.lifeMu.Unlock()
	if a.phase != asyncNew {
		return errkind.New(errkind.Invalid, "write-behind store: already started or closed")
	}
	a.startLocked()
	return nil
}

// startLocked starts the writer. Preconditions: a.lifeMu is held; a.phase is asyncNew.
func (a *Async) startLocked() {
	a.phase = asyncRunning
	a.started.Store(true)
	go a.run()
	a.wakeWriter()
}

// Close refuses further writes, waits (bounded by ctx) until every write enqueued before
// is durable, and stops the writer. If ctx ends first it stops the writer anyway (a write
// in progress finishes in the background) and returns an error counting the records not
// written; the store then holds the state of the last successful write of each of them.
// Close is idempotent (later calls return the first one's result) and works before
// Start. It does not close the underlying Store.
func (a *Async) Close(ctx context.Context) error {
	a.lifeMu.Lock()
	defer a.lifeMu.Unlock()
	switch a.phase {
	case asyncClosed:
		return a.closeErr
	case asyncNew:
		a.startLocked() // to write what was enqueued before
	}
	a.phase = asyncClosed
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	err := a.Flush(ctx)
	close(a.quit)
	a.cancel()
	if err != nil {
		a.closeErr = fmt.Errorf("closing write-behind store: %w", err)
		return a.closeErr
	}
	<-a.done // the writer is idle: it exits at once
	return nil
}

// Enqueue holds op for writing and returns at once. A write to a key already held replaces
// the held one. Errors: a *RecordError (Invalid or LimitExceeded) for an invalid record;
// LimitExceeded when MaxPending records are held and op's key is not one of them;
// Unavailable after Close. Enqueue validates op before it returns but encodes it later,
// on the writer goroutine: the records an op holds (an execution's documents, a metadata
// value) must not be changed afterwards.
func (a *Async) Enqueue(op Op) error {
	if err := op.validate(); err != nil {
		return err
	}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return errkind.New(errkind.Unavailable, "write-behind store: closed")
	}
	if p, ok := a.pending[op.key]; ok {
		p.op = op
		a.pending[op.key] = p
		a.stats.Coalesced++
	} else {
		if len(a.pending)+a.inFlight >= a.opts.MaxPending {
			a.stats.Refused++
			lastErr := a.lastErr
			a.mu.Unlock()
			return errkind.Wrap(errkind.LimitExceeded, fmt.Errorf(
				"write-behind store: %d records are waiting to be written, the limit (last write error: %v)", a.opts.MaxPending, lastErr))
		}
		a.pending[op.key] = pendingOp{op: op, seq: a.seq + 1}
	}
	a.seq++
	a.stats.Enqueued++
	a.mu.Unlock()
	a.wakeWriter()
	return nil
}

func (a *Async) wakeWriter() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// PutSession enqueues a put of s (see Enqueue).
func (a *Async) PutSession(s Session) error { return a.Enqueue(SessionOp(s)) }

// DeleteSession enqueues the deletion of identifier's session in pool (see Enqueue).
func (a *Async) DeleteSession(pool, identifier string) error {
	return a.Enqueue(DeleteOp(SessionKey(pool, identifier)))
}

// PutExecution enqueues a put of e (see Enqueue).
func (a *Async) PutExecution(e Execution) error { return a.Enqueue(ExecutionOp(e)) }

// DeleteExecution enqueues the deletion of an execution (see Enqueue).
func (a *Async) DeleteExecution(pool, identifier, id string) error {
	return a.Enqueue(DeleteOp(ExecutionKey(pool, identifier, id)))
}

// Flush waits until every write enqueued before it is durable. It returns an error if ctx
// ends first (with the last write error, if writes are failing), if the writer is not
// running, or if the store refused records since the last Flush returned (they were
// dropped, and reported to OnError).
func (a *Async) Flush(ctx context.Context) error {
	if !a.started.Load() {
		return errkind.New(errkind.Unavailable, "write-behind store: flushing: not started")
	}
	a.mu.Lock()
	target := a.seq
	for a.durable < target {
		ch := a.durableCh
		a.mu.Unlock()
		a.wakeWriter()
		select {
		case <-ch:
		case <-a.done:
			return errkind.New(errkind.Unavailable, "write-behind store: flushing: the writer is stopped")
		case <-ctx.Done():
			a.mu.Lock()
			n, lastErr := len(a.pending)+a.inFlight, a.lastErr
			a.mu.Unlock()
			err := ctxErr(ctx, fmt.Sprintf("flushing the write-behind store: %d records not written", n))
			if lastErr != nil {
				err = fmt.Errorf("%w (last write error: %w)", err, lastErr)
			}
			return err
		}
		a.mu.Lock()
	}
	dropped := a.stats.Dropped - a.flushedDrops
	a.flushedDrops = a.stats.Dropped
	a.mu.Unlock()
	if dropped > 0 {
		return fmt.Errorf("flushing the write-behind store: the store refused %d records (reported to OnError)", dropped)
	}
	return nil
}

// Stats returns the counters.
func (a *Async) Stats() AsyncStats {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.stats
	s.Pending = len(a.pending) + a.inFlight
	return s
}

// run is the writer goroutine.
func (a *Async) run() {
	defer close(a.done)
	for {
		select {
		case <-a.kick:
			a.drain()
		case <-a.quit:
			return
		}
	}
}

// drain writes batches until nothing is held, backing off after a failure. It returns
// early when Close stops the writer.
func (a *Async) drain() {
	failures := 0
	for {
		if !a.take() {
			return
		}
		if err := a.write(); err == nil {
			failures = 0
			continue
		}
		failures++
		t := time.NewTimer(backoff(a.opts.RetryMin, a.opts.RetryMax, failures))
		select {
		case <-t.C:
		case <-a.quit:
			t.Stop()
			return
		}
	}
}

func backoff(lo, hi time.Duration, failures int) time.Duration {
	d := lo
	for i := 1; i < failures && d < hi; i++ {
		d *= 2
	}
	return min(d, hi)
}

// take moves up to MaxBatch held writes, the oldest first, into a.batch. It reports
// whether there is anything to write. The hot path waits for a.mu only for a swap of maps,
// unless more than MaxBatch writes are held.
func (a *Async) take() bool {
	a.batch = a.batch[:0]
	a.mu.Lock()
	n := len(a.pending)
	if n == 0 {
		a.mu.Unlock()
		return false
	}
	if n <= a.opts.MaxBatch {
		taken := a.pending
		a.pending, a.spare = a.spare, nil
		a.inFlight = n
		a.mu.Unlock()
		for _, p := range taken {
			a.batch = append(a.batch, p)
		}
		clear(taken)
		a.spare = taken
		return true
	}
	defer a.mu.Unlock()
	for _, p := range a.pending {
		a.batch = append(a.batch, p)
	}
	slices.SortFunc(a.batch, func(x, y pendingOp) int { return compareSeq(x.seq, y.seq) })
	a.batch = a.batch[:a.opts.MaxBatch]
	for _, p := range a.batch {
		delete(a.pending, p.op.key)
	}
	a.inFlight = len(a.batch)
	return true
}

func compareSeq(x, y uint64) int {
	switch {
	case x < y:
		return -1
	case x > y:
		return 1
	}
	return 0
}

// write writes a.batch in one transaction. Records the store refuses are dropped and
// reported, and the others written without them. If the write fails, the batch is held
// again (behind writes to the same keys made meanwhile) and the error returned.
func (a *Async) write() error {
	var dropped uint64
	var err error
	for len(a.batch) > 0 {
		a.ops = a.ops[:0]
		for _, p := range a.batch {
			a.ops = append(a.ops, p.op)
		}
		err = a.st.Apply(a.life, a.ops)
		var rec *RecordError
		if err == nil || !errors.As(err, &rec) {
			break
		}
		i := slices.IndexFunc(a.batch, func(p pendingOp) bool { return p.op.key == rec.Key })
		if i < 0 {
			break // not one of ours: treat it as a failed write
		}
		a.batch = slices.Delete(a.batch, i, i+1)
		dropped++
		a.report(fmt.Errorf("write-behind store: dropping a record the store refused: %w", err))
		err = nil
	}
	clear(a.ops) // let go of the records' documents

	a.mu.Lock()
	a.inFlight = 0
	a.stats.Dropped += dropped
	if err != nil {
		for _, p := range a.batch {
			if q, ok := a.pending[p.op.key]; ok {
				q.seq = min(q.seq, p.seq) // the newer write stands, and now covers p
				a.pending[p.op.key] = q
			} else {
				a.pending[p.op.key] = p
			}
		}
		a.stats.Failures++
		a.lastErr = err
	} else {
		if len(a.batch) > 0 {
			a.stats.Commits++
			a.stats.Written += uint64(len(a.batch))
		}
		a.lastErr = nil
	}
	a.advanceLocked()
	a.mu.Unlock()
	n := len(a.batch)
	clear(a.batch)
	if err != nil {
		a.report(fmt.Errorf("write-behind store: writing %d records (will retry): %w", n, err))
	}
	return err
}

// advanceLocked moves durable up to just below the oldest write not yet durable. It runs
// between batches: nothing is in flight.
//
// Preconditions: a.mu is held.
func (a *Async) advanceLocked() {
	low := a.seq + 1
	for _, p := range a.pending {
		low = min(low, p.seq)
	}
	if low-1 > a.durable {
		a.durable = low - 1
		close(a.durableCh)
		a.durableCh = make(chan struct{})
	}
}

func (a *Async) report(err error) {
	if a.opts.OnError != nil {
		a.opts.OnError(err)
	}
}
