// Package imagetest helps tests that pull images: it runs go-containerregistry's registry
// in process behind a real HTTP server (optionally with basic auth, with every request
// recorded and any of them open to interception), and builds small images to push to it,
// among them one whose layer is a static Go HTTP server (HTTPServer).
//
// Only tests import imagetest. It does not import image, so image's own tests can use it.
package imagetest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	_ "embed"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"
)

// Registry is an in-process registry on a plain HTTP server, closed when the test ends.
type Registry struct {
	// Host is "IP:PORT" ("127.0.0.1:PORT" by default), the registry part of references to it.
	Host     string
	username string
	password string
	handler  http.Handler

	mu        sync.Mutex
	requests  []string                                      // guarded by mu
	intercept func(http.ResponseWriter, *http.Request) bool // guarded by mu
}

// RegistryOptions configure NewRegistry.
type RegistryOptions struct {
	// Username and Password, when set, make every request need them as basic auth.
	Username string
	Password string
	// Addr is the address to listen on; "" means a free loopback port.
	Addr string
}

// NewRegistry starts a registry.
func NewRegistry(t testing.TB, opts RegistryOptions) *Registry {
	t.Helper()
	r := &Registry{
		username: opts.Username,
		password: opts.Password,
		handler:  registry.New(registry.Logger(log.New(io.Discard, "", 0))),
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(r.serve))
	if opts.Addr != "" {
		l, err := net.Listen("tcp", opts.Addr)
		if err != nil {
			t.Fatal(err)
		}
		srv.Listener.Close()
		srv.Listener = l
	}
	srv.Start()
	t.Cleanup(srv.Close)
	r.Host = strings.TrimPrefix(srv.URL, "http://")
	return r
}

func (r *Registry) serve(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	r.requests = append(r.requests, req.Method+" "+req.URL.Path)
	intercept := r.intercept
	r.mu.Unlock()
	if r.username != "" {
		if u, p, ok := req.BasicAuth(); !ok || u != r.username || p != r.password {
			w.Header().Set("WWW-Authenticate", `Basic realm="imagetest"`)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
			return
		}
	}
	if intercept != nil && intercept(w, req) {
		return
	}
	r.handler.ServeHTTP(w, req)
}

// Ref returns the reference to repo (with a tag or digest) in this registry.
func (r *Registry) Ref(repo string) string { return r.Host + "/" + repo }

// Intercept makes f see every authorized request first; when f returns true it has
// answered the request itself. A nil f removes the interceptor.
func (r *Registry) Intercept(f func(w http.ResponseWriter, req *http.Request) bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.intercept = f
}

// Requests returns "METHOD /path" of every request so far, in order.
func (r *Registry) Requests() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.requests...)
}

// BlobGets counts the GET requests for blobs (layers and configs) so far.
func (r *Registry) BlobGets() int {
	n := 0
	for _, q := range r.Requests() {
		if strings.HasPrefix(q, "GET ") && strings.Contains(q, "/blobs/") {
			n++
		}
	}
	return n
}

// IsBlobGet reports whether req fetches the blob with digest d.
func IsBlobGet(req *http.Request, d v1.Hash) bool {
	return req.Method == http.MethodGet && strings.HasSuffix(req.URL.Path, "/blobs/"+d.String())
}

func (r *Registry) writeOptions() []remote.Option {
	if r.username == "" {
		return nil
	}
	return []remote.Option{remote.WithAuth(authn.FromConfig(authn.AuthConfig{Username: r.username, Password: r.password}))}
}

// Push pushes img as ref (a tag or digest reference into this registry) and returns the
// manifest digest.
func (r *Registry) Push(t testing.TB, ref string, img v1.Image) v1.Hash {
	t.Helper()
	tag, err := name.ParseReference(ref, name.Insecure) // the server is plain HTTP, loopback or not
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img, r.writeOptions()...); err != nil {
		t.Fatalf("pushing %s: %v", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// PushIndex pushes idx and its images as ref and returns the index digest.
func (r *Registry) PushIndex(t testing.TB, ref string, idx v1.ImageIndex) v1.Hash {
	t.Helper()
	tag, err := name.ParseReference(ref, name.Insecure) // the server is plain HTTP, loopback or not
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(tag, idx, r.writeOptions()...); err != nil {
		t.Fatalf("pushing %s: %v", ref, err)
	}
	d, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// File is one entry of a layer's tar.
type File struct {
	Name string
	// Type is a tar type flag; zero means a regular file.
	Type byte
	Body []byte
	// Mode holds the permission bits; zero means 0644, or 0755 for a directory.
	Mode     int64
	Linkname string
	Uid, Gid int
}

// Tar returns the tar archive of files.
func Tar(t testing.TB, files ...File) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		hdr := &tar.Header{Typeflag: f.Type, Name: f.Name, Mode: f.Mode, Linkname: f.Linkname,
			Uid: f.Uid, Gid: f.Gid, ModTime: time.Date(2024, 5, 4, 13, 54, 9, 0, time.UTC)}
		if hdr.Typeflag == 0 {
			hdr.Typeflag = tar.TypeReg
		}
		if hdr.Typeflag == tar.TypeReg {
			hdr.Size = int64(len(f.Body))
		}
		if hdr.Mode == 0 {
			hdr.Mode = 0o644
			if hdr.Typeflag == tar.TypeDir {
				hdr.Mode = 0o755
			}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatalf("tar header %q: %v", f.Name, err)
		}
		if _, err := tw.Write(f.Body); err != nil {
			t.Fatalf("tar %q: %v", f.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Layer returns a gzip-compressed Docker layer holding files.
func Layer(t testing.TB, files ...File) v1.Layer {
	t.Helper()
	return LayerOf(t, types.DockerLayer, Tar(t, files...))
}

// LayerOf returns a layer of media type mt whose uncompressed content is the tar archive
// uncompressed, compressed as mt says (gzip, zstd, or not at all).
func LayerOf(t testing.TB, mt types.MediaType, uncompressed []byte) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	switch mt {
	case types.DockerLayer, types.OCILayer:
		zw := gzip.NewWriter(&buf)
		zw.Write(uncompressed)
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
	case types.OCILayerZStd:
		zw, err := zstd.NewWriter(&buf)
		if err != nil {
			t.Fatal(err)
		}
		zw.Write(uncompressed)
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
	default:
		buf.Write(uncompressed)
	}
	return &blobLayer{compressed: buf.Bytes(), diffID: sha(uncompressed), mt: mt}
}

func sha(b []byte) v1.Hash {
	h, _, err := v1.SHA256(bytes.NewReader(b))
	if err != nil {
		panic(err) // reading from memory cannot fail
	}
	return h
}

// blobLayer is a layer held in memory, compressed.
type blobLayer struct {
	compressed []byte
	diffID     v1.Hash
	mt         types.MediaType
}

func (l *blobLayer) Digest() (v1.Hash, error) { return sha(l.compressed), nil }
func (l *blobLayer) DiffID() (v1.Hash, error) { return l.diffID, nil }
func (l *blobLayer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.compressed)), nil
}
func (l *blobLayer) Size() (int64, error)                { return int64(len(l.compressed)), nil }
func (l *blobLayer) MediaType() (types.MediaType, error) { return l.mt, nil }

// Uncompressed is not needed to push a layer, and tests do not read it back.
func (l *blobLayer) Uncompressed() (io.ReadCloser, error) {
	return nil, fmt.Errorf("imagetest layers do not decompress")
}

// ImageSpec describes an image for Image.
type ImageSpec struct {
	Config v1.Config
	Layers []v1.Layer
	// OCI gives the image OCI media types for its manifest and config instead of Docker's.
	OCI bool
	// OS and Architecture default to linux and this machine's architecture.
	OS, Architecture string
}

// Image returns the image spec describes.
func Image(t testing.TB, spec ImageSpec) v1.Image {
	t.Helper()
	cf := &v1.ConfigFile{
		OS:           orDefault(spec.OS, "linux"),
		Architecture: orDefault(spec.Architecture, runtime.GOARCH),
		Config:       spec.Config,
		RootFS:       v1.RootFS{Type: "layers"},
	}
	var base v1.Image = empty.Image
	if spec.OCI {
		base = mutate.ConfigMediaType(mutate.MediaType(base, types.OCIManifestSchema1), types.OCIConfigJSON)
	}
	img, err := mutate.ConfigFile(base, cf)
	if err != nil {
		t.Fatal(err)
	}
	if img, err = mutate.AppendLayers(img, spec.Layers...); err != nil {
		t.Fatal(err)
	}
	return img
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// Index returns a multi-platform index (OCI media types) of imgs, each entry's platform
// taken from its image's config.
func Index(t testing.TB, imgs ...v1.Image) v1.ImageIndex {
	t.Helper()
	var adds []mutate.IndexAddendum
	for _, img := range imgs {
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{
			Platform: &v1.Platform{OS: cf.OS, Architecture: cf.Architecture},
		}})
	}
	return mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), adds...)
}

//go:embed testdata/httpserver/main.go
var httpServerSource []byte

var httpServer struct {
	once sync.Once
	bin  []byte
	err  error
}

// HTTPServer returns a static linux binary for this machine's architecture of
// testdata/httpserver: a small HTTP server listening on $PORT (default 8080) that echoes
// each request as JSON (with an ID of the process), answers /health (failing after
// /sick), exits with /exit?code=N, streams server-sent events (/sse?n=N&ms=M), echoes a
// WebSocket (/ws), hashes an upload of any size (POST /upload) and writes N bytes to its
// stdout (/log?bytes=N). It is built with the go command once per test binary.
func HTTPServer(t testing.TB) []byte {
	t.Helper()
	httpServer.once.Do(func() { httpServer.bin, httpServer.err = buildHTTPServer() })
	if httpServer.err != nil {
		t.Fatalf("building the test HTTP server: %v", httpServer.err)
	}
	return httpServer.bin
}

func buildHTTPServer() ([]byte, error) {
	dir, err := os.MkdirTemp("", "imagetest-httpserver-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	if err := os.WriteFile(filepath.Join(dir, "main.go"), httpServerSource, 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module httpserver\n\ngo 1.22\n"), 0o644); err != nil {
		return nil, err
	}
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", "server", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH, "GOWORK=off", "GOFLAGS=-mod=mod")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build: %v\n%s", err, out)
	}
	return os.ReadFile(filepath.Join(dir, "server"))
}
