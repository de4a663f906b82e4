package image

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/image/imagetest"
)

// These tests pull from go-containerregistry's registry served over real HTTP on loopback
// (imagetest), with images built in the test.

type file = imagetest.File

// appImage is the image most tests pull: a base layer with a static HTTP server, users
// and files, and a top layer that whites out a file and makes a directory opaque.
func appImage(t testing.TB, server []byte) (img v1.Image, base, top v1.Layer) {
	base = imagetest.Layer(t,
		file{Name: "etc/", Type: tar.TypeDir},
		file{Name: "etc/passwd", Body: []byte("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n")},
		file{Name: "etc/group", Body: []byte("root:x:0:\napp:x:1001:\nstaff:x:50:app\n")},
		file{Name: "app/", Type: tar.TypeDir},
		file{Name: "app/server", Body: server, Mode: 0o755},
		file{Name: "app/old.txt", Body: []byte("old")},
		file{Name: "app/keep.txt", Body: []byte("keep")},
		file{Name: "bin/", Type: tar.TypeDir},
		file{Name: "bin/setuid", Body: []byte("#!"), Mode: 0o4755},
		file{Name: "data/", Type: tar.TypeDir},
		file{Name: "data/a", Body: []byte("a")},
		file{Name: "data/sub/", Type: tar.TypeDir},
		file{Name: "data/sub/b", Body: []byte("b")},
	)
	top = imagetest.Layer(t,
		file{Name: "app/.wh.old.txt"},
		file{Name: "data/", Type: tar.TypeDir},
		file{Name: "data/.wh..wh..opq"},
		file{Name: "data/new", Body: []byte("new")},
		file{Name: "app/config.json", Body: []byte(`{"v":1}`)},
	)
	img = imagetest.Image(t, imagetest.ImageSpec{
		Config: v1.Config{
			Entrypoint:   []string{"/app/server"},
			Cmd:          []string{"-v"},
			Env:          []string{"PATH=/bin", "GREETING=hi"},
			WorkingDir:   "/app",
			User:         "app",
			ExposedPorts: map[string]struct{}{"8080/tcp": {}, "9090/udp": {}},
			Labels:       map[string]string{"org.example": "yes"},
		},
		Layers: []v1.Layer{base, top},
	})
	return img, base, top
}

// smallImage is an image of one small layer holding the file "seed".
func smallImage(t testing.TB, seed string) v1.Image {
	return imagetest.Image(t, imagetest.ImageSpec{Layers: []v1.Layer{
		imagetest.Layer(t, file{Name: "seed", Body: []byte(seed)}),
	}})
}

func configDigest(t testing.TB, img v1.Image) string {
	t.Helper()
	h, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	return h.String()
}

func layerDigest(t testing.TB, l v1.Layer) string {
	t.Helper()
	h, err := l.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return h.String()
}

// checkBlobs fails t unless blobs/ holds exactly the blobs of digests.
func checkBlobs(t testing.TB, s *Store, digests ...string) {
	t.Helper()
	var want []string
	for _, d := range digests {
		want = append(want, strings.TrimPrefix(d, "sha256:"))
	}
	slices.Sort(want)
	want = slices.Compact(want)
	if got := listDir(t, s.blobsDir()); !slices.Equal(got, want) {
		t.Errorf("blobs/ holds %q, want %q", got, want)
	}
}

// checkEmpty fails t unless the store holds no image, no tree, no blob and no temp file.
func checkEmpty(t testing.TB, s *Store) {
	t.Helper()
	checkClean(t, s)
	checkBlobs(t, s)
	if ims, err := s.List(context.Background()); err != nil || len(ims) != 0 {
		t.Errorf("List = %q, %v; want no images", names(ims), err)
	}
}

func TestPull(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	reg := imagetest.NewRegistry(t, imagetest.RegistryOptions{})
	server := imagetest.HTTPServer(t)
	img, base, top := appImage(t, server)
	ref := reg.Ref("team/app:v1")
	digest := reg.Push(t, ref, img)

	got, err := s.Pull(ctx, ref, PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := Image{
		Name:   ref,
		ID:     configDigest(t, img),
		Digest: digest.String(),
		Layers: []string{layerDigest(t, base), layerDigest(t, top)},
		RootFS: s.rootfsPath(configDigest(t, img)),
		Size:   got.Size,
		Config: Config{
			Entrypoint:   []string{"/app/server"},
			Cmd:          []string{"-v"},
			Env:          []string{"PATH=/bin", "GREETING=hi"},
			WorkingDir:   "/app",
			User:         "app",
			ExposedPorts: []string{"8080/tcp", "9090/udp"},
			Labels:       map[string]string{"org.example": "yes"},
		},
	}
	if diff := cmp.Diff(want, got, cmp.FilterPath(func(p cmp.Path) bool { return p.String() == "Created" }, cmp.Ignore())); diff != "" {
		t.Errorf("Pull (-want +got):\n%s", diff)
	}
	if min := int64(len(server)); got.Size < min {
		t.Errorf("Size = %d, want at least the server's %d bytes", got.Size, min)
	}
	if stored, err := s.Get(ctx, ref); err != nil || !cmp.Equal(stored.Config, got.Config) || stored.Digest != got.Digest {
		t.Errorf("Get(%s) = %+v, %v; want what Pull returned", ref, stored, err)
	}

	// The layers applied in order: the whiteout hid old.txt, the opaque directory hid
	// everything of data/ below it, and the setuid bit was dropped.
	tr := tree(t, got.RootFS)
	delete(tr, "app/server")
	wantTree := map[string]string{
		"app":             "drwxr-xr-x",
		"app/config.json": `-rw-r--r-- {"v":1}`,
		"app/keep.txt":    "-rw-r--r-- keep",
		"bin":             "drwxr-xr-x",
		"bin/setuid":      "-rwxr-xr-x #!",
		"data":            "drwxr-xr-x",
		"data/new":        "-rw-r--r-- new",
		"etc":             "drwxr-xr-x",
		"etc/group":       "-rw-r--r-- root:x:0:\napp:x:1001:\nstaff:x:50:app\n",
		"etc/passwd":      "-rw-r--r-- root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
	}
	if diff := cmp.Diff(wantTree, tr); diff != "" {
		t.Errorf("rootfs (-want +got):\n%s", diff)
	}
	if uid, gid, err := got.ResolveUser(); err != nil || uid != 1000 || gid != 1001 {
		t.Errorf("ResolveUser = %d, %d, %v; want 1000, 1001", uid, gid, err)
	}
	checkClean(t, s, got.ID)
	checkBlobs(t, s, got.Layers...)

	// The unpacked server is intact: it runs and answers.
	runServer(t, filepath.Join(got.RootFS, "app/server"))
}

// runServer starts the imagetest HTTP server binary at path and checks that it echoes a
// request.
func runServer(t *testing.T, path string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command(path)
	cmd.Env = []string{"PORT=" + strconv.Itoa(port)}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting the pulled server: %v", err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	url := "http://127.0.0.1:" + strconv.Itoa(port) + "/hello?x=1"
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Post(url, "text/plain", strings.NewReader("ping"))
		if err == nil {
			var echo struct{ Method, Path, Query, Body string }
			err = json.NewDecoder(resp.Body).Decode(&echo)
			resp.Body.Close()
			if err != nil {
				t.Fatalf("decoding the echo: %v", err)
			}
			if echo.Method != "POST" || echo.Path != "/hello" || echo.Query != "x=1" || echo.Body != "ping" {
				t.Errorf("echo = %+v, want POST /hello x=1 ping", echo)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the pulled server does not answer: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestPullCached(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	reg := imagetest.NewRegistry(t, imagetest.RegistryOptions{})
	img := smallImage(t, "cached")
	ref := reg.Ref("app:v1")
	digest := reg.Push(t, ref, img)

	first, err := s.Pull(ctx, ref, PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if n := reg.BlobGets(); n != 2 {
		t.Errorf("first pull made %d blob requests, want 2 (config and layer)", n)
	}
	// Again, by tag and by digest, from the same store and from a reopened one: only
	// manifests are asked for.
	s2, err := Open(s.Dir())
	if err != nil {
		t.Fatal(err)
	}
	byDigest := reg.Ref("app@" + digest.String())
	for _, tc := range []struct {
		s   *Store
		ref string
	}{{s, ref}, {s2, ref}, {s, byDigest}} {
		before := len(reg.Requests())
		got, err := tc.s.Pull(ctx, tc.ref, PullOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got.ID != first.ID || got.Digest != digest.String() || got.Name != tc.ref {
			t.Errorf("Pull(%s) = %s %s %s, want %s %s %s", tc.ref, got.Name, got.ID, got.Digest, tc.ref, first.ID, digest)
		}
		for _, q := range reg.Requests()[before:] {
			if strings.Contains(q, "/blobs/") {
				t.Errorf("cached pull of %s requested %s", tc.ref, q)
			}
		}
	}
	list, _ := s.List(ctx)
	if got, want := names(list), []string{ref + "=" + first.ShortID(), byDigest + "=" + first.ShortID()}; !slices.Equal(got, want) {
		t.Errorf("List = %q, want %q", got, want)
	}
	checkClean(t, s, first.ID)
}

func TestPullTagMoved(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	reg := imagetest.NewRegistry(t, imagetest.RegistryOptions{})
	base := imagetest.Layer(t, file{Name: "base", Body: []byte("shared")})
	top1 := imagetest.Layer(t, file{Name: "version", Body: []byte("1")})
	top2 := imagetest.Layer(t, file{Name: "version", Body: []byte("2")})
	ref := reg.Ref("app:latest")
	reg.Push(t, ref, imagetest.Image(t, imagetest.ImageSpec{Layers: []v1.Layer{base, top1}}))
	old, err := s.Pull(ctx, ref, PullOptions{})
	if err != nil {
		t.Fatal(err)
	}

	d2 := reg.Push(t, ref, imagetest.Image(t, imagetest.ImageSpec{Layers: []v1.Layer{base, top2}}))
	before := reg.BlobGets()
	cur, err := s.Pull(ctx, ref, PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if cur.Digest != d2.String() || cur.ID == old.ID {
		t.Fatalf("after the tag moved Pull = %s (ID %s), want digest %s and a new ID", cur.Digest, cur.ID, d2)
	}
	// The shared base layer came from the store: only the config and the new layer.
	if n := reg.BlobGets() - before; n != 2 {
		t.Errorf("second pull made %d blob requests, want 2", n)
	}
	readFile := func(im Image, name string) string {
		b, err := os.ReadFile(filepath.Join(im.RootFS, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if got := readFile(cur, "version") + readFile(cur, "base"); got != "2shared" {
		t.Errorf("new image holds %q, want 2shared", got)
	}
	// The old image stays usable, unnamed, until removed.
	if got := readFile(old, "version"); got != "1" {
		t.Errorf("old image holds %q, want 1", got)
	}
	list, _ := s.List(ctx)
	if got, want := names(list), []string{ref + "=" + cur.ShortID(), "=" + old.ShortID()}; !slices.Equal(got, want) {
		t.Errorf("List = %q, want %q", got, want)
	}
	checkClean(t, s, old.ID, cur.ID)
	checkBlobs(t, s, layerDigest(t, base), layerDigest(t, top1), layerDigest(t, top2))

	// Removing the old image deletes its own layer but keeps the shared one.
	if err := s.Remove(ctx, old.ID); err != nil {
		t.Fatal(err)
	}
	checkClean(t, s, cur.ID)
	checkBlobs(t, s, layerDigest(t, base), layerDigest(t, top2))
	if err := s.Remove(ctx, ref); err != nil {
		t.Fatal(err)
	}
	checkEmpty(t, s)
}

func TestPullIndexAndOCI(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	reg := imagetest.NewRegistry(t, imagetest.RegistryOptions{})
	other := "s390x"
	if runtime.GOARCH == other {
		other = "arm64"
	}
	zl := imagetest.LayerOf(t, types.OCILayerZStd, imagetest.Tar(t, file{Name: "arch", Body: []byte("ours")}))
	plain := imagetest.LayerOf(t, types.OCIUncompressedLayer, imagetest.Tar(t, file{Name: "plain", Body: []byte("tar")}))
	gz := imagetest.LayerOf(t, types.OCILayer, imagetest.Tar(t, file{Name: "gz", Body: []byte("gzip")}))
	ours := imagetest.Image(t, imagetest.ImageSpec{OCI: true, Layers: []v1.Layer{zl, plain, gz}, Config: v1.Config{Cmd: []string{"run"}}})
	theirs := imagetest.Image(t, imagetest.ImageSpec{OCI: true, Architecture: other, Layers: []v1.Layer{
		imagetest.LayerOf(t, types.OCILayer, imagetest.Tar(t, file{Name: "arch", Body: []byte("theirs")})),
	}})
	ref := reg.Ref("multi:v1")
	digest := reg.PushIndex(t, ref, imagetest.Index(t, theirs, ours))

	got, err := s.Pull(ctx, ref, PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != digest.String() || got.ID != configDigest(t, ours) {
		t.Errorf("Pull = digest %s ID %s, want the index's %s and our image's %s", got.Digest, got.ID, digest, configDigest(t, ours))
	}
	for name, want := range map[string]string{"arch": "ours", "plain": "tar", "gz": "gzip"} {
		if b, err := os.ReadFile(filepath.Join(got.RootFS, name)); err != nil || string(b) != want {
			t.Errorf("%s = %q, %v; want %q", name, b, err, want)
		}
	}
	if !slices.Equal(got.Config.Cmd, []string{"run"}) {
		t.Errorf("Cmd = %q, want [run]", got.Config.Cmd)
	}

	// An index without this platform, and a plain manifest for another one.
	reg.PushIndex(t, reg.Ref("multi:theirs"), imagetest.Index(t, theirs))
	_, err = s.Pull(ctx, reg.Ref("multi:theirs"), PullOptions{})
	if !errkind.Is(err, errkind.NotFound) || !strings.Contains(err.Error(), "linux/"+other) {
		t.Errorf("Pull of an index without linux/%s = %v, want NotFound listing linux/%s", runtime.GOARCH, err, other)
	}
	reg.Push(t, reg.Ref("single:theirs"), theirs)
	_, err = s.Pull(ctx, reg.Ref("single:theirs"), PullOptions{})
	if !errkind.Is(err, errkind.Invalid) || !strings.Contains(err.Error(), "the image is for linux/"+other) {
		t.Errorf("Pull of a linux/%s image = %v, want Invalid naming its platform", other, err)
	}
	checkClean(t, s, got.ID)
	checkBlobs(t, s, got.Layers...)
}

func TestPullAuth(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	reg := imagetest.NewRegistry(t, imagetest.RegistryOptions{Username: "robot", Password: "s3cret"})
	ref := reg.Ref("private/app:v1")
	reg.Push(t, ref, smallImage(t, "private"))

	for _, tc := range []struct {
		name string
		opts PullOptions
		msg  string
	}{
		{"no credentials", PullOptions{}, "registry " + reg.Host + " requires credentials for private/app (401 Unauthorized)"},
		{"wrong password", PullOptions{Username: "robot", Password: "guess"}, "registry " + reg.Host + ` rejected the credentials of user "robot" for private/app (401 Unauthorized)`},
	} {
		_, err := s.Pull(ctx, ref, tc.opts)
		t.Logf("%s: %v", tc.name, err)
		if !errkind.Is(err, errkind.Invalid) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: Pull = %v, want Invalid with %q", tc.name, err, tc.msg)
		}
		if err != nil && strings.Contains(err.Error(), "guess") {
			t.Errorf("%s: the error shows the password: %v", tc.name, err)
		}
		checkEmpty(t, s)
	}
	if _, err := s.Pull(ctx, ref, PullOptions{Username: "robot"}); !errkind.Is(err, errkind.Invalid) {
		t.Errorf("Pull with a username and no password = %v, want Invalid", err)
	}
	got, err := s.Pull(ctx, ref, PullOptions{Username: "robot", Password: "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(got.RootFS, "seed")); err != nil || string(b) != "private" {
		t.Errorf("seed = %q, %v", b, err)
	}
}

// serveCorrupt makes reg serve layer l's blob with one byte changed.
func serveCorrupt(t testing.TB, reg *imagetest.Registry, l v1.Layer) {
	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	blob, _ := io.ReadAll(rc)
	blob[len(blob)/2] ^= 0xff
	d, _ := l.Digest()
	reg.Intercept(func(w http.ResponseWriter, r *http.Request) bool {
		if !imagetest.IsBlobGet(r, d) {
			return false
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
		w.Write(blob)
		return true
	})
}

// lyingLayer is a layer whose diff ID does not match its content.
type lyingLayer struct{ v1.Layer }

func (lyingLayer) DiffID() (v1.Hash, error) {
	return v1.NewHash("sha256:" + strings.Repeat("ab", 32))
}

func TestPullCorrupt(t *testing.T) {
	ctx := context.Background()
	reg := imagetest.NewRegistry(t, imagetest.RegistryOptions{})
	good := imagetest.Layer(t, file{Name: "good", Body: []byte("good")})
	bad := imagetest.Layer(t, file{Name: "bad", Body: bytes.Repeat([]byte("bad"), 1000)})
	ref := reg.Ref("app:corrupt")
	reg.Push(t, ref, imagetest.Image(t, imagetest.ImageSpec{Layers: []v1.Layer{good, bad}}))

	t.Run("digest mismatch", func(t *testing.T) {
		s := openStore(t)
		serveCorrupt(t, reg, bad)
		defer reg.Intercept(nil)
		_, err := s.Pull(ctx, ref, PullOptions{})
		t.Log(err)
		if !errkind.Is(err, errkind.Invalid) || !strings.Contains(err.Error(), "does not match its digest") {
			t.Errorf("Pull = %v, want Invalid: does not match its digest", err)
		}
		checkEmpty(t, s)
	})
	t.Run("diff ID mismatch", func(t *testing.T) {
		s := openStore(t)
		ref := reg.Ref("app:lying")
		reg.Push(t, ref, imagetest.Image(t, imagetest.ImageSpec{Layers: []v1.Layer{good, lyingLayer{bad}}}))
		_, err := s.Pull(ctx, ref, PullOptions{})
		t.Log(err)
		if !errkind.Is(err, errkind.Invalid) || !strings.Contains(err.Error(), "but the config says") {
			t.Errorf("Pull = %v, want Invalid: diff ID mismatch", err)
		}
		checkEmpty(t, s)
	})
	t.Run("truncated", func(t *testing.T) {
		s := openStore(t)
		d, _ := bad.Digest()
		reg.Intercept(func(w http.ResponseWriter, r *http.Request) bool {
			if !imagetest.IsBlobGet(r, d) {
				return false
			}
			rc, _ := bad.Compressed()
			blob, _ := io.ReadAll(rc)
			// The whole length announced, half of it sent: the connection breaks.
			w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
			w.Write(blob[:len(blob)/2])
			return true
		})
		defer reg.Intercept(nil)
		_, err := s.Pull(ctx, ref, PullOptions{})
		t.Log(err)
		if !errkind.Is(err, errkind.Unavailable) || !strings.Contains(err.Error(), "downloading the layer failed") {
			t.Errorf("Pull of a truncated layer = %v, want Unavailable", err)
		}
		checkEmpty(t, s)
	})
}

func TestPullLimits(t *testing.T) {
	ctx := context.Background()
	reg := imagetest.NewRegistry(t, imagetest.RegistryOptions{})
	noise := make([]byte, 256<<10)
	for i := range noise {
		noise[i] = byte(i*7919>>3) ^ byte(i>>11)
	}
	big := reg.Ref("limits:big")
	reg.Push(t, big, imagetest.Image(t, imagetest.ImageSpec{Layers: []v1.Layer{
		imagetest.LayerOf(t, types.OCIUncompressedLayer, imagetest.Tar(t, file{Name: "noise", Body: noise})),
	}}))
	bomb := reg.Ref("limits:bomb")
	reg.Push(t, bomb, imagetest.Image(t, imagetest.ImageSpec{Layers: []v1.Layer{
		imagetest.Layer(t, file{Name: "a", Body: make([]byte, 300<<10)}),
		imagetest.Layer(t, file{Name: "b", Body: make([]byte, 300<<10)}),
	}}))
	layers := reg.Ref("limits:layers")
	reg.Push(t, layers, imagetest.Image(t, imagetest.ImageSpec{Layers: []v1.Layer{
		imagetest.Layer(t, file{Name: "1"}), imagetest.Layer(t, file{Name: "2"}), imagetest.Layer(t, file{Name: "3"}),
	}}))
	config := reg.Ref("limits:config")
	reg.Push(t, config, imagetest.Image(t, imagetest.ImageSpec{Config: v1.Config{
		Labels: map[string]string{"huge": strings.Repeat("x", maxConfigSize)},
	}}))

	for _, tc := range []struct {
		name      string
		ref       string
		opts      PullOptions
		msg       string
		blobsSeen bool
	}{
		// Declared layer sizes fail the pull before any blob is fetched.
		{"download size", big, PullOptions{MaxSize: 200 << 10}, "layers are larger than the 204800 bytes allowed", false},
		// Two layers that compress well: each fits, their content together does not.
		{"unpacked size", bomb, PullOptions{MaxSize: 500 << 10}, "unpacks to more than 512000 bytes", true},
		{"layer count", layers, PullOptions{MaxLayers: 2}, "has 3 layers, more than the 2 allowed", false},
		{"config size", config, PullOptions{}, "the image config is", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openStore(t)
			before := reg.BlobGets()
			_, err := s.Pull(ctx, tc.ref, tc.opts)
			t.Log(err)
			if !errkind.Is(err, errkind.LimitExceeded) || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("Pull = %v, want LimitExceeded with %q", err, tc.msg)
			}
			if seen := reg.BlobGets() > before; seen != tc.blobsSeen {
				t.Errorf("blobs fetched: %v, want %v", seen, tc.blobsSeen)
			}
			checkEmpty(t, s)
			// Within the limits the same image pulls.
			tc.opts.MaxSize *= 4
			tc.opts.MaxLayers *= 2
			if tc.name != "config size" {
				if _, err := s.Pull(ctx, tc.ref, tc.opts); err != nil {
					t.Errorf("Pull within the limits: %v", err)
				}
			}
		})
	}

	p, err := newPuller("example.com/app", PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.opts.MaxSize != DefaultMaxPullSize || p.opts.MaxLayers != DefaultMaxLayers {
		t.Errorf("default limits = %d bytes, %d layers; want %d, %d", p.opts.MaxSize, p.opts.MaxLayers, DefaultMaxPullSize, DefaultMaxLayers)
	}
}

func TestPullCancel(t *testing.T) {
	s := openStore(t)
	reg := imagetest.NewRegistry(t, imagetest.RegistryOptions{})
	l1 := imagetest.Layer(t, file{Name: "one", Body: []byte("1")})
	l2 := imagetest.Layer(t, file{Name: "two", Body: []byte("2")})
	ref := reg.Ref("app:slow")
	reg.Push(t, ref, imagetest.Image(t, imagetest.ImageSpec{Layers: []v1.Layer{l1, l2}}))
	d2, _ := l2.Digest()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stalled := make(chan struct{})
	var once sync.Once
	reg.Intercept(func(w http.ResponseWriter, r *http.Request) bool {
		if !imagetest.IsBlobGet(r, d2) {
			return false
		}
		once.Do(func() { close(stalled) })
		<-r.Context().Done() // the registry stalls until the client gives up
		return true
	})
	go func() {
		<-stalled
		cancel()
	}()
	_, err := s.Pull(ctx, ref, PullOptions{})
	t.Log(err)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Pull = %v, want context.Canceled", err)
	}
	checkEmpty(t, s)

	// A deadline is a Timeout.
	ctx, cancel = context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err = s.Pull(ctx, ref, PullOptions{})
	t.Log(err)
	if !errors.Is(err, context.DeadlineExceeded) || !errkind.Is(err, errkind.Timeout) {
		t.Errorf("Pull = %v, want a Timeout", err)
	}
	checkEmpty(t, s)
}

func TestPullHostile(t *testing.T) {
	ctx := context.Background()
	reg := imagetest.NewRegistry(t, imagetest.RegistryOptions{})
	outside := t.TempDir() // a host directory no layer may write into

	for _, tc := range []struct {
		name   string
		layers [][]file
		kind   errkind.Kind
	}{
		{"traversal", [][]file{{{Name: "../../../escape", Body: []byte("x")}}}, errkind.Invalid},
		{"absolute symlink", [][]file{
			{{Name: "evil", Type: tar.TypeSymlink, Linkname: outside}},
			{{Name: "evil/pwned", Body: []byte("x")}},
		}, errkind.Invalid},
		{"climbing symlink", [][]file{
			{{Name: "up", Type: tar.TypeSymlink, Linkname: "../../../../../../../../" + outside}},
			{{Name: "up/pwned", Body: []byte("x")}},
		}, errkind.Invalid},
		{"hard link out", [][]file{{{Name: "passwd", Type: tar.TypeLink, Linkname: "../../../../etc/passwd"}}}, errkind.Invalid},
		{"whiteout out", [][]file{{{Name: "../.wh.victim"}}}, errkind.Invalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openStore(t)
			var ls []v1.Layer
			for _, files := range tc.layers {
				ls = append(ls, imagetest.Layer(t, files...))
			}
			ref := reg.Ref("hostile:" + strings.ReplaceAll(tc.name, " ", "-"))
			reg.Push(t, ref, imagetest.Image(t, imagetest.ImageSpec{Layers: ls}))
			_, err := s.Pull(ctx, ref, PullOptions{})
			t.Log(err)
			if !errkind.Is(err, tc.kind) {
				t.Errorf("Pull = %v, want kind %v", err, tc.kind)
			}
			checkEmpty(t, s)
			if got := listDir(t, outside); len(got) != 0 {
				t.Errorf("the layer wrote %q outside the image", got)
			}
			filepath.WalkDir(filepath.Dir(s.Dir()), func(p string, d fs.DirEntry, err error) error {
				if err == nil && (d.Name() == "escape" || d.Name() == "pwned") {
					t.Errorf("the layer wrote %s", p)
				}
				return nil
			})
		})
	}

	t.Run("devices", func(t *testing.T) {
		s := openStore(t)
		ref := reg.Ref("hostile:devices")
		reg.Push(t, ref, imagetest.Image(t, imagetest.ImageSpec{Layers: []v1.Layer{imagetest.Layer(t,
			file{Name: "dev/", Type: tar.TypeDir},
			file{Name: "dev/sda", Type: tar.TypeBlock},
			file{Name: "dev/mem", Type: tar.TypeChar},
			file{Name: "fifo", Type: tar.TypeFifo},
			file{Name: "ok", Body: []byte("ok")},
		)}}))
		im, err := s.Pull(ctx, ref, PullOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got, want := tree(t, im.RootFS), map[string]string{"dev": "drwxr-xr-x", "ok": "-rw-r--r-- ok"}; !cmp.Equal(got, want) {
			t.Errorf("rootfs = %q, want %q: devices and fifos are not unpacked", got, want)
		}
	})
}

func TestPullErrors(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	reg := imagetest.NewRegistry(t, imagetest.RegistryOptions{})
	reg.Push(t, reg.Ref("app:v1"), smallImage(t, "x"))
	helm := mutate.ConfigMediaType(smallImage(t, "chart"), "application/vnd.cncf.helm.config.v1+json")
	reg.Push(t, reg.Ref("chart:v1"), helm)

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()

	for _, tc := range []struct {
		ref  string
		kind errkind.Kind
		msg  string
	}{
		{"", errkind.Invalid, "invalid image reference"},
		{"Bad/UPPER:case", errkind.Invalid, "invalid image reference"},
		{reg.Ref("app:nope"), errkind.NotFound, "registry " + reg.Host + " has no " + reg.Ref("app:nope")},
		{reg.Ref("nope:v1"), errkind.NotFound, "has no"},
		{reg.Ref("chart:v1"), errkind.Invalid, "not a container image"},
		{closed + "/app:v1", errkind.Unavailable, "registry " + closed + " cannot be reached"},
	} {
		_, err := s.Pull(ctx, tc.ref, PullOptions{})
		t.Logf("%q: %v", tc.ref, err)
		if !errkind.Is(err, tc.kind) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("Pull(%q) = %v, want %v with %q", tc.ref, err, tc.kind, tc.msg)
		}
	}
	checkEmpty(t, s)
}

func TestPullConcurrent(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	reg := imagetest.NewRegistry(t, imagetest.RegistryOptions{})
	base := imagetest.Layer(t, file{Name: "base", Body: []byte("shared")})
	var refs []string
	for _, v := range []string{"1", "2", "3"} {
		ref := reg.Ref("app:v" + v)
		reg.Push(t, ref, imagetest.Image(t, imagetest.ImageSpec{Layers: []v1.Layer{base,
			imagetest.Layer(t, file{Name: "v", Body: []byte(v)})}}))
		refs = append(refs, ref, ref)
	}
	var wg sync.WaitGroup
	ims := make([]Image, len(refs))
	errs := make([]error, len(refs))
	for i, ref := range refs {
		wg.Go(func() { ims[i], errs[i] = s.Pull(ctx, ref, PullOptions{}) })
	}
	wg.Wait()
	var ids, blobs []string
	for i := range refs {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		ids = append(ids, ims[i].ID)
		blobs = append(blobs, ims[i].Layers...)
	}
	checkClean(t, s, ids...)
	checkBlobs(t, s, blobs...)
	if len(slices.Compact(slices.Sorted(slices.Values(blobs)))) != 4 {
		t.Errorf("blobs %q, want 4 distinct", blobs)
	}
}

// TestPullRepeatedLayer pulls an image that lists one layer twice, as old builders did
// with the empty layer: the blob is fetched once and applied twice.
func TestPullRepeatedLayer(t *testing.T) {
	s := openStore(t)
	reg := imagetest.NewRegistry(t, imagetest.RegistryOptions{})
	a := imagetest.Layer(t, file{Name: "f", Body: []byte("a")})
	b := imagetest.Layer(t, file{Name: "f", Body: []byte("b")})
	ref := reg.Ref("app:repeated")
	reg.Push(t, ref, imagetest.Image(t, imagetest.ImageSpec{Layers: []v1.Layer{a, b, a}}))
	im, err := s.Pull(context.Background(), ref, PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(im.RootFS, "f")); err != nil || string(got) != "a" {
		t.Errorf("f = %q, %v; want a, from the last layer", got, err)
	}
	if n := reg.BlobGets(); n != 3 {
		t.Errorf("%d blob requests, want 3 (config and two distinct layers)", n)
	}
	checkBlobs(t, s, layerDigest(t, a), layerDigest(t, b))
}

func TestOpenCollectsBlobs(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	reg := imagetest.NewRegistry(t, imagetest.RegistryOptions{})
	ref := reg.Ref("app:v1")
	reg.Push(t, ref, smallImage(t, "keep"))
	im, err := s.Pull(ctx, ref, PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	stray := filepath.Join(s.blobsDir(), strings.Repeat("c", 64))
	os.WriteFile(stray, []byte("left by a crash"), 0o600)
	os.MkdirAll(filepath.Join(s.tmpDir(), "pull-123", "blobs"), 0o700)
	if _, err := Open(s.Dir()); err != nil {
		t.Fatal(err)
	}
	checkClean(t, s, im.ID)
	checkBlobs(t, s, im.Layers...)
}

// TestPullInsecure pulls from a plain-HTTP registry on a non-loopback address, which needs
// Insecure.
func TestPullInsecure(t *testing.T) {
	ip := nonLoopbackIP(t)
	s := openStore(t)
	reg := imagetest.NewRegistry(t, imagetest.RegistryOptions{Addr: net.JoinHostPort(ip, "0")})
	ref := reg.Ref("app:v1")
	reg.Push(t, ref, smallImage(t, "insecure"))

	_, err := s.Pull(context.Background(), ref, PullOptions{})
	t.Log(err)
	if !errkind.Is(err, errkind.Unavailable) || !strings.Contains(err.Error(), "https://"+reg.Host) {
		t.Errorf("Pull over plain HTTP without Insecure = %v, want an HTTPS attempt that fails", err)
	}
	checkEmpty(t, s)
	if _, err := s.Pull(context.Background(), ref, PullOptions{Insecure: true}); err != nil {
		t.Errorf("Pull with Insecure: %v", err)
	}
}

// nonLoopbackIP returns an IPv4 address of this machine that is not a loopback one.
func nonLoopbackIP(t *testing.T) string {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() {
			return n.IP.String()
		}
	}
	t.Skip("no non-loopback IPv4 address (TestSchemeGuard covers the upgrade)")
	return ""
}

// recordingTransport answers every request with 204 and records its URL.
type recordingTransport struct{ urls []string }

func (rt *recordingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	rt.urls = append(rt.urls, r.URL.String())
	return &http.Response{StatusCode: http.StatusNoContent, Body: http.NoBody, Request: r}, nil
}

func TestSchemeGuard(t *testing.T) {
	for _, tc := range []struct {
		url      string
		insecure bool
		want     string
	}{
		{"http://10.1.2.3:5000/v2/", false, "https://10.1.2.3:5000/v2/"},
		{"http://registry.example/v2/", false, "https://registry.example/v2/"},
		{"http://10.1.2.3:5000/v2/", true, "http://10.1.2.3:5000/v2/"},
		{"http://127.0.0.1:5000/v2/", false, "http://127.0.0.1:5000/v2/"},
		{"http://127.8.0.1:5000/v2/", false, "http://127.8.0.1:5000/v2/"},
		{"http://localhost:5000/v2/", false, "http://localhost:5000/v2/"},
		{"http://[::1]:5000/v2/", false, "http://[::1]:5000/v2/"},
		{"https://registry.example/v2/", false, "https://registry.example/v2/"},
	} {
		rt := &recordingTransport{}
		g := &schemeGuard{next: rt, insecure: tc.insecure}
		req, _ := http.NewRequest(http.MethodGet, tc.url, nil)
		if _, err := g.RoundTrip(req); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(rt.urls, []string{tc.want}) {
			t.Errorf("%s (insecure %v) went to %q, want %s", tc.url, tc.insecure, rt.urls, tc.want)
		}
		if req.URL.String() != tc.url {
			t.Errorf("the caller's request was changed to %s", req.URL)
		}
	}
}
