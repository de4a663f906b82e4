package store_test

import (
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/store"
)

// The cost of the hot path's write: a session's last request bumped through the
// write-behind layer, with the writer running behind it on a real file. It should be well
// under a microsecond and allocate nothing.
// Run: go test -run '^$' -bench Async -benchmem ./internal/store/

func benchAsync(b *testing.B) *store.Async {
	st, err := store.OpenBolt(filepath.Join(b.TempDir(), store.FileName), store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	a, err := store.NewAsync(st, store.AsyncOptions{OnError: func(err error) { b.Error(err) }})
	if err != nil {
		b.Fatal(err)
	}
	if err := a.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := a.Close(b.Context()); err != nil {
			b.Error(err)
		}
		st.Close()
	})
	return a
}

func benchSession(identifier string, i int) store.Session {
	at := time.Unix(int64(i), 0)
	return store.Session{Pool: "default", Identifier: identifier, SandboxID: "sb-0123456789abcdef",
		Runtime: "runsc", State: "Allocated", CreatedAt: at, LastRequestAt: at, ExpiresAt: at.Add(5 * time.Minute)}
}

// BenchmarkAsyncBumpOne bumps one session over and over.
func BenchmarkAsyncBumpOne(b *testing.B) {
	a := benchAsync(b)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if err := a.PutSession(benchSession("user-42", i)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAsyncBumpMany bumps 1000 sessions in turn, from all cores at once.
func BenchmarkAsyncBumpMany(b *testing.B) {
	a := benchAsync(b)
	ids := make([]string, 1000)
	for i := range ids {
		ids[i] = fmt.Sprintf("user-%04d", i)
	}
	var n atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := int(n.Add(1))
			if err := a.PutSession(benchSession(ids[i%len(ids)], i)); err != nil {
				b.Fatal(err)
			}
		}
	})
}
