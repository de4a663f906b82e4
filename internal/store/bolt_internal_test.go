package store

import (
	"path/filepath"
	"testing"
)

// TestBoltSyncs: a commit is on the disk when it returns (a SIGKILL, which TestBoltCrash
// uses, keeps the page cache; only fsync survives a power loss, and bbolt skips it when
// told to).
func TestBoltSyncs(t *testing.T) {
	b, err := OpenBolt(filepath.Join(t.TempDir(), FileName), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.db.NoSync || b.db.NoGrowSync || b.db.NoFreelistSync {
		t.Errorf("bbolt options: NoSync %v, NoGrowSync %v, NoFreelistSync %v; want every commit synced whole",
			b.db.NoSync, b.db.NoGrowSync, b.db.NoFreelistSync)
	}
}
