// Package storetest is the behavioural specification of store.Store: Run executes the
// conformance suite (round trips of every record type, listing by pool, idempotent
// deletes, not-found and validation errors, atomic batches, concurrent writers, data kept
// across a close and reopen, and the write-behind layer over the store) against a backend.
// Every backend must pass it: store.Bolt and store.Memory, and later ones. Only tests
// import this package.
package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/store"
)

// Config describes the backend under test. Its stores must use the default limits.
type Config struct {
	// Open returns a new, empty store for t. The suite closes it.
	Open func(t *testing.T) store.Store
	// Reopen returns a new store over the data of s, which the suite has closed, as a
	// restarted sessiond would open it.
	Reopen func(t *testing.T, s store.Store) store.Store
}

// Run runs the conformance suite.
func Run(t *testing.T, cfg Config) {
	s := &suite{cfg: cfg}
	t.Run("Pools", s.testPools)
	t.Run("Sessions", s.testSessions)
	t.Run("Executions", s.testExecutions)
	t.Run("Meta", s.testMeta)
	t.Run("TimesInUTC", s.testTimes)
	t.Run("NotFound", s.testNotFound)
	t.Run("DeleteIdempotent", s.testDeleteIdempotent)
	t.Run("Invalid", s.testInvalid)
	t.Run("RecordsAreCopied", s.testCopies)
	t.Run("Apply", s.testApply)
	t.Run("CanceledContext", s.testCanceled)
	t.Run("ConcurrentWriters", s.testConcurrent)
	t.Run("Reopen", s.testReopen)
	t.Run("WriteBehind", s.testWriteBehind)
}

type suite struct {
	cfg Config
}

// open returns a new store, closed when the test ends.
func (s *suite) open(t *testing.T) store.Store {
	t.Helper()
	st := s.cfg.Open(t)
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return st
}

// reopen closes st and returns a store over its data, closed when the test ends.
func (s *suite) reopen(t *testing.T, st store.Store) store.Store {
	t.Helper()
	if err := st.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	st = s.cfg.Reopen(t, st)
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return st
}

// base is the time records of the suite start from: not in UTC, with a monotonic reading
// and nanoseconds, so that a store that does not normalize times fails.
var base = time.Now().In(time.FixedZone("UTC+5", 5*3600))

func ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// session returns a session of pool whose fields all derive from identifier and n.
func session(pool, identifier string, n int) store.Session {
	at := base.Add(time.Duration(n) * time.Second)
	return store.Session{Pool: pool, Identifier: identifier, SandboxID: fmt.Sprintf("sb-%s-%d", identifier, n),
		Runtime: "runsc", State: "Allocated", CreatedAt: base, LastRequestAt: at, ExpiresAt: at.Add(5 * time.Minute)}
}

func execution(pool, identifier, id string, n int) store.Execution {
	return store.Execution{Pool: pool, Identifier: identifier, ID: id, Status: "Succeeded",
		Request:   json.RawMessage(fmt.Sprintf(`{"code":"print(%d)","executionType":"Asynchronous"}`, n)),
		Response:  json.RawMessage(fmt.Sprintf(`{"stdout":"%d\n","result":null}`, n)),
		CreatedAt: base, FinishedAt: base.Add(time.Duration(n) * time.Millisecond)}
}

func poolDef(name string, version int64) store.Pool {
	return store.Pool{Name: name, Version: version, CreatedAt: base, UpdatedAt: base.Add(time.Duration(version) * time.Minute),
		Properties: json.RawMessage(fmt.Sprintf(`{"containerType":"PythonLTS","scaleConfiguration":{"maxConcurrentSessions":%d}}`, version))}
}

func mustNil(t *testing.T, doing string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", doing, err)
	}
}

// wantKind fails unless err is of kind k.
func wantKind(t *testing.T, doing string, err error, k errkind.Kind) {
	t.Helper()
	if got := errkind.Of(err); err == nil || got != k {
		t.Errorf("%s: got error %v (kind %v), want kind %v", doing, err, got, k)
	}
}

func diff(t *testing.T, what string, got, want any) {
	t.Helper()
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("%s (-want +got):\n%s", what, d)
	}
}

func (s *suite) testPools(t *testing.T) {
	st, c := s.open(t), ctx(t)
	for _, name := range []string{"zeta", "alpha", "default"} {
		mustNil(t, "PutPool", st.PutPool(c, poolDef(name, 1)))
	}
	got, err := st.GetPool(c, "alpha")
	mustNil(t, "GetPool", err)
	diff(t, "GetPool", got, utc(poolDef("alpha", 1)))

	mustNil(t, "PutPool (update)", st.PutPool(c, poolDef("alpha", 2)))
	got, err = st.GetPool(c, "alpha")
	mustNil(t, "GetPool", err)
	diff(t, "GetPool after update", got, utc(poolDef("alpha", 2)))

	list, err := st.ListPools(c)
	mustNil(t, "ListPools", err)
	diff(t, "ListPools", list, []store.Pool{utc(poolDef("alpha", 2)), utc(poolDef("default", 1)), utc(poolDef("zeta", 1))})

	mustNil(t, "DeletePool", st.DeletePool(c, "default"))
	_, err = st.GetPool(c, "default")
	wantKind(t, "GetPool after DeletePool", err, errkind.NotFound)
	list, err = st.ListPools(c)
	mustNil(t, "ListPools", err)
	if len(list) != 2 {
		t.Errorf("ListPools after a delete: %d pools, want 2", len(list))
	}
	// A pool without properties keeps none (not "null").
	mustNil(t, "PutPool", st.PutPool(c, store.Pool{Name: "bare"}))
	got, err = st.GetPool(c, "bare")
	mustNil(t, "GetPool", err)
	diff(t, "GetPool of a bare pool", got, store.Pool{Name: "bare"})
}

func (s *suite) testSessions(t *testing.T) {
	st, c := s.open(t), ctx(t)
	// Pools whose names are prefixes of each other must not see each other's sessions.
	pools := []string{"p", "p2", "p-x"}
	for _, p := range pools {
		for i, id := range []string{"c", "a", "b"} {
			mustNil(t, "PutSession", st.PutSession(c, session(p, id, i)))
		}
	}
	got, err := st.GetSession(c, "p2", "a")
	mustNil(t, "GetSession", err)
	diff(t, "GetSession", got, utc(session("p2", "a", 1)))

	mustNil(t, "PutSession (update)", st.PutSession(c, session("p", "a", 7)))
	for _, p := range pools {
		list, err := st.ListSessions(c, p)
		mustNil(t, "ListSessions", err)
		a := session(p, "a", 1)
		if p == "p" {
			a = session(p, "a", 7)
		}
		diff(t, "ListSessions("+p+")", list, []store.Session{utc(a), utc(session(p, "b", 2)), utc(session(p, "c", 0))})
	}
	list, err := st.ListSessions(c, "nope")
	mustNil(t, "ListSessions of an unknown pool", err)
	if len(list) != 0 {
		t.Errorf("ListSessions of an unknown pool: %v, want none", list)
	}

	mustNil(t, "DeleteSession", st.DeleteSession(c, "p", "b"))
	_, err = st.GetSession(c, "p", "b")
	wantKind(t, "GetSession after DeleteSession", err, errkind.NotFound)
	if _, err := st.GetSession(c, "p2", "b"); err != nil {
		t.Errorf("GetSession of another pool's session after DeleteSession: %v", err)
	}
	list, err = st.ListSessions(c, "p")
	mustNil(t, "ListSessions", err)
	if len(list) != 2 {
		t.Errorf("ListSessions after a delete: %d sessions, want 2", len(list))
	}
}

func (s *suite) testExecutions(t *testing.T) {
	st, c := s.open(t), ctx(t)
	var want []store.Execution
	for i, ident := range []string{"u1", "u2"} {
		for j, id := range []string{"x1", "x2"} {
			e := execution("p", ident, id, 10*i+j)
			mustNil(t, "PutExecution", st.PutExecution(c, e))
			want = append(want, utc(e))
		}
	}
	mustNil(t, "PutExecution", st.PutExecution(c, execution("p2", "u1", "x1", 99)))
	// The same ID in another session is another execution.
	got, err := st.GetExecution(c, "p", "u2", "x1")
	mustNil(t, "GetExecution", err)
	diff(t, "GetExecution", got, want[2])

	// A running execution has no response and no finish time.
	running := store.Execution{Pool: "p", Identifier: "u1", ID: "x1", Status: "Running", Request: json.RawMessage(`{}`), CreatedAt: base}
	mustNil(t, "PutExecution (running)", st.PutExecution(c, running))
	want[0] = utc(running)
	list, err := st.ListExecutions(c, "p")
	mustNil(t, "ListExecutions", err)
	diff(t, "ListExecutions", list, want)

	mustNil(t, "DeleteExecution", st.DeleteExecution(c, "p", "u1", "x2"))
	_, err = st.GetExecution(c, "p", "u1", "x2")
	wantKind(t, "GetExecution after DeleteExecution", err, errkind.NotFound)
	list, err = st.ListExecutions(c, "p2")
	mustNil(t, "ListExecutions", err)
	diff(t, "ListExecutions(p2)", list, []store.Execution{utc(execution("p2", "u1", "x1", 99))})
}

func (s *suite) testMeta(t *testing.T) {
	st, c := s.open(t), ctx(t)
	v, err := st.GetMeta(c, store.SchemaKey)
	mustNil(t, "GetMeta(SchemaKey)", err)
	if want := fmt.Sprint(store.SchemaVersion); string(v) != want {
		t.Errorf("GetMeta(SchemaKey) = %q, want %q", v, want)
	}
	wantKind(t, "PutMeta(SchemaKey)", st.PutMeta(c, store.SchemaKey, []byte("99")), errkind.Invalid)
	wantKind(t, "DeleteMeta(SchemaKey)", st.DeleteMeta(c, store.SchemaKey), errkind.Invalid)

	mustNil(t, "PutMeta", st.PutMeta(c, "server-id", []byte("abc")))
	mustNil(t, "PutMeta (empty)", st.PutMeta(c, "empty", []byte{}))
	v, err = st.GetMeta(c, "server-id")
	mustNil(t, "GetMeta", err)
	if string(v) != "abc" {
		t.Errorf("GetMeta = %q, want abc", v)
	}
	v, err = st.GetMeta(c, "empty")
	mustNil(t, "GetMeta of an empty value", err)
	if len(v) != 0 {
		t.Errorf("GetMeta of an empty value = %q", v)
	}
	mustNil(t, "DeleteMeta", st.DeleteMeta(c, "server-id"))
	_, err = st.GetMeta(c, "server-id")
	wantKind(t, "GetMeta after DeleteMeta", err, errkind.NotFound)
	wantKind(t, "PutMeta (too large)", st.PutMeta(c, "big", make([]byte, store.MaxMetaBytes+1)), errkind.LimitExceeded)
}

func (s *suite) testTimes(t *testing.T) {
	st, c := s.open(t), ctx(t)
	in := session("p", "a", 1)
	mustNil(t, "PutSession", st.PutSession(c, in))
	got, err := st.GetSession(c, "p", "a")
	mustNil(t, "GetSession", err)
	for _, tm := range []struct {
		name      string
		got, want time.Time
	}{{"CreatedAt", got.CreatedAt, in.CreatedAt}, {"LastRequestAt", got.LastRequestAt, in.LastRequestAt}, {"ExpiresAt", got.ExpiresAt, in.ExpiresAt}} {
		if !tm.got.Equal(tm.want) || tm.got.Location() != time.UTC || tm.got != tm.want.UTC() {
			t.Errorf("%s = %v (%v), want %v in UTC", tm.name, tm.got, tm.got.Location(), tm.want)
		}
	}
	// Zero times stay zero.
	mustNil(t, "PutSession", st.PutSession(c, store.Session{Pool: "p", Identifier: "z", SandboxID: "sb"}))
	got, err = st.GetSession(c, "p", "z")
	mustNil(t, "GetSession", err)
	if !got.CreatedAt.IsZero() || !got.LastRequestAt.IsZero() || !got.ExpiresAt.IsZero() {
		t.Errorf("zero times came back as %v, %v, %v", got.CreatedAt, got.LastRequestAt, got.ExpiresAt)
	}
}

func (s *suite) testNotFound(t *testing.T) {
	st, c := s.open(t), ctx(t)
	mustNil(t, "PutSession", st.PutSession(c, session("p", "a", 1)))
	_, err := st.GetPool(c, "p")
	wantKind(t, "GetPool", err, errkind.NotFound)
	_, err = st.GetSession(c, "p", "b")
	wantKind(t, "GetSession", err, errkind.NotFound)
	_, err = st.GetSession(c, "q", "a")
	wantKind(t, "GetSession of another pool", err, errkind.NotFound)
	_, err = st.GetExecution(c, "p", "a", "x")
	wantKind(t, "GetExecution", err, errkind.NotFound)
	_, err = st.GetMeta(c, "nope")
	wantKind(t, "GetMeta", err, errkind.NotFound)
	if msg, ok := errkind.PublicMessage(err); !ok || !strings.Contains(msg, "nope") {
		t.Errorf("GetMeta's not-found error %q does not name the key publicly", msg)
	}
}

func (s *suite) testDeleteIdempotent(t *testing.T) {
	st, c := s.open(t), ctx(t)
	mustNil(t, "PutSession", st.PutSession(c, session("p", "a", 1)))
	mustNil(t, "PutExecution", st.PutExecution(c, execution("p", "a", "x", 1)))
	mustNil(t, "PutPool", st.PutPool(c, poolDef("p", 1)))
	mustNil(t, "PutMeta", st.PutMeta(c, "k", []byte("v")))
	for i := range 2 {
		mustNil(t, fmt.Sprintf("DeleteSession #%d", i+1), st.DeleteSession(c, "p", "a"))
		mustNil(t, fmt.Sprintf("DeleteExecution #%d", i+1), st.DeleteExecution(c, "p", "a", "x"))
		mustNil(t, fmt.Sprintf("DeletePool #%d", i+1), st.DeletePool(c, "p"))
		mustNil(t, fmt.Sprintf("DeleteMeta #%d", i+1), st.DeleteMeta(c, "k"))
	}
	mustNil(t, "DeleteSession of one never stored", st.DeleteSession(c, "q", "never"))
}

func (s *suite) testInvalid(t *testing.T) {
	st, c := s.open(t), ctx(t)
	long := strings.Repeat("x", store.MaxKeyBytes+1)
	huge := json.RawMessage(`"` + strings.Repeat("x", store.MaxDocumentBytes) + `"`)
	withSession := func(f func(*store.Session)) store.Session { x := session("p", "a", 1); f(&x); return x }
	withExecution := func(f func(*store.Execution)) store.Execution { x := execution("p", "a", "x", 1); f(&x); return x }
	for _, tc := range []struct {
		name string
		put  func() error
		kind errkind.Kind
	}{
		{"session without pool", func() error { return st.PutSession(c, withSession(func(x *store.Session) { x.Pool = "" })) }, errkind.Invalid},
		{"session without identifier", func() error { return st.PutSession(c, withSession(func(x *store.Session) { x.Identifier = "" })) }, errkind.Invalid},
		{"identifier with NUL", func() error { return st.PutSession(c, withSession(func(x *store.Session) { x.Identifier = "a\x00b" })) }, errkind.Invalid},
		{"identifier not UTF-8", func() error { return st.PutSession(c, withSession(func(x *store.Session) { x.Identifier = "a\xffb" })) }, errkind.Invalid},
		{"identifier too long", func() error { return st.PutSession(c, withSession(func(x *store.Session) { x.Identifier = long })) }, errkind.LimitExceeded},
		{"sandbox ID too long", func() error { return st.PutSession(c, withSession(func(x *store.Session) { x.SandboxID = long })) }, errkind.LimitExceeded},
		{"state not UTF-8", func() error { return st.PutSession(c, withSession(func(x *store.Session) { x.State = "\xc0" })) }, errkind.Invalid},
		{"pool without name", func() error { return st.PutPool(c, store.Pool{Properties: json.RawMessage(`{}`)}) }, errkind.Invalid},
		{"pool properties not JSON", func() error { return st.PutPool(c, store.Pool{Name: "p", Properties: json.RawMessage(`{`)}) }, errkind.Invalid},
		{"pool properties too large", func() error { return st.PutPool(c, store.Pool{Name: "p", Properties: huge}) }, errkind.LimitExceeded},
		{"execution without ID", func() error { return st.PutExecution(c, withExecution(func(x *store.Execution) { x.ID = "" })) }, errkind.Invalid},
		{"execution without status", func() error { return st.PutExecution(c, withExecution(func(x *store.Execution) { x.Status = "" })) }, errkind.Invalid},
		{"execution request not JSON", func() error {
			return st.PutExecution(c, withExecution(func(x *store.Execution) { x.Request = json.RawMessage("print(1)") }))
		}, errkind.Invalid},
		{"execution response too large", func() error { return st.PutExecution(c, withExecution(func(x *store.Execution) { x.Response = huge })) }, errkind.LimitExceeded},
		{"metadata without key", func() error { return st.PutMeta(c, "", []byte("v")) }, errkind.Invalid},
		{"delete with an empty key", func() error { return st.DeleteSession(c, "p", "") }, errkind.Invalid},
		{"delete of a key with a stray field", func() error {
			return st.Apply(c, []store.Op{store.DeleteOp(store.Key{Kind: store.KindPool, Pool: "p", ID: "x"})})
		}, errkind.Invalid},
		{"op of no kind", func() error { return st.Apply(c, []store.Op{{}}) }, errkind.Invalid},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			err := tc.put()
			wantKind(t, "put", err, tc.kind)
			var rec *store.RecordError
			if !errors.As(err, &rec) {
				t.Errorf("error %v is not a *store.RecordError", err)
			}
			if _, ok := errkind.PublicMessage(err); !ok {
				t.Errorf("error %v has no public message", err)
			}
		})
	}
	// Nothing was written by the refused puts.
	if list, err := st.ListSessions(c, "p"); err != nil || len(list) != 0 {
		t.Errorf("ListSessions after refused puts: %v, %v; want none", list, err)
	}
	if list, err := st.ListPools(c); err != nil || len(list) != 0 {
		t.Errorf("ListPools after refused puts: %v, %v; want none", list, err)
	}
	_, err := st.GetSession(c, "", "a")
	wantKind(t, "GetSession with an empty pool", err, errkind.Invalid)
	_, err = st.ListSessions(c, "")
	wantKind(t, "ListSessions with an empty pool", err, errkind.Invalid)
}

func (s *suite) testCopies(t *testing.T) {
	st, c := s.open(t), ctx(t)
	e := execution("p", "a", "x", 1)
	want := utc(e)
	want.Request = append(json.RawMessage(nil), e.Request...)
	mustNil(t, "PutExecution", st.PutExecution(c, e))
	e.Request[2] = 'X' // the caller's buffer changes after the put
	got, err := st.GetExecution(c, "p", "a", "x")
	mustNil(t, "GetExecution", err)
	diff(t, "GetExecution after the caller changed its buffer", got, want)
	got.Response[2] = 'X' // the caller changes what it read
	again, err := st.GetExecution(c, "p", "a", "x")
	mustNil(t, "GetExecution", err)
	diff(t, "GetExecution after the caller changed what it read", again, want)

	mustNil(t, "PutMeta", st.PutMeta(c, "k", []byte("value")))
	v, err := st.GetMeta(c, "k")
	mustNil(t, "GetMeta", err)
	v[0] = 'X'
	if v, _ := st.GetMeta(c, "k"); string(v) != "value" {
		t.Errorf("GetMeta after the caller changed what it read = %q", v)
	}
}

func (s *suite) testApply(t *testing.T) {
	st, c := s.open(t), ctx(t)
	ops := []store.Op{
		store.PoolOp(poolDef("p", 1)),
		store.SessionOp(session("p", "a", 1)),
		store.SessionOp(session("p", "b", 1)),
		store.ExecutionOp(execution("p", "a", "x", 1)),
		store.MetaOp("k", []byte("v")),
		// Ops on one key apply in order.
		store.SessionOp(session("p", "a", 2)),
		store.DeleteOp(store.SessionKey("p", "b")),
		store.SessionOp(session("p", "c", 1)),
		store.DeleteOp(store.SessionKey("p", "c")),
		store.SessionOp(session("p", "c", 3)),
	}
	mustNil(t, "Apply", st.Apply(c, ops))
	list, err := st.ListSessions(c, "p")
	mustNil(t, "ListSessions", err)
	diff(t, "ListSessions after Apply", list, []store.Session{utc(session("p", "a", 2)), utc(session("p", "c", 3))})
	if _, err := st.GetExecution(c, "p", "a", "x"); err != nil {
		t.Errorf("GetExecution after Apply: %v", err)
	}
	if _, err := st.GetPool(c, "p"); err != nil {
		t.Errorf("GetPool after Apply: %v", err)
	}

	// One refused op: nothing of the batch is written, and the error names it.
	bad := execution("p", "a", "y", 1)
	bad.Status = ""
	err = st.Apply(c, []store.Op{store.SessionOp(session("p", "d", 1)), store.DeleteOp(store.SessionKey("p", "a")), store.ExecutionOp(bad)})
	var rec *store.RecordError
	if !errors.As(err, &rec) || rec.Key != store.ExecutionKey("p", "a", "y") {
		t.Fatalf("Apply with a bad op: %v, want a *RecordError naming it", err)
	}
	if _, err := st.GetSession(c, "p", "d"); !errkind.Is(err, errkind.NotFound) {
		t.Errorf("a failed Apply wrote a session: GetSession: %v", err)
	}
	if _, err := st.GetSession(c, "p", "a"); err != nil {
		t.Errorf("a failed Apply deleted a session: GetSession: %v", err)
	}
	mustNil(t, "Apply of nothing", st.Apply(c, nil))
}

func (s *suite) testCanceled(t *testing.T) {
	st := s.open(t)
	c, cancel := context.WithCancel(context.Background())
	cancel()
	if err := st.PutSession(c, session("p", "a", 1)); err == nil {
		t.Errorf("PutSession with a canceled context: no error")
	}
	if _, err := st.GetSession(ctx(t), "p", "a"); !errkind.Is(err, errkind.NotFound) {
		t.Errorf("PutSession with a canceled context wrote: GetSession: %v", err)
	}
	if _, err := st.ListSessions(c, "p"); err == nil {
		t.Errorf("ListSessions with a canceled context: no error")
	}
}

// testConcurrent runs writers and readers at once (the race detector checks the rest):
// each writer owns some keys and shares others.
func (s *suite) testConcurrent(t *testing.T) {
	st, c := s.open(t), ctx(t)
	const writers, rounds = 8, 15
	var wg sync.WaitGroup
	errs := make(chan error, writers*rounds*4)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			own := fmt.Sprintf("w%d", w)
			for i := range rounds {
				errs <- st.PutSession(c, session("p", own, i))
				errs <- st.PutSession(c, session("p", "shared", w*rounds+i))
				errs <- st.Apply(c, []store.Op{
					store.ExecutionOp(execution("p", own, fmt.Sprint(i), i)),
					store.SessionOp(session("q", own, i)),
				})
				if _, err := st.ListSessions(c, "p"); err != nil {
					errs <- err
				}
				if _, err := st.GetSession(c, "p", "shared"); err != nil {
					errs <- err
				}
			}
			errs <- st.DeleteSession(c, "q", own)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent call: %v", err)
		}
	}
	list, err := st.ListSessions(c, "p")
	mustNil(t, "ListSessions", err)
	if len(list) != writers+1 {
		t.Fatalf("ListSessions: %d sessions, want %d", len(list), writers+1)
	}
	for _, got := range list {
		if got.Identifier == "shared" {
			continue
		}
		diff(t, "session "+got.Identifier, got, utc(session("p", got.Identifier, rounds-1)))
	}
	execs, err := st.ListExecutions(c, "p")
	mustNil(t, "ListExecutions", err)
	if len(execs) != writers*rounds {
		t.Errorf("ListExecutions: %d, want %d", len(execs), writers*rounds)
	}
	if list, err := st.ListSessions(c, "q"); err != nil || len(list) != 0 {
		t.Errorf("ListSessions(q) after the deletes: %d sessions, %v", len(list), err)
	}
}

func (s *suite) testReopen(t *testing.T) {
	st, c := s.open(t), ctx(t)
	mustNil(t, "PutPool", st.PutPool(c, poolDef("p", 3)))
	mustNil(t, "PutSession", st.PutSession(c, session("p", "a", 1)))
	mustNil(t, "PutExecution", st.PutExecution(c, execution("p", "a", "x", 1)))
	mustNil(t, "PutMeta", st.PutMeta(c, "k", []byte("v")))
	mustNil(t, "PutSession", st.PutSession(c, session("p", "gone", 1)))
	mustNil(t, "DeleteSession", st.DeleteSession(c, "p", "gone"))

	old := st
	st = s.reopen(t, st)
	mustNil(t, "Close again", old.Close())
	_, err := old.GetSession(c, "p", "a")
	wantKind(t, "GetSession on a closed store", err, errkind.Unavailable)
	wantKind(t, "PutSession on a closed store", old.PutSession(c, session("p", "b", 1)), errkind.Unavailable)

	p, err := st.GetPool(c, "p")
	mustNil(t, "GetPool after reopening", err)
	diff(t, "GetPool after reopening", p, utc(poolDef("p", 3)))
	list, err := st.ListSessions(c, "p")
	mustNil(t, "ListSessions after reopening", err)
	diff(t, "ListSessions after reopening", list, []store.Session{utc(session("p", "a", 1))})
	e, err := st.GetExecution(c, "p", "a", "x")
	mustNil(t, "GetExecution after reopening", err)
	diff(t, "GetExecution after reopening", e, utc(execution("p", "a", "x", 1)))
	v, err := st.GetMeta(c, "k")
	mustNil(t, "GetMeta after reopening", err)
	if string(v) != "v" {
		t.Errorf("GetMeta after reopening = %q", v)
	}
}

// testWriteBehind runs the write-behind layer over the store: many bumps of one session
// and puts of many, a Flush, and everything is in the store, also after reopening it.
func (s *suite) testWriteBehind(t *testing.T) {
	st, c := s.open(t), ctx(t)
	a, err := store.NewAsync(st, store.AsyncOptions{OnError: func(err error) { t.Errorf("OnError: %v", err) }})
	mustNil(t, "NewAsync", err)
	mustNil(t, "Start", a.Start())
	const bumps, sessions = 1000, 50
	for i := range bumps {
		mustNil(t, "PutSession", a.PutSession(session("p", "hot", i)))
	}
	for i := range sessions {
		mustNil(t, "PutSession", a.PutSession(session("p", fmt.Sprintf("s%02d", i), i)))
		mustNil(t, "PutExecution", a.PutExecution(execution("p", fmt.Sprintf("s%02d", i), "x", i)))
	}
	mustNil(t, "DeleteSession", a.DeleteSession("p", "s00"))
	mustNil(t, "Flush", a.Flush(c))
	got, err := st.GetSession(c, "p", "hot")
	mustNil(t, "GetSession after Flush", err)
	diff(t, "GetSession after Flush", got, utc(session("p", "hot", bumps-1)))
	mustNil(t, "PutSession", a.PutSession(session("p", "last", 1)))
	mustNil(t, "Close", a.Close(c))
	if stats := a.Stats(); stats.Pending != 0 || stats.Failures != 0 || stats.Dropped != 0 {
		t.Errorf("Stats after Close: %+v", stats)
	}

	st = s.reopen(t, st)
	list, err := st.ListSessions(c, "p")
	mustNil(t, "ListSessions after reopening", err)
	if len(list) != sessions+1 { // hot, last, s01..s49
		t.Errorf("ListSessions after reopening: %d sessions, want %d", len(list), sessions+1)
	}
	if _, err := st.GetSession(c, "p", "last"); err != nil {
		t.Errorf("a put enqueued before Close is not in the store: %v", err)
	}
	execs, err := st.ListExecutions(c, "p")
	mustNil(t, "ListExecutions after reopening", err)
	if len(execs) != sessions {
		t.Errorf("ListExecutions after reopening: %d, want %d", len(execs), sessions)
	}
}

// utc returns a record with its times in UTC, as a store returns it.
func utc[T store.Pool | store.Session | store.Execution](r T) T {
	switch x := any(&r).(type) {
	case *store.Pool:
		x.CreatedAt, x.UpdatedAt = x.CreatedAt.UTC(), x.UpdatedAt.UTC()
	case *store.Session:
		x.CreatedAt, x.LastRequestAt, x.ExpiresAt = x.CreatedAt.UTC(), x.LastRequestAt.UTC(), x.ExpiresAt.UTC()
	case *store.Execution:
		x.CreatedAt, x.FinishedAt = x.CreatedAt.UTC(), x.FinishedAt.UTC()
	}
	return r
}
