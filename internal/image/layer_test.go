package image

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sessiond/sessiond/internal/errkind"
)

// layerDirs is a temporary directory holding the root a layer is applied to and, beside it,
// a sentinel directory that nothing may ever touch.
type layerDirs struct {
	base, root, sentinel string
}

func newLayerDirs(t testing.TB) layerDirs {
	t.Helper()
	base := t.TempDir()
	d := layerDirs{base: base, root: filepath.Join(base, "root"), sentinel: filepath.Join(base, "sentinel")}
	for _, p := range []string{d.root, d.sentinel} {
		if err := os.Mkdir(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(d.sentinel, "keep"), []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	return d
}

// apply applies the layer to d.root.
func (d layerDirs) apply(t testing.TB, ctx context.Context, layer []byte, lim Limits) (LayerStats, error) {
	t.Helper()
	root, err := os.OpenRoot(d.root)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	return ApplyLayer(ctx, root, bytes.NewReader(layer), lim)
}

// checkContained fails t if anything outside d.root changed: the sentinel keeps exactly its
// one file and the base directory holds only root and sentinel.
func (d layerDirs) checkContained(t testing.TB) {
	t.Helper()
	if got := listDir(t, d.base); !slices.Equal(got, []string{"root", "sentinel"}) {
		t.Errorf("base directory holds %q, want only root and sentinel", got)
	}
	if got := listDir(t, d.sentinel); !slices.Equal(got, []string{"keep"}) {
		t.Errorf("sentinel directory holds %q, want only keep", got)
	}
	if b, err := os.ReadFile(filepath.Join(d.sentinel, "keep")); err != nil || string(b) != "keep" {
		t.Errorf("sentinel file changed: %q, %v", b, err)
	}
	if fi, err := os.Lstat(d.sentinel); err != nil || fi.Mode() != fs.ModeDir|0o755 {
		t.Errorf("sentinel directory changed: %v, %v", fi.Mode(), err)
	}
}

func listDir(t testing.TB, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// tree describes every path under dir: its mode string, then a file's content or a
// symlink's target.
func tree(t testing.TB, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		desc := fi.Mode().String()
		switch {
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += " " + string(b)
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			desc += " -> " + target
		}
		out[filepath.ToSlash(rel)] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestApplyLayer(t *testing.T) {
	tests := []struct {
		name  string
		lower []ent // applied first, as a lower layer
		ents  []ent
		want  map[string]string
		stats LayerStats
	}{{
		name: "files dirs links",
		ents: []ent{
			dirEnt("./", 0o755),
			dirEnt("etc/", 0o755),
			fileEnt("etc/hostname", "sandbox\n", 0o644),
			fileEnt("usr/bin/tool", "#!/bin/sh\n", 0o4755), // implicit parents
			dirEnt("tmp/", 0o1777),
			dirEnt("srv/", 0o2775),
			symlinkEnt("bin", "usr/bin"),
			symlinkEnt("etc/mtab", "/proc/self/mounts"), // kept as stored, never followed
			symlinkEnt("dangling", "../../../nowhere"),
			linkEnt("usr/bin/tool2", "usr/bin/tool"),
		},
		want: map[string]string{
			"etc":           "drwxr-xr-x",
			"etc/hostname":  "-rw-r--r-- sandbox\n",
			"etc/mtab":      "Lrwxrwxrwx -> /proc/self/mounts",
			"usr":           "drwxr-xr-x",
			"usr/bin":       "drwxr-xr-x",
			"usr/bin/tool":  "-rwxr-xr-x #!/bin/sh\n",
			"usr/bin/tool2": "-rwxr-xr-x #!/bin/sh\n",
			"tmp":           "dtrwxrwxrwx",
			"srv":           "dgrwxrwxr-x",
			"bin":           "Lrwxrwxrwx -> usr/bin",
			"dangling":      "Lrwxrwxrwx -> ../../../nowhere",
		},
		stats: LayerStats{Entries: 10, Files: 2, Dirs: 4, Symlinks: 3, Hardlinks: 1, Size: 18},
	}, {
		name: "absolute and dotted names are made relative",
		ents: []ent{
			fileEnt("/etc/a", "a", 0o644),
			fileEnt("./etc//b", "b", 0o600),
			fileEnt("etc/x/../c", "c", 0o644),
		},
		want: map[string]string{
			"etc": "drwxr-xr-x", "etc/a": "-rw-r--r-- a", "etc/b": "-rw------- b", "etc/c": "-rw-r--r-- c",
		},
		stats: LayerStats{Entries: 3, Files: 3, Size: 3},
	}, {
		name: "read-only directory still receives its files",
		ents: []ent{
			dirEnt("ro/", 0o555),
			fileEnt("ro/f", "f", 0o444),
			dirEnt("ro/sub/", 0o500),
			fileEnt("ro/sub/g", "g", 0o400),
		},
		want: map[string]string{
			"ro": "dr-xr-xr-x", "ro/f": "-r--r--r-- f", "ro/sub": "dr-x------", "ro/sub/g": "-r-------- g",
		},
		stats: LayerStats{Entries: 4, Files: 2, Dirs: 2, Size: 2},
	}, {
		name: "symlink inside the root is followed for parents",
		ents: []ent{
			dirEnt("usr/lib/", 0o755),
			symlinkEnt("lib", "usr/lib"),
			fileEnt("lib/libc.so", "elf", 0o755),
		},
		want: map[string]string{
			"usr": "drwxr-xr-x", "usr/lib": "drwxr-xr-x", "usr/lib/libc.so": "-rwxr-xr-x elf",
			"lib": "Lrwxrwxrwx -> usr/lib",
		},
		stats: LayerStats{Entries: 3, Files: 1, Dirs: 1, Symlinks: 1, Size: 3},
	}, {
		name: "later entries replace earlier ones without following them",
		ents: []ent{
			symlinkEnt("passwd", "/etc/passwd"),
			fileEnt("passwd", "mine", 0o644), // replaces the link, does not write through it
			fileEnt("was-file", "x", 0o644),
			dirEnt("was-file/", 0o755),
			dirEnt("was-dir/", 0o755),
			fileEnt("was-dir/child", "c", 0o644),
			symlinkEnt("was-dir", "elsewhere"),
			symlinkEnt("was-link", "/"),
			dirEnt("was-link/", 0o700),
		},
		want: map[string]string{
			"passwd":   "-rw-r--r-- mine",
			"was-file": "drwxr-xr-x",
			"was-dir":  "Lrwxrwxrwx -> elsewhere",
			"was-link": "drwx------",
		},
		stats: LayerStats{Entries: 9, Files: 3, Dirs: 3, Symlinks: 3, Size: 6},
	}, {
		name: "devices and fifos are skipped",
		ents: []ent{
			specialEnt("dev/null", tar.TypeChar),
			specialEnt("dev/sda", tar.TypeBlock),
			specialEnt("run/fifo", tar.TypeFifo),
			fileEnt("dev/keep", "k", 0o644),
		},
		want:  map[string]string{"dev": "drwxr-xr-x", "dev/keep": "-rw-r--r-- k"},
		stats: LayerStats{Entries: 4, Files: 1, Skipped: 3, Size: 1},
	}, {
		name: "whiteouts hide lower entries",
		lower: []ent{
			dirEnt("a/", 0o755), fileEnt("a/x", "x", 0o644), dirEnt("a/d/", 0o755), fileEnt("a/d/y", "y", 0o644),
			fileEnt("b", "b", 0o644), dirEnt("c/", 0o755), fileEnt("c/z", "z", 0o644),
			fileEnt("keep", "k", 0o644),
		},
		ents: []ent{
			fileEnt(".wh.b", "", 0o644),
			dirEnt("a/", 0o750),
			fileEnt("a/new", "n", 0o644),
			fileEnt("a/.wh..wh..opq", "", 0o644),
			fileEnt("c/.wh.z", "", 0o644),
			fileEnt(".wh.missing", "", 0o644),
			fileEnt("nodir/.wh.missing", "", 0o644),
			fileEnt(".wh..wh.plnk", "", 0o644),
		},
		want: map[string]string{
			"a": "drwxr-x---", "a/new": "-rw-r--r-- n", "c": "drwxr-xr-x", "keep": "-rw-r--r-- k",
		},
		stats: LayerStats{Entries: 8, Files: 1, Dirs: 1, Whiteouts: 6, Size: 1},
	}, {
		name: "opaque directory keeps what this layer wrote below it",
		lower: []ent{
			dirEnt("a/", 0o755), dirEnt("a/d/", 0o755), fileEnt("a/d/old", "o", 0o644), fileEnt("a/old", "o", 0o644),
		},
		ents: []ent{
			fileEnt("a/d/new", "n", 0o644),
			fileEnt("a/.wh..wh..opq", "", 0o644),
		},
		want: map[string]string{
			"a": "drwxr-xr-x", "a/d": "drwxr-xr-x", "a/d/new": "-rw-r--r-- n",
		},
		stats: LayerStats{Entries: 2, Files: 1, Whiteouts: 1, Size: 1},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newLayerDirs(t)
			ctx := context.Background()
			if tt.lower != nil {
				if _, err := d.apply(t, ctx, tarball(t, tt.lower...), Limits{}); err != nil {
					t.Fatalf("lower layer: %v", err)
				}
			}
			stats, err := d.apply(t, ctx, tarball(t, tt.ents...), Limits{})
			if err != nil {
				t.Fatalf("ApplyLayer: %v", err)
			}
			if stats != tt.stats {
				t.Errorf("stats = %+v, want %+v", stats, tt.stats)
			}
			if diff := cmp.Diff(tt.want, tree(t, d.root)); diff != "" {
				t.Errorf("tree mismatch (-want +got):\n%s", diff)
			}
			d.checkContained(t)
		})
	}
}

func TestApplyLayerMetadata(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("keeping owners needs root")
	}
	d := newLayerDirs(t)
	root := dirEnt("./", 0o711)
	ents := []ent{
		root,
		owned(dirEnt("home/user/", 0o700), 1000, 1000),
		owned(fileEnt("home/user/notes", "n", 0o600), 1000, 1001),
		owned(symlinkEnt("home/user/link", "notes"), 1002, 1003),
		owned(fileEnt("usr/bin/sudo", "s", 0o4755), 0, 0),
	}
	if _, err := d.apply(t, context.Background(), tarball(t, ents...), Limits{}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path     string
		uid, gid uint32
		mode     fs.FileMode
		checkMod bool
	}{
		{".", 0, 0, fs.ModeDir | 0o711, true},
		{"home", 0, 0, fs.ModeDir | 0o755, false},
		{"home/user", 1000, 1000, fs.ModeDir | 0o700, true},
		{"home/user/notes", 1000, 1001, 0o600, true},
		{"home/user/link", 1002, 1003, fs.ModeSymlink | 0o777, false},
		{"usr/bin/sudo", 0, 0, 0o755, true}, // setuid dropped: see mode()
	} {
		fi, err := os.Lstat(filepath.Join(d.root, c.path))
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if st.Uid != c.uid || st.Gid != c.gid {
			t.Errorf("%s: owner %d:%d, want %d:%d", c.path, st.Uid, st.Gid, c.uid, c.gid)
		}
		if fi.Mode() != c.mode {
			t.Errorf("%s: mode %v, want %v", c.path, fi.Mode(), c.mode)
		}
		if c.checkMod && !fi.ModTime().Equal(testTime) {
			t.Errorf("%s: mtime %v, want %v", c.path, fi.ModTime(), testTime)
		}
	}
}

func TestApplyLayerRejects(t *testing.T) {
	long := strings.Repeat("n", 300)
	tests := []struct {
		name  string
		lower []ent
		ents  []ent
		lim   Limits
		kind  errkind.Kind
	}{
		{name: "dotdot", ents: []ent{fileEnt("../escape", "x", 0o644)}, kind: errkind.Invalid},
		{name: "dotdot inside", ents: []ent{fileEnt("a/../../escape", "x", 0o644)}, kind: errkind.Invalid},
		{name: "dotdot dir", ents: []ent{dirEnt("../sentinel/", 0o777)}, kind: errkind.Invalid},
		{name: "absolute symlink then write through", ents: []ent{
			symlinkEnt("evil", "/tmp"), fileEnt("evil/x", "x", 0o644)}, kind: errkind.Invalid},
		{name: "escaping symlink then write through", ents: []ent{
			symlinkEnt("evil", "../sentinel"), fileEnt("evil/x", "x", 0o644)}, kind: errkind.Invalid},
		{name: "escaping symlink then dir through", ents: []ent{
			symlinkEnt("evil", "../../"), dirEnt("evil/sub/", 0o755)}, kind: errkind.Invalid},
		{name: "chained escaping symlinks", ents: []ent{
			symlinkEnt("a", "b"), symlinkEnt("b", "c"), dirEnt("c/", 0o755), symlinkEnt("c/up", "../.."),
			fileEnt("a/up/sentinel/x", "x", 0o644)}, kind: errkind.Invalid},
		{name: "escaping symlink then hardlink through", ents: []ent{
			symlinkEnt("evil", "../sentinel"), fileEnt("f", "f", 0o644), linkEnt("evil/x", "f")}, kind: errkind.Invalid},
		{name: "escaping symlink then whiteout through", ents: []ent{
			symlinkEnt("evil", "../sentinel"), fileEnt("evil/.wh.keep", "", 0o644)}, kind: errkind.Invalid},
		{name: "escaping symlink then opaque through", ents: []ent{
			symlinkEnt("evil", "../sentinel"), fileEnt("evil/.wh..wh..opq", "", 0o644)}, kind: errkind.Invalid},
		{name: "symlink to file as parent", ents: []ent{
			fileEnt("f", "f", 0o644), symlinkEnt("l", "f"), fileEnt("l/x", "x", 0o644)}, kind: errkind.Invalid},
		{name: "file as parent", ents: []ent{
			fileEnt("f", "f", 0o644), fileEnt("f/x", "x", 0o644)}, kind: errkind.Invalid},
		{name: "hardlink outside", ents: []ent{linkEnt("x", "../sentinel/keep")}, kind: errkind.Invalid},
		{name: "hardlink through escaping symlink", ents: []ent{
			symlinkEnt("evil", "../sentinel"), linkEnt("x", "evil/keep")}, kind: errkind.Invalid},
		{name: "hardlink to missing", ents: []ent{linkEnt("x", "nothing")}, kind: errkind.Invalid},
		{name: "hardlink to dir", ents: []ent{dirEnt("d/", 0o755), linkEnt("x", "d")}, kind: errkind.Invalid},
		{name: "hardlink to symlink", ents: []ent{symlinkEnt("s", "/etc/passwd"), linkEnt("x", "s")}, kind: errkind.Invalid},
		{name: "hardlink to itself", ents: []ent{fileEnt("x", "x", 0o644), linkEnt("x", "x")}, kind: errkind.Invalid},
		{name: "root as file", ents: []ent{fileEnt(".", "x", 0o644)}, kind: errkind.Invalid},
		{name: "root as symlink", ents: []ent{symlinkEnt("/", "/etc")}, kind: errkind.Invalid},
		{name: "bad whiteout", ents: []ent{fileEnt("a/.wh.", "", 0o644)}, kind: errkind.Invalid},
		{name: "long component", ents: []ent{fileEnt(long, "x", 0o644)}, kind: errkind.Invalid},
		{name: "long path", ents: []ent{fileEnt(strings.Repeat("a/", 2100)+"x", "x", 0o644)}, kind: errkind.Invalid},
		{name: "unsupported type", ents: []ent{specialEnt("v", tar.TypeGNULongName+10)}, kind: errkind.Invalid},
		{name: "too many entries", lim: Limits{MaxEntries: 2}, ents: []ent{
			dirEnt("a/", 0o755), dirEnt("b/", 0o755), dirEnt("c/", 0o755)}, kind: errkind.LimitExceeded},
		{name: "too big", lim: Limits{MaxSize: 10}, ents: []ent{
			fileEnt("a", "123456", 0o644), fileEnt("b", "123456", 0o644)}, kind: errkind.LimitExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newLayerDirs(t)
			_, err := d.apply(t, context.Background(), tarball(t, tt.ents...), tt.lim)
			if got := errkind.Of(err); err == nil || got != tt.kind {
				t.Errorf("ApplyLayer error = %v (kind %v), want kind %v", err, got, tt.kind)
			}
			d.checkContained(t)
		})
	}
}

func TestApplyLayerCorrupt(t *testing.T) {
	good := tarball(t, fileEnt("a", strings.Repeat("x", 2000), 0o644))
	for _, tc := range []struct {
		name  string
		layer []byte
	}{
		{"truncated", good[:1000]},
		{"garbage header", append(bytes.Repeat([]byte{'z'}, 512), good...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newLayerDirs(t)
			_, err := d.apply(t, context.Background(), tc.layer, Limits{})
			if !errkind.Is(err, errkind.Invalid) {
				t.Errorf("ApplyLayer error = %v, want Invalid", err)
			}
		})
	}
}

func TestApplyLayerCancel(t *testing.T) {
	d := newLayerDirs(t)
	ctx, cancel := context.WithCancel(context.Background())
	layer := tarball(t, fileEnt("a", strings.Repeat("x", 1<<20), 0o644), fileEnt("b", "b", 0o644))
	r := &cancelAfter{r: bytes.NewReader(layer), n: 4096, cancel: cancel}
	root, err := os.OpenRoot(d.root)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	_, err = ApplyLayer(ctx, root, r, Limits{})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("ApplyLayer error = %v, want context.Canceled", err)
	}
}

// cancelAfter calls cancel once n bytes were read, and keeps serving data.
type cancelAfter struct {
	r      io.Reader
	n      int
	cancel context.CancelFunc
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n -= n
	if c.n <= 0 {
		c.cancel()
	}
	return n, err
}
