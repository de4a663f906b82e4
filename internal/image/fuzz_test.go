package image

import (
	"archive/tar"
	"context"
	"os"
	"strings"
	"testing"
)

// FuzzApplyLayer feeds arbitrary bytes to ApplyLayer as a layer. Whatever it does with them,
// it must not panic and must never create, change or remove anything outside the root: the
// sentinel directory beside the root keeps exactly its one file. Run it with
//
//	go test -run '^$' -fuzz FuzzApplyLayer ./internal/image
func FuzzApplyLayer(f *testing.F) {
	seeds := [][]ent{
		{dirEnt("./", 0o755), fileEnt("etc/passwd", "root:x:0:0::/root:/bin/sh\n", 0o644), symlinkEnt("bin", "usr/bin")},
		{fileEnt("../sentinel/x", "x", 0o644)},
		{fileEnt("/../../sentinel/x", "x", 0o644)},
		{symlinkEnt("evil", "../sentinel"), fileEnt("evil/x", "x", 0o644)},
		{symlinkEnt("evil", "/"), dirEnt("evil/tmp/", 0o777)},
		{symlinkEnt("a", "b"), symlinkEnt("b", "../sentinel"), fileEnt("a/keep", "overwrite", 0o644)},
		{symlinkEnt("evil", "../sentinel"), fileEnt("evil/.wh.keep", "", 0o644)},
		{symlinkEnt("evil", "../sentinel"), fileEnt("evil/.wh..wh..opq", "", 0o644)},
		{linkEnt("x", "../sentinel/keep")},
		{symlinkEnt("evil", "../sentinel"), linkEnt("x", "evil/keep")},
		{fileEnt("f", "f", 0o644), linkEnt("g", "f"), symlinkEnt("f", "../sentinel/keep"), fileEnt("g", "g", 0o644)},
		{dirEnt("a/", 0o755), fileEnt("a/x", "x", 0o644), fileEnt(".wh.a", "", 0o644), fileEnt("a/.wh..wh..opq", "", 0o644)},
		{dirEnt("ro/", 0o500), fileEnt("ro/f", "f", 0o400), symlinkEnt("ro", "../sentinel")},
		{fileEnt(strings.Repeat("n", 300), "x", 0o644)},
		{fileEnt(strings.Repeat("d/", 200)+"x", "x", 0o644)},
		{specialEnt("dev/null", tar.TypeChar), specialEnt("fifo", tar.TypeFifo)},
	}
	for _, s := range seeds {
		f.Add(tarball(f, s...))
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		d := newLayerDirs(t)
		root, err := os.OpenRoot(d.root)
		if err != nil {
			t.Fatal(err)
		}
		defer root.Close()
		ApplyLayer(context.Background(), root, strings.NewReader(string(data)), Limits{MaxSize: 1 << 20, MaxEntries: 1000})
		d.checkContained(t)
		// The root itself must still be a directory we can clean up.
		if fi, err := os.Lstat(d.root); err != nil || !fi.IsDir() {
			t.Fatalf("root is no longer a directory: %v", err)
		}
		if err := removeTree(d.root); err != nil {
			t.Fatalf("cleaning up: %v", err)
		}
	})
}
