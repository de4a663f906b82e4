package store_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/sandbox/sandboxtest"
	"github.com/sessiond/sessiond/internal/store"
)

const crashChildEnv = "SESSIOND_STORE_CRASH_CHILD"

// crashBase is the time the crash test's sessions count rounds from.
var crashBase = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// crashSession is session i as round writes it: its last request is round seconds after
// crashBase.
func crashSession(i, round int) store.Session {
	return store.Session{Pool: "crash", Identifier: fmt.Sprintf("s-%03d", i), SandboxID: fmt.Sprintf("sb-%d-%d", i, round),
		State: "Allocated", CreatedAt: crashBase, LastRequestAt: crashBase.Add(time.Duration(round) * time.Second)}
}

func roundMarker(round int) string { return fmt.Sprintf("round-%06d", round) }

// crashChild is the process TestBoltCrash kills: it writes rounds through the write-behind
// layer (a hundred sessions bumped, and one new marker record per round), flushes after
// each and prints "flushed N", until it is killed.
func crashChild() {
	fail := func(err error) {
		fmt.Println("error:", err)
		os.Exit(2)
	}
	st, err := store.OpenBolt(os.Getenv(crashChildEnv), store.Options{})
	if err != nil {
		fail(err)
	}
	a, err := store.NewAsync(st, store.AsyncOptions{OnError: func(err error) { fmt.Fprintln(os.Stderr, err) }})
	if err != nil {
		fail(err)
	}
	if err := a.Start(); err != nil {
		fail(err)
	}
	for round := 1; ; round++ {
		for i := range 100 {
			if err := a.PutSession(crashSession(i, round)); err != nil {
				fail(err)
			}
		}
		if err := a.PutSession(store.Session{Pool: "crash", Identifier: roundMarker(round), SandboxID: "sb"}); err != nil {
			fail(err)
		}
		if err := a.Flush(context.Background()); err != nil {
			fail(err)
		}
		fmt.Printf("flushed %d\n", round)
	}
}

// TestBoltCrash kills a process that writes through the write-behind layer (SIGKILL, in the
// middle of its writes) and checks that the file it leaves is consistent and holds
// everything the process had flushed. While the process lives, a second opener fails
// within its lock timeout.
func TestBoltCrash(t *testing.T) {
	path := filepath.Join(t.TempDir(), store.FileName)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+path)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	defer func() {
		if !killed {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()

	// Read "flushed N" lines until round 5 is durable.
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	flushed := 0
	deadline := time.After(sandboxtest.Timeout(60 * time.Second))
	for flushed < 5 {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("the child exited after round %d; stderr:\n%s", flushed, stderr.String())
			}
			n, err := strconv.Atoi(strings.TrimPrefix(line, "flushed "))
			if err != nil {
				t.Fatalf("the child said %q; stderr:\n%s", line, stderr.String())
			}
			flushed = n
		case <-deadline:
			t.Fatalf("the child flushed %d rounds in time, want 5; stderr:\n%s", flushed, stderr.String())
		}
	}

	// A second sessiond on the same data directory fails clearly, within its timeout.
	start := time.Now()
	_, err = store.OpenBolt(path, store.Options{LockTimeout: 200 * time.Millisecond})
	elapsed := time.Since(start)
	if !errkind.Is(err, errkind.Unavailable) || !strings.Contains(err.Error(), "another process") {
		t.Errorf("OpenBolt while another process has the store open: %v, want an Unavailable error naming the other process", err)
	}
	if elapsed > sandboxtest.Timeout(5*time.Second) {
		t.Errorf("OpenBolt with a lock timeout of 200ms gave up after %v", elapsed)
	}

	// The child keeps writing: kill it in the middle.
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed = true
	cmd.Wait()
	for range lines { // the pipe is closed: drain what the reader still holds
	}

	checkConsistent(t, path)
	st := openBolt(t, path)
	defer st.Close()
	ctx := context.Background()
	for r := 1; r <= flushed; r++ {
		if _, err := st.GetSession(ctx, "crash", roundMarker(r)); err != nil {
			t.Errorf("round %d was flushed before the kill but its marker is not in the store: %v", r, err)
		}
	}
	list, err := st.ListSessions(ctx, "crash")
	if err != nil {
		t.Fatalf("ListSessions after the crash: %v", err)
	}
	seen := 0
	for _, s := range list {
		if !strings.HasPrefix(s.Identifier, "s-") {
			continue
		}
		seen++
		if round := int(s.LastRequestAt.Sub(crashBase) / time.Second); round < flushed {
			t.Errorf("session %s is at round %d, but round %d was flushed", s.Identifier, round, flushed)
		}
	}
	if seen != 100 {
		t.Errorf("%d sessions after the crash, want 100", seen)
	}
	t.Logf("killed after round %d was flushed; the store holds %d records of the pool", flushed, len(list))
}

// checkConsistent runs bbolt's consistency check on the file at path.
func checkConsistent(t *testing.T, path string) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatalf("opening the file after the crash: %v", err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		var errs []error
		for err := range tx.Check() {
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	})
	if err != nil {
		t.Errorf("the file is inconsistent after the crash: %v", err)
	}
}

func TestBoltLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), store.FileName)
	first := openBolt(t, path)
	const timeout = 300 * time.Millisecond
	start := time.Now()
	second, err := store.OpenBolt(path, store.Options{LockTimeout: timeout})
	elapsed := time.Since(start)
	if err == nil {
		second.Close()
		t.Fatal("a second OpenBolt of an open store succeeded")
	}
	if !errkind.Is(err, errkind.Unavailable) || !strings.Contains(err.Error(), path) {
		t.Errorf("second OpenBolt: %v, want Unavailable naming the file", err)
	}
	if msg, ok := errkind.PublicMessage(err); !ok || !strings.Contains(msg, "another sessiond") {
		t.Errorf("second OpenBolt's message %q does not say what to check", msg)
	}
	// bbolt polls the lock every 50ms and gives up at most one poll early.
	if elapsed < timeout-100*time.Millisecond || elapsed > timeout+sandboxtest.Timeout(5*time.Second) {
		t.Errorf("second OpenBolt gave up after %v, want about %v", elapsed, timeout)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	openBolt(t, path).Close()
}

// rawUpdate changes the store file at path with bbolt directly.
func rawUpdate(t *testing.T, path string, f func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(f); err != nil {
		t.Fatal(err)
	}
}

func TestBoltSchemaVersion(t *testing.T) {
	ctx := context.Background()
	newStore := func(t *testing.T) string {
		path := filepath.Join(t.TempDir(), store.FileName)
		st := openBolt(t, path)
		if err := st.PutSession(ctx, store.Session{Pool: "p", Identifier: "a", SandboxID: "sb"}); err != nil {
			t.Fatal(err)
		}
		st.Close()
		return path
	}
	setSchema := func(v []byte) func(tx *bolt.Tx) error {
		return func(tx *bolt.Tx) error {
			b := tx.Bucket([]byte("meta"))
			if v == nil {
				return b.Delete([]byte(store.SchemaKey))
			}
			return b.Put([]byte(store.SchemaKey), v)
		}
	}
	t.Run("Newer", func(t *testing.T) {
		path := newStore(t)
		rawUpdate(t, path, setSchema([]byte(strconv.Itoa(store.SchemaVersion+1))))
		_, err := store.OpenBolt(path, store.Options{})
		if !errkind.Is(err, errkind.Invalid) || !strings.Contains(err.Error(), "newer sessiond") || !strings.Contains(err.Error(), path) {
			t.Errorf("OpenBolt of a newer store: %v, want Invalid saying a newer sessiond wrote it", err)
		}
	})
	for name, v := range map[string][]byte{"Garbage": []byte("x"), "Zero": []byte("0"), "Missing": nil} {
		t.Run(name, func(t *testing.T) {
			path := newStore(t)
			rawUpdate(t, path, setSchema(v))
			_, err := store.OpenBolt(path, store.Options{})
			var ce *store.CorruptError
			if !errors.As(err, &ce) || ce.Bucket != "meta" || ce.Key != store.SchemaKey {
				t.Errorf("OpenBolt with schema version %q: %v, want a CorruptError naming meta/%s", v, err, store.SchemaKey)
			}
		})
	}
	t.Run("Current", func(t *testing.T) {
		path := newStore(t)
		st := openBolt(t, path)
		defer st.Close()
		if _, err := st.GetSession(ctx, "p", "a"); err != nil {
			t.Errorf("GetSession after reopening: %v", err)
		}
	})
	t.Run("EmptyBoltFile", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), store.FileName)
		rawUpdate(t, path, func(*bolt.Tx) error { return nil })
		st := openBolt(t, path)
		defer st.Close()
		if v, err := st.GetMeta(ctx, store.SchemaKey); err != nil || string(v) != strconv.Itoa(store.SchemaVersion) {
			t.Errorf("GetMeta(SchemaKey) of a new store: %q, %v", v, err)
		}
	})
	t.Run("NotAStore", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), store.FileName)
		if err := os.WriteFile(path, []byte(strings.Repeat("not a database\n", 1000)), 0o600); err != nil {
			t.Fatal(err)
		}
		if st, err := store.OpenBolt(path, store.Options{LockTimeout: time.Second}); err == nil || !strings.Contains(err.Error(), path) {
			if st != nil {
				st.Close()
			}
			t.Errorf("OpenBolt of a file that is not a store: %v, want an error naming it", err)
		}
	})
}

// TestBoltCorruptRecord damages two records in the file: reading them fails with an
// error naming bucket and key, and the other records stay readable.
func TestBoltCorruptRecord(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), store.FileName)
	st := openBolt(t, path)
	for _, id := range []string{"a", "b", "c"} {
		if err := st.PutSession(ctx, store.Session{Pool: "p", Identifier: id, SandboxID: "sb-" + id}); err != nil {
			t.Fatal(err)
		}
	}
	st.Close()
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("sessions"))
		if err := b.Put([]byte("p\x00b"), []byte(`{"pool":"p","identifier":`)); err != nil {
			return err
		}
		// Valid JSON, but another session's record.
		other, _ := json.Marshal(store.Session{Pool: "p", Identifier: "z", SandboxID: "sb-z"})
		return b.Put([]byte("p\x00c"), other)
	})

	st = openBolt(t, path)
	defer st.Close()
	for id, want := range map[string]string{"b": "", "c": "holds the record of p/z"} {
		_, err := st.GetSession(ctx, "p", id)
		var ce *store.CorruptError
		if !errors.As(err, &ce) || ce.Bucket != "sessions" || ce.Key != "p/"+id || !strings.Contains(err.Error(), "sessions/p/"+id) || !strings.Contains(err.Error(), want) {
			t.Errorf("GetSession of corrupt record %s: %v, want a CorruptError naming sessions/p/%s", id, err, id)
		}
	}
	if s, err := st.GetSession(ctx, "p", "a"); err != nil || s.SandboxID != "sb-a" {
		t.Errorf("GetSession of an intact record next to corrupt ones: %+v, %v", s, err)
	}
	list, err := st.ListSessions(ctx, "p")
	if len(list) != 1 || list[0].Identifier != "a" {
		t.Errorf("ListSessions returned %+v, want the intact record a", list)
	}
	if err == nil || !strings.Contains(err.Error(), "sessions/p/b") || !strings.Contains(err.Error(), "sessions/p/c") {
		t.Errorf("ListSessions' error %v does not name both corrupt records", err)
	}
	// A corrupt record can be overwritten.
	if err := st.PutSession(ctx, store.Session{Pool: "p", Identifier: "b", SandboxID: "sb-b2"}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.GetSession(ctx, "p", "b"); err != nil {
		t.Errorf("GetSession after overwriting a corrupt record: %v", err)
	}
}

// TestRecordLimit: an encoded record above Options.MaxRecordBytes is refused, naming it,
// and nothing is written; the limit's default is DefaultMaxRecordBytes.
func TestRecordLimit(t *testing.T) {
	ctx := context.Background()
	const limit = 1024
	backends := map[string]func(t *testing.T, o store.Options) (store.Store, error){
		"Bolt": func(t *testing.T, o store.Options) (store.Store, error) {
			return store.OpenBolt(filepath.Join(t.TempDir(), store.FileName), o)
		},
		"Memory": func(t *testing.T, o store.Options) (store.Store, error) { return store.NewMemory(o) },
	}
	for name, open := range backends {
		t.Run(name, func(t *testing.T) {
			if _, err := open(t, store.Options{MaxRecordBytes: -1}); !errkind.Is(err, errkind.Invalid) {
				t.Errorf("a negative record limit: %v, want Invalid", err)
			}
			st, err := open(t, store.Options{MaxRecordBytes: limit})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			exe := func(n int) store.Execution {
				return store.Execution{Pool: "p", Identifier: "a", ID: fmt.Sprint(n), Status: "Succeeded",
					Request: json.RawMessage(`"` + strings.Repeat("x", n) + `"`)}
			}
			if err := st.PutExecution(ctx, exe(limit/2)); err != nil {
				t.Errorf("a record below the limit: %v", err)
			}
			err = st.PutExecution(ctx, exe(limit))
			var rec *store.RecordError
			if !errkind.Is(err, errkind.LimitExceeded) || !errors.As(err, &rec) || rec.Key != store.ExecutionKey("p", "a", fmt.Sprint(limit)) {
				t.Errorf("a record above the limit: %v, want LimitExceeded naming it", err)
			}
			if _, err := st.GetExecution(ctx, "p", "a", fmt.Sprint(limit)); !errkind.Is(err, errkind.NotFound) {
				t.Errorf("the refused record was written: %v", err)
			}
		})
	}
	t.Run("Default", func(t *testing.T) {
		st, err := store.NewMemory(store.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		// The largest valid execution fits the default limit.
		doc := json.RawMessage(`"` + strings.Repeat("x", store.MaxDocumentBytes-2) + `"`)
		long := strings.Repeat("\x01", store.MaxKeyBytes) // escaped as \u0001: six bytes each
		e := store.Execution{Pool: long, Identifier: long, ID: long, Status: long, Request: doc, Response: doc}
		if err := st.PutExecution(ctx, e); err != nil {
			t.Errorf("the largest valid execution: %v", err)
		}
	})
}

func TestMemoryReopenWhileOpen(t *testing.T) {
	m, err := store.NewMemory(store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Reopen(); !errkind.Is(err, errkind.Unavailable) {
		t.Errorf("Reopen of an open store: %v, want Unavailable", err)
	}
	m.Close()
	m2, err := m.Reopen()
	if err != nil {
		t.Fatalf("Reopen after Close: %v", err)
	}
	defer m2.Close()
	if _, err := m.Reopen(); !errkind.Is(err, errkind.Unavailable) {
		t.Errorf("a second Reopen while the first is open: %v, want Unavailable", err)
	}
}
