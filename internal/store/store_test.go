package store_test

import (
	"os"
	"path/filepath"
	"testing"

	"go.uber.org/goleak"

	"github.com/sessiond/sessiond/internal/store"
	"github.com/sessiond/sessiond/internal/store/storetest"
)

func TestMain(m *testing.M) {
	if os.Getenv(crashChildEnv) != "" {
		crashChild() // the child of TestBoltCrash; it never returns
	}
	// The write-behind writer must have stopped when the tests end.
	goleak.VerifyTestMain(m)
}

func openBolt(t *testing.T, path string) *store.Bolt {
	t.Helper()
	b, err := store.OpenBolt(path, store.Options{})
	if err != nil {
		t.Fatalf("OpenBolt: %v", err)
	}
	return b
}

func TestBoltConformance(t *testing.T) {
	storetest.Run(t, storetest.Config{
		Open: func(t *testing.T) store.Store {
			return openBolt(t, filepath.Join(t.TempDir(), "data", store.FileName))
		},
		Reopen: func(t *testing.T, s store.Store) store.Store { return openBolt(t, s.(*store.Bolt).Path()) },
	})
}

func TestMemoryConformance(t *testing.T) {
	storetest.Run(t, storetest.Config{
		Open: func(t *testing.T) store.Store {
			m, err := store.NewMemory(store.Options{})
			if err != nil {
				t.Fatalf("NewMemory: %v", err)
			}
			return m
		},
		Reopen: func(t *testing.T, s store.Store) store.Store {
			m, err := s.(*store.Memory).Reopen()
			if err != nil {
				t.Fatalf("Reopen: %v", err)
			}
			return m
		},
	})
}
