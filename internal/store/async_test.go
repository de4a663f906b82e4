package store_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/sandbox/sandboxtest"
	"github.com/sessiond/sessiond/internal/store"
)

// hookedStore is a Memory whose Apply counts the transactions and records, and can be held
// (gate) or made to fail (fail).
type hookedStore struct {
	*store.Memory

	mu sync.Mutex
	// applies counts Apply calls, ops the ops they carried. Guarded by mu.
	applies, ops int
	// gate, if not nil, holds every Apply until it is closed. Guarded by mu.
	gate chan struct{}
	// fail, if set, returns the error of the n-th Apply (from 1). Guarded by mu.
	fail func(n int) error
	// entered receives a value when an Apply starts (if there is room).
	entered chan struct{}
}

func newHooked(t *testing.T, opts store.Options) *hookedStore {
	m, err := store.NewMemory(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return &hookedStore{Memory: m, entered: make(chan struct{}, 1)}
}

func (h *hookedStore) Apply(ctx context.Context, ops []store.Op) error {
	h.mu.Lock()
	h.applies++
	h.ops += len(ops)
	n, gate, fail := h.applies, h.gate, h.fail
	h.mu.Unlock()
	select {
	case h.entered <- struct{}{}:
	default:
	}
	if gate != nil {
		<-gate
	}
	if fail != nil {
		if err := fail(n); err != nil {
			return err
		}
	}
	return h.Memory.Apply(ctx, ops)
}

// hold makes Apply wait until the returned function is called.
func (h *hookedStore) hold() (release func()) {
	gate := make(chan struct{})
	h.mu.Lock()
	h.gate = gate
	h.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			h.mu.Lock()
			h.gate = nil
			h.mu.Unlock()
			close(gate)
		})
	}
}

func (h *hookedStore) counts() (applies, ops int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.applies, h.ops
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), sandboxtest.Timeout(30*time.Second))
	t.Cleanup(cancel)
	return ctx
}

// newAsync returns a started Async over st, closed when the test ends.
func newAsync(t *testing.T, st store.Store, opts store.AsyncOptions) *store.Async {
	t.Helper()
	a, err := store.NewAsync(st, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), sandboxtest.Timeout(10*time.Second))
		defer cancel()
		a.Close(ctx)
	})
	return a
}

func bump(i int) store.Session {
	return store.Session{Pool: "p", Identifier: "hot", SandboxID: "sb", State: "Allocated",
		LastRequestAt: time.Unix(int64(i), 0).UTC()}
}

func mustEnqueue(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("enqueue: %v", err)
	}
}

func wantLastRequest(t *testing.T, st store.Store, identifier string, i int) {
	t.Helper()
	s, err := st.GetSession(context.Background(), "p", identifier)
	if err != nil {
		t.Fatalf("GetSession(%s): %v", identifier, err)
	}
	if want := time.Unix(int64(i), 0).UTC(); !s.LastRequestAt.Equal(want) {
		t.Errorf("session %s: last request %v, want %v", identifier, s.LastRequestAt, want)
	}
}

// TestAsyncCoalesces: a thousand bumps of one session cost a few transactions, not a
// thousand, while the writer is running and busy.
func TestAsyncCoalesces(t *testing.T) {
	h := newHooked(t, store.Options{})
	a := newAsync(t, h, store.AsyncOptions{})
	release := h.hold()
	defer release()
	mustEnqueue(t, a.PutSession(bump(0)))
	<-h.entered // the writer is in its first transaction, held
	for i := 1; i <= 1000; i++ {
		mustEnqueue(t, a.PutSession(bump(i)))
	}
	if p := a.Stats().Pending; p != 2 { // the one in flight, and one for all the bumps
		t.Errorf("%d records pending, want 2", p)
	}
	release()
	if err := a.Flush(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	applies, ops := h.counts()
	if applies > 3 || ops > 3 {
		t.Errorf("1001 bumps of one session took %d transactions of %d records, want at most 3", applies, ops)
	}
	s := a.Stats()
	if s.Enqueued != 1001 || s.Coalesced != 999 || s.Commits != uint64(applies) || s.Written != uint64(ops) {
		t.Errorf("Stats = %+v after %d transactions of %d records", s, applies, ops)
	}
	wantLastRequest(t, h, "hot", 1000)
}

// TestAsyncBoundedByLiveKeys: however many writes come while the disk is stuck, the queue
// holds one per key; beyond MaxPending keys, writes to new keys are refused and writes to
// held keys still accepted.
func TestAsyncBoundedByLiveKeys(t *testing.T) {
	const maxPending, keys, bumps = 100, 60, 200
	h := newHooked(t, store.Options{})
	a := newAsync(t, h, store.AsyncOptions{MaxPending: maxPending})
	release := h.hold()
	defer release()
	mustEnqueue(t, a.PutSession(store.Session{Pool: "p", Identifier: "first", SandboxID: "sb"}))
	<-h.entered
	for i := range bumps {
		for k := range keys {
			s := bump(i)
			s.Identifier = fmt.Sprintf("k%02d", k)
			mustEnqueue(t, a.PutSession(s))
		}
	}
	if p := a.Stats().Pending; p != keys+1 {
		t.Fatalf("%d writes to %d keys: %d records pending, want %d", bumps*keys, keys, p, keys+1)
	}
	// Fill up to the limit with new keys; the next new key is refused.
	for k := keys + 1; k < maxPending; k++ {
		mustEnqueue(t, a.DeleteSession("p", fmt.Sprintf("new%02d", k)))
	}
	err := a.DeleteSession("p", "one-too-many")
	if !errkind.Is(err, errkind.LimitExceeded) {
		t.Errorf("a write to a new key beyond MaxPending: %v, want LimitExceeded", err)
	}
	if err := a.PutSession(bump(bumps)); !errkind.Is(err, errkind.LimitExceeded) { // "hot" is a new key too, but...
		t.Errorf("a second write to a new key beyond MaxPending: %v, want LimitExceeded", err)
	}
	s := a.Stats()
	if s.Pending != maxPending || s.Refused != 2 {
		t.Errorf("at the limit: Stats = %+v, want %d pending and 2 refused", s, maxPending)
	}
	// ... a held key is always accepted.
	held := bump(bumps + 1)
	held.Identifier = "k00"
	mustEnqueue(t, a.PutSession(held))

	release()
	if err := a.Flush(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	wantLastRequest(t, h, "k00", bumps+1)
	wantLastRequest(t, h, "k59", bumps-1)
	if _, err := h.GetSession(context.Background(), "p", "hot"); !errkind.Is(err, errkind.NotFound) {
		t.Errorf("a refused write reached the store: %v", err)
	}
	// With the queue drained, new keys are accepted again.
	mustEnqueue(t, a.DeleteSession("p", "one-too-many"))
}

// TestAsyncFlush: Flush returns once what was enqueued before it is in the store, and not
// before; it fails when its context ends first.
func TestAsyncFlush(t *testing.T) {
	h := newHooked(t, store.Options{})
	a, err := store.NewAsync(h, store.AsyncOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Flush(testCtx(t)); !errkind.Is(err, errkind.Unavailable) {
		t.Errorf("Flush before Start: %v, want Unavailable", err)
	}
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	defer a.Close(context.Background())
	if err := a.Start(); !errkind.Is(err, errkind.Invalid) {
		t.Errorf("a second Start: %v, want Invalid", err)
	}
	if err := a.Flush(testCtx(t)); err != nil {
		t.Errorf("Flush with nothing enqueued: %v", err)
	}

	release := h.hold()
	mustEnqueue(t, a.PutSession(bump(1)))
	<-h.entered
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err = a.Flush(ctx)
	if !errkind.Is(err, errkind.Timeout) || !strings.Contains(err.Error(), "1 records not written") {
		t.Errorf("Flush while the store is held: %v, want Timeout counting 1 record", err)
	}
	flushed := make(chan error, 1)
	go func() { flushed <- a.Flush(testCtx(t)) }()
	mustEnqueue(t, a.PutSession(bump(2))) // after the Flush began (or not): either is fine
	release()
	if err := <-flushed; err != nil {
		t.Fatal(err)
	}
	s, err := h.GetSession(context.Background(), "p", "hot")
	if err != nil {
		t.Fatalf("GetSession after Flush: %v", err)
	}
	if s.LastRequestAt.Unix() < 1 {
		t.Errorf("Flush returned before the write was in the store: %+v", s)
	}
	if err := a.Flush(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	wantLastRequest(t, h, "hot", 2)
}

// TestAsyncCloseDrains: Close writes everything enqueued before it, also before Start,
// and refuses writes after it.
func TestAsyncCloseDrains(t *testing.T) {
	h := newHooked(t, store.Options{})
	a := newAsync(t, h, store.AsyncOptions{MaxBatch: 7})
	release := h.hold()
	for i := range 50 {
		s := bump(i)
		s.Identifier = fmt.Sprintf("s%02d", i)
		mustEnqueue(t, a.PutSession(s))
	}
	closed := make(chan error, 1)
	go func() { closed <- a.Close(testCtx(t)) }()
	release()
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
	list, err := h.ListSessions(context.Background(), "p")
	if err != nil || len(list) != 50 {
		t.Errorf("after Close the store has %d sessions (%v), want 50", len(list), err)
	}
	if applies, _ := h.counts(); applies < (50+6)/7 {
		t.Errorf("50 records in batches of at most 7 took %d transactions", applies)
	}
	if err := a.PutSession(bump(99)); !errkind.Is(err, errkind.Unavailable) {
		t.Errorf("PutSession after Close: %v, want Unavailable", err)
	}
	if err := a.Close(context.Background()); err != nil {
		t.Errorf("a second Close: %v", err)
	}

	// Before Start.
	b, err := store.NewAsync(h, store.AsyncOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mustEnqueue(t, b.PutSession(bump(7)))
	if err := b.Close(testCtx(t)); err != nil {
		t.Fatalf("Close before Start: %v", err)
	}
	wantLastRequest(t, h, "hot", 7)
}

// TestAsyncRetries: failed writes are reported to OnError and retried until they succeed;
// a write made meanwhile to the same key wins over the failed one.
func TestAsyncRetries(t *testing.T) {
	h := newHooked(t, store.Options{})
	diskFull := errors.New("no space left on device")
	var mu sync.Mutex
	var reported []error
	a := newAsync(t, h, store.AsyncOptions{RetryMin: time.Millisecond, RetryMax: 4 * time.Millisecond,
		OnError: func(err error) { mu.Lock(); reported = append(reported, err); mu.Unlock() }})
	h.mu.Lock()
	h.fail = func(n int) error {
		if n == 1 {
			// While the first write fails, the session is bumped again.
			if err := a.PutSession(bump(2)); err != nil {
				t.Errorf("PutSession during a failing write: %v", err)
			}
		}
		if n <= 3 {
			return diskFull
		}
		return nil
	}
	h.mu.Unlock()
	mustEnqueue(t, a.PutSession(bump(1)))
	other := bump(5)
	other.Identifier = "other"
	mustEnqueue(t, a.PutSession(other))
	if err := a.Flush(testCtx(t)); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	wantLastRequest(t, h, "hot", 2)
	wantLastRequest(t, h, "other", 5)
	mu.Lock()
	defer mu.Unlock()
	if len(reported) != 3 {
		t.Fatalf("OnError got %d errors (%v), want 3", len(reported), reported)
	}
	for _, err := range reported {
		if !errors.Is(err, diskFull) {
			t.Errorf("OnError got %v, want it to wrap the store's error", err)
		}
	}
	if s := a.Stats(); s.Failures != 3 || s.Pending != 0 {
		t.Errorf("Stats = %+v, want 3 failures and nothing pending", s)
	}
}

// TestAsyncCloseGivesUp: when the store keeps failing, Close returns at its deadline with
// an error that counts what was not written and gives the store's error; the writer stops.
func TestAsyncCloseGivesUp(t *testing.T) {
	h := newHooked(t, store.Options{})
	h.fail = func(int) error { return errors.New("input/output error") }
	a, err := store.NewAsync(h, store.AsyncOptions{RetryMin: time.Millisecond, RetryMax: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	mustEnqueue(t, a.PutSession(bump(1)))
	mustEnqueue(t, a.DeleteSession("p", "x"))
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err = a.Close(ctx)
	if !errkind.Is(err, errkind.Timeout) || !strings.Contains(err.Error(), "2 records not written") || !strings.Contains(err.Error(), "input/output error") {
		t.Errorf("Close with a failing store: %v, want Timeout counting 2 records and giving the store's error", err)
	}
	if err2 := a.Close(context.Background()); err2 == nil || err2.Error() != err.Error() {
		t.Errorf("a second Close: %v, want the first one's error", err2)
	}
	if err := a.Flush(context.Background()); !errkind.Is(err, errkind.Unavailable) {
		t.Errorf("Flush after Close gave up: %v, want Unavailable (the writer is stopped)", err)
	}
	// goleak (TestMain) checks that the writer has exited.
}

// TestAsyncDropsRefusedRecord: a record the store refuses (here: above its record limit,
// which validation at Enqueue cannot see) is dropped and reported, and the rest of its
// batch written.
func TestAsyncDropsRefusedRecord(t *testing.T) {
	h := newHooked(t, store.Options{MaxRecordBytes: 512})
	var mu sync.Mutex
	var reported []error
	a, err := store.NewAsync(h, store.AsyncOptions{OnError: func(err error) { mu.Lock(); reported = append(reported, err); mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	big := store.Execution{Pool: "p", Identifier: "hot", ID: "x", Status: "Succeeded", Request: json.RawMessage(`"` + strings.Repeat("x", 600) + `"`)}
	mustEnqueue(t, a.PutSession(bump(1)))
	mustEnqueue(t, a.PutExecution(big))
	mustEnqueue(t, a.DeleteExecution("p", "hot", "y"))
	if err := a.Start(); err != nil { // one batch of the three
		t.Fatal(err)
	}
	err = a.Flush(testCtx(t))
	if err == nil || !strings.Contains(err.Error(), "refused 1 records") {
		t.Errorf("Flush with a refused record: %v, want an error counting it", err)
	}
	if err := a.Close(testCtx(t)); err != nil {
		t.Errorf("Close: %v", err)
	}
	wantLastRequest(t, h, "hot", 1)
	mu.Lock()
	defer mu.Unlock()
	var rec *store.RecordError
	if len(reported) != 1 || !errors.As(reported[0], &rec) || rec.Key != store.ExecutionKey("p", "hot", "x") || !errkind.Is(reported[0], errkind.LimitExceeded) {
		t.Errorf("OnError got %v, want one LimitExceeded RecordError naming the execution", reported)
	}
	if s := a.Stats(); s.Dropped != 1 || s.Written != 2 || s.Commits != 1 {
		t.Errorf("Stats = %+v, want 1 dropped and 2 written in 1 commit", s)
	}
}

func TestAsyncRefusesInvalid(t *testing.T) {
	h := newHooked(t, store.Options{})
	a := newAsync(t, h, store.AsyncOptions{})
	err := a.PutSession(store.Session{Pool: "p", SandboxID: "sb"})
	var rec *store.RecordError
	if !errkind.Is(err, errkind.Invalid) || !errors.As(err, &rec) {
		t.Errorf("PutSession without identifier: %v, want an Invalid RecordError", err)
	}
	err = a.PutExecution(store.Execution{Pool: "p", Identifier: "i", ID: "x", Status: "Running", Request: json.RawMessage(`{`)})
	if !errkind.Is(err, errkind.Invalid) {
		t.Errorf("PutExecution with a request that is not JSON: %v, want Invalid", err)
	}
	if s := a.Stats(); s.Enqueued != 0 || s.Pending != 0 {
		t.Errorf("Stats after refused writes: %+v", s)
	}
}

func TestAsyncOptions(t *testing.T) {
	h := newHooked(t, store.Options{})
	for _, o := range []store.AsyncOptions{
		{MaxPending: -1}, {MaxBatch: -1}, {RetryMin: -time.Second},
		{RetryMin: time.Second, RetryMax: time.Millisecond},
	} {
		if _, err := store.NewAsync(h, o); !errkind.Is(err, errkind.Invalid) {
			t.Errorf("NewAsync(%+v): %v, want Invalid", o, err)
		}
	}
	if _, err := store.NewAsync(nil, store.AsyncOptions{}); !errkind.Is(err, errkind.Invalid) {
		t.Errorf("NewAsync without a store: %v, want Invalid", err)
	}
}
