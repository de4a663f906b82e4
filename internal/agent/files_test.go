package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"golang.org/x/sys/unix"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
)

func upload(t testing.TB, ta *testAgent, path, content string) (agentapi.FileInfo, error) {
	t.Helper()
	return ta.client.Upload(ctxFor(t, 10*time.Second), path, strings.NewReader(content), int64(len(content)))
}

func download(t testing.TB, ta *testAgent, path string) (string, error) {
	t.Helper()
	body, _, err := ta.client.Download(ctxFor(t, 10*time.Second), path)
	if err != nil {
		return "", err
	}
	defer body.Close()
	b, err := io.ReadAll(body)
	return string(b), err
}

func paths(l agentapi.FileList) []string {
	var out []string
	for _, f := range l.Files {
		out = append(out, f.Path)
	}
	return out
}

func wantKind(t testing.TB, what string, err error, want errkind.Kind) {
	t.Helper()
	if err == nil {
		t.Errorf("%s succeeded, want a %v error", what, want)
		return
	}
	if got := errkind.Of(err); got != want {
		t.Errorf("%s: error %q has kind %v, want %v", what, err, got, want)
	}
}

// TestFiles walks the files API through one agent, in order.
func TestFiles(t *testing.T) {
	t.Parallel()
	ta := startAgent(t, nil)
	ctx := ctxFor(t, 30*time.Second)
	c := ta.client

	fi, err := upload(t, ta, "a.txt", "hello")
	if err != nil {
		t.Fatal(err)
	}
	if fi.Name != "a.txt" || fi.Path != "a.txt" || fi.Size != 5 || fi.IsDir || fi.Mode != unix.S_IFREG|0o644 || fi.ModTime.IsZero() {
		t.Errorf("upload a.txt: %+v", fi)
	}
	for _, p := range []string{"a.txt", "/mnt/data/a.txt", ta.dataDir + "/a.txt"} {
		if got, err := download(t, ta, p); err != nil || got != "hello" {
			t.Errorf("download %q = %q, %v; want hello", p, got, err)
		}
	}

	if _, err := upload(t, ta, "dir/sub/b.txt", "bee"); err != nil {
		t.Fatal(err)
	}
	if fi, err := c.Stat(ctx, "dir/sub"); err != nil || !fi.IsDir || fi.Name != "sub" || fi.Mode&unix.S_IFMT != unix.S_IFDIR {
		t.Errorf("stat dir/sub = %+v, %v", fi, err)
	}
	if fi, err := c.Stat(ctx, ""); err != nil || !fi.IsDir || fi.Path != "" {
		t.Errorf("stat of the data dir = %+v, %v", fi, err)
	}
	if isRoot() {
		for _, p := range []string{"dir", "dir/sub", "dir/sub/b.txt"} {
			st, err := os.Lstat(filepath.Join(ta.dataDir, p))
			if err != nil {
				t.Fatal(err)
			}
			if s := st.Sys().(*syscall.Stat_t); s.Uid != agentapi.UserUID || s.Gid != agentapi.UserGID {
				t.Errorf("%s is owned by %d:%d, want the user", p, s.Uid, s.Gid)
			}
		}
	}

	l, err := c.ListFiles(ctx, "", false)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"a.txt", "dir"}, paths(l)); diff != "" || l.Truncated {
		t.Errorf("list (-want +got):\n%s", diff)
	}
	l, err = c.ListFiles(ctx, "/mnt/data", true)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"a.txt", "dir", "dir/sub", "dir/sub/b.txt"}, paths(l)); diff != "" {
		t.Errorf("recursive list (-want +got):\n%s", diff)
	}
	l, err = c.ListFiles(ctx, "dir", true)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"dir/sub", "dir/sub/b.txt"}, paths(l)); diff != "" {
		t.Errorf("recursive list of dir (-want +got):\n%s", diff)
	}
	_, err = c.ListFiles(ctx, "a.txt", false)
	wantKind(t, "listing a file", err, errkind.Invalid)
	_, err = c.ListFiles(ctx, "nope", false)
	wantKind(t, "listing a missing dir", err, errkind.NotFound)

	if fi, err := c.Mkdir(ctx, "m/n/o"); err != nil || !fi.IsDir || fi.Path != "m/n/o" {
		t.Errorf("mkdir m/n/o = %+v, %v", fi, err)
	}
	if _, err := c.Mkdir(ctx, "m/n/o"); err != nil {
		t.Errorf("mkdir of an existing dir: %v", err)
	}
	_, err = c.Mkdir(ctx, "a.txt")
	wantKind(t, "mkdir over a file", err, errkind.AlreadyExists)
	_, err = c.Mkdir(ctx, "a.txt/x")
	wantKind(t, "mkdir under a file", err, errkind.Invalid)

	_, err = upload(t, ta, "dir", "x")
	wantKind(t, "upload over a directory", err, errkind.Invalid)
	_, err = upload(t, ta, "", "x")
	wantKind(t, "upload to the data dir", err, errkind.Invalid)
	_, err = download(t, ta, "dir")
	wantKind(t, "download a directory", err, errkind.Invalid)
	_, err = download(t, ta, "missing")
	wantKind(t, "download a missing file", err, errkind.NotFound)

	// Replacing a file keeps its permissions.
	if err := os.Chmod(filepath.Join(ta.dataDir, "a.txt"), 0o755); err != nil {
		t.Fatal(err)
	}
	if fi, err := upload(t, ta, "a.txt", "hello again"); err != nil || fi.Mode != unix.S_IFREG|0o755 || fi.Size != 11 {
		t.Errorf("re-upload a.txt = %+v, %v; want mode 0755, size 11", fi, err)
	}

	wantKind(t, "removing a non-empty dir", c.Remove(ctx, "dir", false), errkind.Invalid)
	wantKind(t, "removing the data dir", c.Remove(ctx, "", true), errkind.Invalid)
	wantKind(t, "removing the data dir by its absolute name", c.Remove(ctx, "/mnt/data", true), errkind.Invalid)
	wantKind(t, "removing a missing file", c.Remove(ctx, "missing", false), errkind.NotFound)
	wantKind(t, "removing a missing tree", c.Remove(ctx, "missing", true), errkind.NotFound)
	if err := c.Remove(ctx, "dir", true); err != nil {
		t.Errorf("recursive remove: %v", err)
	}
	if err := c.Remove(ctx, "a.txt", false); err != nil {
		t.Errorf("remove: %v", err)
	}
	if err := c.Remove(ctx, "m/n/o", false); err != nil {
		t.Errorf("remove empty dir: %v", err)
	}
	_, err = c.Stat(ctx, "dir")
	wantKind(t, "stat after remove", err, errkind.NotFound)
	l, err = c.ListFiles(ctx, "", true)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"m", "m/n"}, paths(l)); diff != "" {
		t.Errorf("final list (-want +got):\n%s", diff)
	}
}

func TestFilesBadPaths(t *testing.T) {
	t.Parallel()
	ta := startAgent(t, nil)
	ctx := ctxFor(t, 10*time.Second)
	for _, p := range []string{"../x", "a/../../x", "/etc/passwd", "/mnt/database", "a//b", "a/", "./a", "a\x00b", strings.Repeat("a", maxPathLen+1)} {
		_, err := ta.client.Stat(ctx, p)
		wantKind(t, "stat "+p, err, errkind.Invalid)
		_, err = upload(t, ta, p, "x")
		wantKind(t, "upload "+p, err, errkind.Invalid)
		_, err = download(t, ta, p)
		wantKind(t, "download "+p, err, errkind.Invalid)
		_, err = ta.client.ListFiles(ctx, p, true)
		wantKind(t, "list "+p, err, errkind.Invalid)
		_, err = ta.client.Mkdir(ctx, p)
		wantKind(t, "mkdir "+p, err, errkind.Invalid)
		wantKind(t, "remove "+p, ta.client.Remove(ctx, p, true), errkind.Invalid)
	}
	hc := unixHTTPClient(ta.cfg.Socket)
	defer hc.CloseIdleConnections()
	for _, q := range []string{"/v1/files?path=&recursive=maybe", "/v1/files?stat=2", "/v1/logs?tail=-1", "/v1/logs?tail=x"} {
		resp, err := hc.Get("http://agent" + q)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 400 {
			t.Errorf("GET %s: status %d, want 400", q, resp.StatusCode)
		}
	}
}

// TestFilesSymlinkEscape plants symlinks the way user code could and checks that the
// agent neither reads, writes, creates nor removes anything outside the data dir
// through them.
func TestFilesSymlinkEscape(t *testing.T) {
	t.Parallel()
	a, base := newAgent(t, nil)
	outside := filepath.Join(base, "outside")
	secret := filepath.Join(outside, "secret.txt")
	if err := os.MkdirAll(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(secret, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	ta := serve(t, a, base)
	ctx := ctxFor(t, 30*time.Second)
	links := map[string]string{
		"root":       "/",
		"up":         "..",
		"upup":       "../..",
		"abs":        outside,
		"secretlink": "../outside/secret.txt",
		"passwd":     "/etc/passwd",
		"loop":       "loop",
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(ta.dataDir, name)); err != nil {
			t.Fatal(err)
		}
	}
	reads := []string{"root/etc/passwd", "up/outside/secret.txt", "upup/tmp", "abs/secret.txt", "secretlink", "passwd", "loop"}
	for _, p := range reads {
		if got, err := download(t, ta, p); err == nil {
			t.Errorf("download %q through a symlink out of the data dir succeeded: %q", p, got)
		}
		if l, err := ta.client.ListFiles(ctx, p, false); err == nil {
			t.Errorf("list %q through a symlink out of the data dir succeeded: %v", p, paths(l))
		}
	}
	for _, p := range []string{"root", "up", "abs"} {
		if l, err := ta.client.ListFiles(ctx, p, true); err == nil {
			t.Errorf("list %q through a symlink out of the data dir succeeded: %v", p, paths(l))
		}
	}
	for _, p := range []string{"up/outside/pwned", "abs/pwned", "abs/new/pwned", "upup/pwned"} {
		if _, err := upload(t, ta, p, "pwned"); err == nil {
			t.Errorf("upload %q through a symlink succeeded", p)
		}
		if _, err := ta.client.Mkdir(ctx, p); err == nil {
			t.Errorf("mkdir %q through a symlink succeeded", p)
		}
	}
	for _, p := range []string{"abs/secret.txt", "up/outside/secret.txt", "up/outside"} {
		if err := ta.client.Remove(ctx, p, true); err == nil {
			t.Errorf("remove %q through a symlink succeeded", p)
		}
	}

	// Stat and a recursive listing see the links themselves and do not descend.
	fi, err := ta.client.Stat(ctx, "root")
	if err != nil || fi.Mode&unix.S_IFMT != unix.S_IFLNK {
		t.Errorf("stat of a symlink = %+v, %v; want the link itself", fi, err)
	}
	l, err := ta.client.ListFiles(ctx, "", true)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Files) != len(links) {
		t.Errorf("recursive list with symlinks: %v, want just the %d links", paths(l), len(links))
	}

	// Uploading to a symlink replaces the link; removing one removes the link.
	if _, err := upload(t, ta, "secretlink", "mine"); err != nil {
		t.Errorf("upload over a symlink: %v", err)
	}
	if fi, err := os.Lstat(filepath.Join(ta.dataDir, "secretlink")); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("after upload, secretlink is %v, %v; want a regular file", fi, err)
	}
	if err := ta.client.Remove(ctx, "abs", true); err != nil {
		t.Errorf("removing a symlink: %v", err)
	}

	if b, err := os.ReadFile(secret); err != nil || string(b) != "secret" {
		t.Errorf("the file outside the data dir now holds %q, %v", b, err)
	}
	entries, err := os.ReadDir(outside)
	if err != nil || len(entries) != 1 {
		t.Errorf("the directory outside the data dir now holds %v, %v", entries, err)
	}
	for _, p := range []string{"/pwned", "/tmp/pwned", filepath.Join(base, "pwned")} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s was created", p)
		}
	}
}

func TestUploadLimit(t *testing.T) {
	t.Parallel()
	a, base := newAgent(t, nil)
	a.maxUpload = 1024
	ta := serve(t, a, base)
	ctx := ctxFor(t, 10*time.Second)
	if _, err := upload(t, ta, "d/f", "old"); err != nil {
		t.Fatal(err)
	}
	big := strings.Repeat("x", 4096)
	_, err := upload(t, ta, "d/f", big)
	wantKind(t, "upload above the limit with a length", err, errkind.LimitExceeded)
	_, err = ta.client.Upload(ctx, "d/f", io.MultiReader(strings.NewReader(big)), -1)
	wantKind(t, "upload above the limit without a length", err, errkind.LimitExceeded)
	_, err = ta.client.Upload(ctx, "d/new", io.MultiReader(strings.NewReader(big)), -1)
	wantKind(t, "new upload above the limit", err, errkind.LimitExceeded)
	if got, err := download(t, ta, "d/f"); err != nil || got != "old" {
		t.Errorf("after failed uploads, d/f = %q, %v; want the old content", got, err)
	}
	if fi, err := ta.client.Upload(ctx, "d/f", strings.NewReader(big[:1024]), -1); err != nil || fi.Size != 1024 {
		t.Errorf("upload of exactly the limit: %+v, %v", fi, err)
	}
	l, err := ta.client.ListFiles(ctx, "d", false)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"d/f"}, paths(l)); diff != "" {
		t.Errorf("temporary files left behind (-want +got):\n%s", diff)
	}
}

// TestUploadInterrupted cuts an upload off midway: the old file must survive.
func TestUploadInterrupted(t *testing.T) {
	t.Parallel()
	ta := startAgent(t, nil)
	if _, err := upload(t, ta, "f", "old"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	go func() {
		pw.Write(bytes.Repeat([]byte("n"), 64<<10))
		cancel()
		pw.CloseWithError(errors.New("interrupted"))
	}()
	if _, err := ta.client.Upload(ctx, "f", pr, 1<<20); err == nil {
		t.Fatal("interrupted upload succeeded")
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		entries, _ := os.ReadDir(ta.dataDir)
		if len(entries) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("data dir holds %v after an interrupted upload", entries)
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got, err := download(t, ta, "f"); err != nil || got != "old" {
		t.Errorf("after an interrupted upload, f = %q, %v; want the old content", got, err)
	}
}

func TestDownloadSpecialFiles(t *testing.T) {
	t.Parallel()
	ta := startAgent(t, nil)
	if err := unix.Mkfifo(filepath.Join(ta.dataDir, "fifo"), 0o666); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := download(t, ta, "fifo")
	wantKind(t, "download a FIFO", err, errkind.Invalid)
	if d := time.Since(start); d > time.Second {
		t.Errorf("download of a FIFO took %v", d)
	}
	_, err = download(t, ta, "")
	wantKind(t, "download the data dir", err, errkind.Invalid)
	// Even a symlink that stays inside is refused: the files API never follows one
	// (resolve_linux.go says why), in the last component or in the middle of a path.
	if _, err := upload(t, ta, "real/file", "content"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("real/file", filepath.Join(ta.dataDir, "alias")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("real", filepath.Join(ta.dataDir, "dirlink")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"alias", "dirlink/file"} {
		got, err := download(t, ta, p)
		wantKind(t, "download through a symlink "+p+" ("+got+")", err, errkind.Invalid)
	}
}

func TestListLimits(t *testing.T) {
	t.Parallel()
	a, base := newAgent(t, nil)
	a.maxList = 100 // creating files is slow on some disks; the logic is the same (and 100 > maxListDepth)
	ta := serve(t, a, base)
	ctx := ctxFor(t, 30*time.Second)
	many := filepath.Join(ta.dataDir, "many")
	if err := os.Mkdir(many, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range a.maxList + 5 {
		f, err := os.Create(filepath.Join(many, strings.Repeat("f", 1+i%7)+"-"+strconv.Itoa(i)))
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	l, err := ta.client.ListFiles(ctx, "many", false)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Files) != a.maxList || !l.Truncated {
		t.Errorf("listing %d entries: got %d, truncated %v", a.maxList+5, len(l.Files), l.Truncated)
	}
	l, err = ta.client.ListFiles(ctx, "", true)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Files) != a.maxList || !l.Truncated || l.Files[0].Path != "many" {
		t.Errorf("recursive listing: %d entries, truncated %v", len(l.Files), l.Truncated)
	}
	if err := ta.client.Remove(ctx, "many", true); err != nil {
		t.Fatal(err)
	}
	for i := range a.maxList - 1 {
		os.WriteFile(filepath.Join(ta.dataDir, "f"+strconv.Itoa(i)), nil, 0o644)
	}
	if err := os.Mkdir(filepath.Join(ta.dataDir, "z"), 0o755); err != nil {
		t.Fatal(err)
	}
	l, err = ta.client.ListFiles(ctx, "", true)
	if err != nil || len(l.Files) != a.maxList || l.Truncated {
		t.Errorf("listing of exactly the limit (an empty dir last): %d entries, truncated %v, %v", len(l.Files), l.Truncated, err)
	}
	os.WriteFile(filepath.Join(ta.dataDir, "z", "one-too-many"), nil, 0o644)
	l, err = ta.client.ListFiles(ctx, "", true)
	if err != nil || len(l.Files) != a.maxList || !l.Truncated {
		t.Errorf("listing of one above the limit: %d entries, truncated %v, %v", len(l.Files), l.Truncated, err)
	}
	if err := ta.client.Remove(ctx, "/mnt/data/z", true); err != nil {
		t.Fatal(err)
	}

	deep := "deep" + strings.Repeat("/d", maxListDepth+3)
	if err := os.MkdirAll(filepath.Join(ta.dataDir, deep), 0o755); err != nil {
		t.Fatal(err)
	}
	l, err = ta.client.ListFiles(ctx, "deep", true)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Files) != maxListDepth || !l.Truncated {
		t.Errorf("deep listing: %d entries, truncated %v; want %d, true", len(l.Files), l.Truncated, maxListDepth)
	}
	l, err = ta.client.ListFiles(ctx, "deep/d", true)
	if err != nil || l.Truncated != true {
		t.Errorf("deep listing from one level down: %d entries, truncated %v, %v", len(l.Files), l.Truncated, err)
	}
}

func TestCleanPath(t *testing.T) {
	t.Parallel()
	const dataDir = "/srv/sandbox/data"
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"", "", true},
		{".", "", true},
		{"a", "a", true},
		{"a/b/c.txt", "a/b/c.txt", true},
		{"a b/ç\\d", "a b/ç\\d", true},
		{"...", "...", true},
		{".hidden", ".hidden", true},
		{"/mnt/data", "", true},
		{"/mnt/data/", "", true},
		{"/mnt/data/x/y", "x/y", true},
		{dataDir, "", true},
		{dataDir + "/x", "x", true},
		{"/mnt/database", "", false},
		{"/mnt/data/../etc", "", false},
		{"/mnt/data//x", "", false},
		{"/mnt", "", false},
		{"/", "", false},
		{"/etc/passwd", "", false},
		{"..", "", false},
		{"../x", "", false},
		{"a/..", "", false},
		{"a/../b", "", false},
		{"./a", "", false},
		{"a/./b", "", false},
		{"a//b", "", false},
		{"a/", "", false},
		{"a\x00", "", false},
		{strings.Repeat("x", maxPathLen), strings.Repeat("x", maxPathLen), true},
		{strings.Repeat("x", maxPathLen+1), "", false},
	} {
		got, err := cleanPath(tc.in, dataDir)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("cleanPath(%q) = %q, %v; want %q, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
		if err != nil && errkind.Of(err) != errkind.Invalid {
			t.Errorf("cleanPath(%q): error kind %v, want invalid", tc.in, errkind.Of(err))
		}
	}
}

func FuzzCleanPath(f *testing.F) {
	for _, s := range []string{"", ".", "a/b", "../a", "/mnt/data/x", "/mnt/data/../..", "a//b", "a/./b", "/srv/d/x", "a\x00b", "..."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		got, err := cleanPath(p, "/srv/d")
		if err != nil {
			if errkind.Of(err) != errkind.Invalid {
				t.Fatalf("cleanPath(%q): error kind %v", p, errkind.Of(err))
			}
			return
		}
		if got == "" {
			return
		}
		if !filepath.IsLocal(got) || filepath.Clean(got) != got || strings.ContainsRune(got, 0) {
			t.Fatalf("cleanPath(%q) = %q, which is not a clean local path", p, got)
		}
		for _, c := range strings.Split(got, "/") {
			if c == "" || c == "." || c == ".." {
				t.Fatalf("cleanPath(%q) = %q, with component %q", p, got, c)
			}
		}
		if !strings.HasPrefix(p, "/") && got != p {
			t.Fatalf("cleanPath(%q) = %q changed a relative path", p, got)
		}
	})
}

// TestListTruncationOrder: a truncated listing is the first entries in listing order
// (depth first, names sorted), never an arbitrary subset read in directory order; a
// directory beyond the read cap is marked truncated; upload temporaries never show.
func TestListTruncationOrder(t *testing.T) {
	t.Parallel()
	a, base := newAgent(t, nil)
	a.maxList = 20
	ta := serve(t, a, base)
	ctx := ctxFor(t, 30*time.Second)
	touch := func(rel string) {
		t.Helper()
		p := filepath.Join(ta.dataDir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// 30 files created in descending order: the first 20 by name are 00..19.
	for i := 29; i >= 0; i-- {
		touch(fmt.Sprintf("flat/%02d", i))
	}
	touch("flat/" + uploadPrefix + "inflight")
	l, err := ta.client.ListFiles(ctx, "flat", false)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := range 20 {
		want = append(want, fmt.Sprintf("flat/%02d", i))
	}
	if diff := cmp.Diff(want, paths(l)); diff != "" || !l.Truncated {
		t.Errorf("truncated flat listing: truncated %v, paths (-want +got):\n%s", l.Truncated, diff)
	}

	// Depth first: the subdirectory's entries come before its later siblings, and the
	// siblings, not the subdirectory, lose their place when the room runs out.
	for i := range 5 {
		touch(fmt.Sprintf("tree/a/%d", i))
	}
	touch("tree/a/" + uploadPrefix + "x")
	for i := range 20 {
		touch(fmt.Sprintf("tree/b%02d", i))
	}
	touch("tree/" + uploadPrefix + "y")
	l, err = ta.client.ListFiles(ctx, "tree", true)
	if err != nil {
		t.Fatal(err)
	}
	want = []string{"tree/a", "tree/a/0", "tree/a/1", "tree/a/2", "tree/a/3", "tree/a/4"}
	for i := range 14 {
		want = append(want, fmt.Sprintf("tree/b%02d", i))
	}
	if diff := cmp.Diff(want, paths(l)); diff != "" || !l.Truncated {
		t.Errorf("truncated recursive listing: truncated %v, paths (-want +got):\n%s", l.Truncated, diff)
	}

	// Upload temporaries are hidden, and an untruncated listing says so.
	touch("small/" + uploadPrefix + "z")
	touch("small/visible")
	l, err = ta.client.ListFiles(ctx, "small", true)
	if err != nil || l.Truncated {
		t.Fatalf("small listing: truncated %v, %v", l.Truncated, err)
	}
	if diff := cmp.Diff([]string{"small/visible"}, paths(l)); diff != "" {
		t.Errorf("listing with an upload temporary (-want +got):\n%s", diff)
	}

	// More names than the read cap (dirNamesFactor×max): truncated, and still sorted.
	for i := range dirNamesFactor*a.maxList + 3 {
		touch(fmt.Sprintf("huge/%03d", i))
	}
	l, err = ta.client.ListFiles(ctx, "huge", false)
	if err != nil {
		t.Fatal(err)
	}
	got := paths(l)
	if len(got) != a.maxList || !l.Truncated || !slices.IsSorted(got) {
		t.Errorf("listing above the read cap: %d entries, truncated %v, sorted %v", len(got), l.Truncated, slices.IsSorted(got))
	}
}

// TestListerTrim: the names pending in the directories being walked never exceed the
// room left in the listing, and the innermost directory, listed first, keeps its names.
func TestListerTrim(t *testing.T) {
	l := &lister{max: 10, files: make([]agentapi.FileInfo, 3)}
	l.pending = [][]string{
		{"o1", "o2", "o3", "o4", "o5"},
		{"m1", "m2", "m3", "m4"},
		{"i1", "i2", "i3"},
	}
	l.trim()
	want := [][]string{{}, {"m1", "m2", "m3", "m4"}, {"i1", "i2", "i3"}}
	if diff := cmp.Diff(want, l.pending, cmpopts.EquateEmpty()); diff != "" || !l.truncated {
		t.Errorf("trim: truncated %v, pending (-want +got):\n%s", l.truncated, diff)
	}
	l = &lister{max: 10, files: make([]agentapi.FileInfo, 3)}
	l.pending = [][]string{{"o1"}, {"m1", "m2"}, {"i1", "i2", "i3"}}
	l.trim()
	if len(l.pending[0])+len(l.pending[1])+len(l.pending[2]) != 6 || l.truncated {
		t.Errorf("trim of what fits: pending %v, truncated %v", l.pending, l.truncated)
	}
}
