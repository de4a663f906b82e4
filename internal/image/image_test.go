package image

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sessiond/sessiond/internal/errkind"
)

func openStore(t testing.TB) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "images"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// rootfsTar is a small root filesystem; distinct seeds give distinct image IDs.
func rootfsTar(t testing.TB, seed string) []byte {
	return tarball(t,
		dirEnt("./", 0o755),
		dirEnt("etc/", 0o755),
		fileEnt("etc/os-release", "ID=test\n", 0o644),
		fileEnt("etc/seed", seed, 0o644),
		symlinkEnt("bin", "usr/bin"),
		fileEnt("usr/bin/python3", "#!elf", 0o755),
	)
}

func idOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func gzipped(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// checkClean fails t unless tmp/ is empty and rootfs/ holds exactly the trees of ids.
func checkClean(t testing.TB, s *Store, ids ...string) {
	t.Helper()
	if got := listDir(t, s.tmpDir()); len(got) != 0 {
		t.Errorf("tmp/ holds %q, want nothing", got)
	}
	var want []string
	for _, id := range ids {
		want = append(want, strings.TrimPrefix(id, "sha256:"))
	}
	slices.Sort(want)
	want = slices.Compact(want)
	if got := listDir(t, s.rootfsDir()); !slices.Equal(got, want) {
		t.Errorf("rootfs/ holds %q, want %q", got, want)
	}
}

func names(ims []Image) []string {
	var out []string
	for _, im := range ims {
		out = append(out, im.Name+"="+im.ShortID())
	}
	return out
}

func TestImport(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	plain := rootfsTar(t, "one")
	cfg := Config{
		Env:        []string{"PATH=/usr/bin:/bin", "LANG=C.UTF-8"},
		Cmd:        []string{"python3"},
		WorkingDir: "/mnt/data",
		User:       "1000:1000",
		Labels:     map[string]string{"sessiond.recipe": "test"},
		Packages:   []Package{{Name: "python3", Version: "3.11.2-1+b1"}},
	}
	before := time.Now()
	im, err := s.Import(ctx, "python", bytes.NewReader(plain), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if im.Name != "python" || im.ID != idOf(plain) || im.Size != int64(len("ID=test\none#!elf")) {
		t.Errorf("Import = %+v, want name python, ID %s, size 16", im, idOf(plain))
	}
	if im.RootFS != filepath.Join(s.Dir(), "rootfs", strings.TrimPrefix(im.ID, "sha256:")) {
		t.Errorf("RootFS = %s", im.RootFS)
	}
	if im.Created.Before(before.Add(-time.Second)) || im.Created.After(time.Now()) {
		t.Errorf("Created = %v, want about now", im.Created)
	}
	if diff := cmp.Diff(cfg, im.Config); diff != "" {
		t.Errorf("Config mismatch (-want +got):\n%s", diff)
	}
	if b, err := os.ReadFile(filepath.Join(im.RootFS, "etc/seed")); err != nil || string(b) != "one" {
		t.Errorf("etc/seed = %q, %v", b, err)
	}
	if fi, err := os.Stat(im.RootFS); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("rootfs mode = %v, %v; want 0755", fi.Mode(), err)
	}

	// The same content gzipped has the same ID (the hash is of the uncompressed stream),
	// and is deduplicated.
	im2, err := s.Import(ctx, "python-copy:v1", bytes.NewReader(gzipped(t, plain)), Config{})
	if err != nil {
		t.Fatal(err)
	}
	if im2.ID != im.ID || im2.RootFS != im.RootFS {
		t.Errorf("gzip import = %s at %s, want %s at %s", im2.ID, im2.RootFS, im.ID, im.RootFS)
	}
	checkClean(t, s, im.ID)

	// A second Store on the directory (another process) sees the same, config included.
	s2, err := Open(s.Dir())
	if err != nil {
		t.Fatal(err)
	}
	got, err := s2.Get(ctx, "python")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(im, got); diff != "" {
		t.Errorf("Get from a new Store mismatch (-want +got):\n%s", diff)
	}
}

func TestGet(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	a, err := s.Import(ctx, "a", bytes.NewReader(rootfsTar(t, "a")), Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Import(ctx, "b:latest", bytes.NewReader(rootfsTar(t, "b")), Config{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Import(ctx, "also-a", bytes.NewReader(rootfsTar(t, "a")), Config{}); err != nil {
		t.Fatal(err)
	}
	hexID := strings.TrimPrefix(a.ID, "sha256:")
	tests := []struct {
		ref      string
		wantName string
		kind     errkind.Kind
	}{
		{ref: "a", wantName: "a"},
		{ref: "also-a", wantName: "also-a"},
		{ref: "b:latest", wantName: "b:latest"},
		{ref: a.ID, wantName: "a"}, // several names: the first
		{ref: hexID, wantName: "a"},
		{ref: hexID[:12], wantName: "a"},
		{ref: "sha256:" + hexID[:12], wantName: "a"},
		{ref: hexID[:11], kind: errkind.NotFound},
		{ref: "b", kind: errkind.NotFound},
		{ref: "000000000000", kind: errkind.NotFound},
		{ref: strings.ToUpper(hexID[:12]), kind: errkind.NotFound},
		{ref: "", kind: errkind.Invalid},
	}
	for _, tt := range tests {
		t.Run(tt.ref, func(t *testing.T) {
			im, err := s.Get(ctx, tt.ref)
			if tt.wantName == "" {
				if !errkind.Is(err, tt.kind) {
					t.Errorf("Get(%q) = %+v, %v; want kind %v", tt.ref, im, err, tt.kind)
				}
				return
			}
			if err != nil || im.Name != tt.wantName {
				t.Errorf("Get(%q) = %q, %v; want %q", tt.ref, im.Name, err, tt.wantName)
			}
		})
	}

	list, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := names(list), []string{"a=" + a.ShortID(), "also-a=" + a.ShortID(), "b:latest=" + list[2].ShortID()}; !slices.Equal(got, want) {
		t.Errorf("List = %q, want %q", got, want)
	}
}

func TestGetAmbiguous(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	// Two IDs sharing 13 hex digits cannot be made by hashing, so write the index directly.
	common := strings.Repeat("ab", 6) + "c"
	ix := &index{Images: []Image{
		{Name: "one", ID: "sha256:" + common + strings.Repeat("1", 51)},
		{Name: "two", ID: "sha256:" + common + strings.Repeat("2", 51)},
	}}
	unlock, err := s.lock()
	if err != nil {
		t.Fatal(err)
	}
	err = s.writeIndex(ix)
	unlock()
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{common[:12], common, "sha256:" + common} {
		if _, err := s.Get(ctx, ref); !errkind.Is(err, errkind.Invalid) || !strings.Contains(err.Error(), "ambiguous") {
			t.Errorf("Get(%q) error = %v, want Invalid ambiguous", ref, err)
		}
	}
	if im, err := s.Get(ctx, common+"1"); err != nil || im.Name != "one" {
		t.Errorf("Get(longer prefix) = %q, %v; want one", im.Name, err)
	}
}

func TestImportBadName(t *testing.T) {
	s := openStore(t)
	for _, name := range []string{"", "Python", "-x", "a b", "sha256:abc", "../x", "x\n", strings.Repeat("a", 256), "ü"} {
		_, err := s.Import(context.Background(), name, bytes.NewReader(rootfsTar(t, "x")), Config{})
		if !errkind.Is(err, errkind.Invalid) {
			t.Errorf("Import(%q) error = %v, want Invalid", name, err)
		}
	}
	for _, name := range []string{"python", "python-small", "py:3.11", "ghcr.io/org/img:v1.2", "localhost:5000/x@sha256:00", "a_b+c"} {
		if _, err := s.Import(context.Background(), name, bytes.NewReader(rootfsTar(t, "x")), Config{}); err != nil {
			t.Errorf("Import(%q) = %v, want success", name, err)
		}
	}
}

func TestRemove(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	a, _ := s.Import(ctx, "a", bytes.NewReader(rootfsTar(t, "a")), Config{})
	s.Import(ctx, "a2", bytes.NewReader(rootfsTar(t, "a")), Config{})
	b, _ := s.Import(ctx, "b", bytes.NewReader(rootfsTar(t, "b")), Config{})
	checkClean(t, s, a.ID, b.ID)

	if err := s.Remove(ctx, a.ID); !errkind.Is(err, errkind.Invalid) {
		t.Errorf("Remove(ID with two names) = %v, want Invalid", err)
	}
	if err := s.Remove(ctx, "nope"); !errkind.Is(err, errkind.NotFound) {
		t.Errorf("Remove(nope) = %v, want NotFound", err)
	}
	if err := s.Remove(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	checkClean(t, s, a.ID, b.ID) // a2 still names it
	if im, err := s.Get(ctx, a.ShortID()); err != nil || im.Name != "a2" {
		t.Errorf("Get(a's ID) = %q, %v; want a2", im.Name, err)
	}
	if err := s.Remove(ctx, a.ShortID()); err != nil { // its only name now
		t.Fatal(err)
	}
	checkClean(t, s, b.ID)
	if _, err := s.Get(ctx, "a2"); !errkind.Is(err, errkind.NotFound) {
		t.Errorf("Get(a2) after Remove = %v, want NotFound", err)
	}
	if err := s.Remove(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	checkClean(t, s)
	if list, _ := s.List(ctx); len(list) != 0 {
		t.Errorf("List = %q, want empty", names(list))
	}
}

func TestImportReplacesName(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	old, _ := s.Import(ctx, "python", bytes.NewReader(rootfsTar(t, "old")), Config{User: "old"})
	shared, _ := s.Import(ctx, "shared", bytes.NewReader(rootfsTar(t, "shared")), Config{})
	s.Import(ctx, "shared2", bytes.NewReader(rootfsTar(t, "shared")), Config{})
	cur, err := s.Import(ctx, "python", bytes.NewReader(rootfsTar(t, "new")), Config{})
	if err != nil {
		t.Fatal(err)
	}
	// Moving a name still shared by another name leaves no unnamed image.
	if _, err := s.Import(ctx, "shared2", bytes.NewReader(rootfsTar(t, "new")), Config{}); err != nil {
		t.Fatal(err)
	}
	list, _ := s.List(ctx)
	want := []string{"python=" + cur.ShortID(), "shared=" + shared.ShortID(), "shared2=" + cur.ShortID(), "=" + old.ShortID()}
	if got := names(list); !slices.Equal(got, want) {
		t.Errorf("List = %q, want %q", got, want)
	}
	if list[3].Config.User != "old" || list[3].RootFS == "" {
		t.Errorf("unnamed image = %+v, want the old config and rootfs", list[3])
	}
	checkClean(t, s, old.ID, shared.ID, cur.ID)

	// Importing the old content again names the unnamed image.
	if _, err := s.Import(ctx, "back", bytes.NewReader(rootfsTar(t, "old")), Config{}); err != nil {
		t.Fatal(err)
	}
	list, _ = s.List(ctx)
	if got := names(list); !slices.Contains(got, "back="+old.ShortID()) || slices.Contains(got, "="+old.ShortID()) {
		t.Errorf("List = %q, want back named and no unnamed image", got)
	}
	s.Remove(ctx, "back")
	checkClean(t, s, shared.ID, cur.ID)
}

func TestImportFailureKeepsOldName(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	good, _ := s.Import(ctx, "python", bytes.NewReader(rootfsTar(t, "good")), Config{})
	tests := []struct {
		name  string
		input []byte
		kind  errkind.Kind
	}{
		{"traversal", tarball(t, fileEnt("../../escape", "x", 0o644)), errkind.Invalid},
		{"symlink write-through", tarball(t, symlinkEnt("x", "/"), fileEnt("x/etc/evil", "x", 0o644)), errkind.Invalid},
		{"truncated", rootfsTar(t, "good2")[:1500], errkind.Invalid},
		{"corrupt gzip", func() []byte {
			b := gzipped(t, rootfsTar(t, "good3"))
			b[len(b)-6] ^= 0xff // the CRC
			return b
		}(), errkind.Invalid},
		{"zstd", []byte("\x28\xb5\x2f\xfd rest"), errkind.Invalid},
		{"trailing junk", append(rootfsTar(t, "good4"), bytes.Repeat([]byte{1}, maxTrailer+1)...), errkind.Invalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.Import(ctx, "python", bytes.NewReader(tt.input), Config{})
			if !errkind.Is(err, tt.kind) {
				t.Errorf("Import error = %v, want kind %v", err, tt.kind)
			}
			if im, err := s.Get(ctx, "python"); err != nil || im.ID != good.ID {
				t.Errorf("python = %s, %v after failed import; want %s", im.ID, err, good.ID)
			}
			checkClean(t, s, good.ID)
		})
	}
}

func TestImportCancel(t *testing.T) {
	s := openStore(t)
	big := tarball(t, fileEnt("big", strings.Repeat("x", 4<<20), 0o644), fileEnt("after", "a", 0o644))
	for _, after := range []int{1, 100 << 10, len(big) - 512} {
		t.Run(fmt.Sprint(after), func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			_, err := s.Import(ctx, "big", &cancelAfter{r: bytes.NewReader(big), n: after, cancel: cancel}, Config{})
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Import error = %v, want context.Canceled", err)
			}
			checkClean(t, s)
			if list, _ := s.List(ctx); len(list) != 0 {
				t.Errorf("List = %q after cancelled import", names(list))
			}
		})
	}
}

func TestImportConcurrent(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "images")
	// Two Stores on one directory stand for two processes: only the flock serializes them.
	var stores []*Store
	for range 2 {
		s, err := Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		stores = append(stores, s)
	}
	same := gzipped(t, rootfsTar(t, "same"))
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	ids := make([]string, n)
	for i := range n {
		wg.Go(func() {
			name := "same"
			if i%2 == 1 {
				name = fmt.Sprintf("same-%d", i)
			}
			im, err := stores[i%2].Import(ctx, name, bytes.NewReader(same), Config{})
			errs[i], ids[i] = err, im.ID
		})
	}
	// Meanwhile, other content comes and goes.
	wg.Go(func() {
		for i := range 5 {
			name := fmt.Sprintf("other-%d", i)
			if _, err := stores[0].Import(ctx, name, bytes.NewReader(rootfsTar(t, name)), Config{}); err != nil {
				t.Errorf("Import(%s): %v", name, err)
				continue
			}
			if err := stores[1].Remove(ctx, name); err != nil {
				t.Errorf("Remove(%s): %v", name, err)
			}
		}
	})
	wg.Wait()
	for i := range n {
		if errs[i] != nil || ids[i] != ids[0] {
			t.Errorf("import %d = %s, %v; want %s", i, ids[i], errs[i], ids[0])
		}
	}
	list, err := stores[1].List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1+n/2 {
		t.Errorf("List = %q, want %d names", names(list), 1+n/2)
	}
	checkClean(t, stores[0], ids[0])
}

func TestOpenCollectsDebris(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	im, _ := s.Import(ctx, "keep", bytes.NewReader(rootfsTar(t, "keep")), Config{})
	mk := func(p string, mode os.FileMode) {
		if err := os.MkdirAll(filepath.Join(p, "sub"), 0o755); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
	}
	mk(filepath.Join(s.tmpDir(), "import-123"), 0o555)
	mk(filepath.Join(s.rootfsDir(), strings.Repeat("e", 64)), 0o755)
	os.WriteFile(filepath.Join(s.Dir(), ".index-1.json"), nil, 0o644)

	// While another process uses tmp/, its contents are left alone.
	done, err := s.busy()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(s.Dir()); err != nil {
		t.Fatal(err)
	}
	if got := listDir(t, s.tmpDir()); len(got) != 1 {
		t.Errorf("tmp/ = %q while busy, want the import left alone", got)
	}
	done()

	if _, err := Open(s.Dir()); err != nil {
		t.Fatal(err)
	}
	checkClean(t, s, im.ID)
	if _, err := os.Stat(filepath.Join(s.Dir(), ".index-1.json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale index temp file survived: %v", err)
	}
	if _, err := s.Get(ctx, "keep"); err != nil {
		t.Error(err)
	}
}

func TestOpenCorruptIndex(t *testing.T) {
	dir := t.TempDir()
	for _, content := range []string{"{", `{"version":99,"images":[]}`} {
		os.WriteFile(filepath.Join(dir, "index.json"), []byte(content), 0o644)
		if _, err := Open(dir); err == nil {
			t.Errorf("Open with index %q succeeded, want an error", content)
		}
	}
}
