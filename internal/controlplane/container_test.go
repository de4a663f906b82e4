package controlplane_test

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/api"
	"github.com/sessiond/sessiond/internal/controlplane"
	"github.com/sessiond/sessiond/internal/controlplane/controlplanetest"
	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/image"
	"github.com/sessiond/sessiond/internal/image/imagetest"
	"github.com/sessiond/sessiond/internal/pool"
	"github.com/sessiond/sessiond/internal/probe"
	"github.com/sessiond/sessiond/internal/sandbox"
	"github.com/sessiond/sessiond/internal/sandbox/oci"
	"github.com/sessiond/sessiond/internal/sandbox/sandboxtest"
)

// These tests run CustomContainer pools end to end on real runc and runsc sandboxes: an
// image built in the test (imagetest's static HTTP server as its only layer) is pushed to
// an in-process registry, pools pull it through the control plane, and requests go
// through the real API on an httptest server, the proxy and the agent's tunnels.

// agentPath is the sessiond-agent built for the package's tests.
var agentPath string

func TestMain(m *testing.M) {
	sandboxtest.MainWithAgent(m, &agentPath, func() {
		if d := controlplanetest.AgentDir(); d != "" {
			os.RemoveAll(d) // built by manage_test's environments
		}
	})
}

// world is one test's data directory, image store, registry and runtimes.
type world struct {
	t      testing.TB
	data   string
	images *image.Store
	reg    *imagetest.Registry
	rt     string // runc or runsc
	cgroup string
}

func newWorld(t testing.TB, rtName string, regOpts imagetest.RegistryOptions) *world {
	t.Helper()
	if testing.Short() {
		t.Skip("starts real sandboxes")
	}
	data, err := os.MkdirTemp("/tmp", "cc") // short: sandbox socket paths live below it
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(data, 0o711)
	w := &world{t: t, data: data, rt: rtName, cgroup: "sessiond-test-" + strings.TrimPrefix(filepath.Base(data), "cc")}
	t.Cleanup(func() {
		parents, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", w.cgroup))
		for _, p := range append(parents, filepath.Join("/sys/fs/cgroup", w.cgroup)) {
			os.Remove(p)
		}
		os.RemoveAll(data)
	})
	if rt, err := w.runtime(""); err != nil || !rt.Capabilities().Available {
		reason := fmt.Sprint(err)
		if err == nil {
			reason = rt.Capabilities().Reason
		}
		sandboxtest.SkipOrFail(t, "%s unavailable: %s", rtName, reason)
	}
	if w.images, err = image.Open(filepath.Join(data, "images")); err != nil {
		t.Fatal(err)
	}
	w.reg = imagetest.NewRegistry(t, regOpts)
	return w
}

func (w *world) runtime(string) (sandbox.Runtime, error) {
	return oci.New(oci.Config{Name: w.rt, StateDir: filepath.Join(w.data, w.rt), AgentBinary: agentPath, CgroupParent: w.cgroup})
}

// push pushes the test server image as repo:tag; version is in its environment.
func (w *world) push(repo, version string) string {
	bin := imagetest.HTTPServer(w.t)
	img := imagetest.Image(w.t, imagetest.ImageSpec{
		Config: v1.Config{Entrypoint: []string{"/server"}, Env: []string{"PATH=/", "PORT=8080", "VERSION=" + version}, WorkingDir: "/srv"},
		Layers: []v1.Layer{imagetest.Layer(w.t,
			imagetest.File{Name: "server", Body: bin, Mode: 0o755},
			imagetest.File{Name: "srv", Type: tar.TypeDir})},
	})
	ref := w.reg.Ref(repo)
	w.reg.Push(w.t, ref, img)
	return ref
}

// spec is a CustomContainer pool of the test server image ref, on port 8080.
func (w *world) spec(name, ref string, edit func(*pool.Spec)) pool.Spec {
	s := pool.Spec{Name: name, ContainerType: pool.CustomContainer, MaxConcurrentSessions: 5, ReadySessionInstances: 1,
		LifecycleType: pool.LifecycleTimed, CooldownPeriod: time.Minute, Runtime: w.rt, Image: ref,
		Limits:    sandbox.Limits{MemoryBytes: 256 << 20, CPUMillis: 1000},
		Container: &pool.ContainerSpec{Image: ref, TargetPort: 8080}}
	if edit != nil {
		edit(&s)
	}
	return s
}

// start runs a control plane of specs behind the API.
func (w *world) start(specs ...pool.Spec) (*controlplane.ControlPlane, string) {
	w.t.Helper()
	cp, err := controlplane.New(context.Background(), controlplane.Config{OpenRuntime: w.runtime, Images: w.images,
		Log: slog.New(slog.NewTextHandler(testWriter{w.t}, &slog.HandlerOptions{Level: slog.LevelWarn}))}, specs)
	if err != nil {
		w.t.Fatal(err)
	}
	s := api.New(api.Config{Pools: cp})
	srv := httptest.NewServer(s)
	w.t.Cleanup(func() {
		srv.Close()
		s.Close()
		if err := cp.Close(context.Background()); err != nil {
			w.t.Errorf("Close: %v", err)
		}
		rt, _ := w.runtime("")
		if infos, _ := rt.List(context.Background()); len(infos) > 0 {
			w.t.Errorf("sandboxes left after Close: %+v", infos)
		}
	})
	return cp, srv.URL
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// pool returns the named pool, waiting until it is provisioned.
func getPool(t testing.TB, cp *controlplane.ControlPlane, name string) *controlplane.Pool {
	t.Helper()
	p, ok := cp.Get(name)
	if !ok {
		t.Fatalf("no pool %s", name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), sandboxtest.Timeout(time.Minute))
	defer cancel()
	if err := p.WaitProvisioned(ctx); err != nil {
		t.Fatalf("pool %s: %v", name, err)
	}
	return p
}

func waitFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(sandboxtest.Timeout(d))
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// echo is what the test server answers to a request it echoes.
type echo struct {
	Method, Path, Query, Body, Instance, Cwd string
	Headers                                  http.Header
	Env                                      []string
	UID                                      int
}

// send sends a request and returns the status and body.
func send(t testing.TB, method, url string, body io.Reader, header http.Header) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// get sends a GET that the container must answer with an echo.
func get(t testing.TB, url string) echo {
	t.Helper()
	status, b := send(t, "GET", url, nil, nil)
	var e echo
	if err := json.Unmarshal(b, &e); status != 200 || err != nil {
		t.Fatalf("GET %s: %d %s", url, status, b)
	}
	return e
}

func hasEnv(env []string, kv string) bool {
	for _, e := range env {
		if e == kv {
			return true
		}
	}
	return false
}

// TestCustomContainerRequests checks on both runtimes what reaches the container: the
// method, the path below the pool, the query and body as sent, the client's headers
// without its credentials, the session identifier header, the image's and template's
// environment, its working directory and user (root: no USER in the image).
func TestCustomContainerRequests(t *testing.T) {
	for _, rtName := range oci.Names() {
		t.Run(rtName, func(t *testing.T) {
			w := newWorld(t, rtName, imagetest.RegistryOptions{})
			ref := w.push("team/web:v1", "1")
			cp, base := w.start(w.spec("web", ref, func(s *pool.Spec) {
				s.Container.Env = []pool.EnvVar{{Name: "MODE", Value: "test"}, {Name: "TOKEN", SecretRef: "token"}}
				s.Container.Secrets = map[string]string{"token": "s3cret"}
			}))
			getPool(t, cp, "web")
			hdr := http.Header{"Authorization": {"Bearer for-sessiond"}, "X-Custom": {"kept"}, "Content-Type": {"text/plain"}}
			status, b := send(t, "POST", base+"/subscriptions/s/resourceGroups/rg/sessionPools/web/api/items/?identifier=user-1&x=1&x=2",
				strings.NewReader("hello container"), hdr)
			var e echo
			if err := json.Unmarshal(b, &e); status != 200 || err != nil {
				t.Fatalf("POST: %d %s", status, b)
			}
			if e.Method != "POST" || e.Path != "/api/items/" || e.Query != "identifier=user-1&x=1&x=2" || e.Body != "hello container" {
				t.Errorf("the container got %s %s?%s %q", e.Method, e.Path, e.Query, e.Body)
			}
			if e.Headers.Get("X-Custom") != "kept" || e.Headers.Get("Authorization") != "" ||
				e.Headers.Get("X-Ms-Session-Identifier") != "user-1" || e.Headers.Get("X-Forwarded-Proto") != "http" {
				t.Errorf("the container got headers %v", e.Headers)
			}
			for _, kv := range []string{"VERSION=1", "PORT=8080", "MODE=test", "TOKEN=s3cret", "PATH=/"} {
				if !hasEnv(e.Env, kv) {
					t.Errorf("the container's environment %q lacks %s", e.Env, kv)
				}
			}
			if e.UID != 0 || e.Cwd != "/srv" {
				t.Errorf("the container runs as uid %d in %s, want the image's root in /srv", e.UID, e.Cwd)
			}
			// The same identifier reaches the same container, on the short mount too.
			if e2 := get(t, base+"/pools/web?identifier=user-1"); e2.Instance != e.Instance || e2.Path != "/" {
				t.Errorf("second request: instance %s path %s, want %s /", e2.Instance, e2.Path, e.Instance)
			}
			if e3 := get(t, base+"/pools/web/x?identifier=user-2"); e3.Instance == e.Instance {
				t.Error("two identifiers share a container")
			}
		})
	}
}

// TestCustomContainerStreams: server-sent events arrive as they are written, a WebSocket
// echoes, a 200 MB upload streams through, and the console output of the session is kept,
// bounded.
func TestCustomContainerStreams(t *testing.T) {
	w := newWorld(t, "runc", imagetest.RegistryOptions{})
	cp, base := w.start(w.spec("web", w.push("team/web:v1", "1"), nil))
	p := getPool(t, cp, "web")
	web := base + "/pools/web"

	// Server-sent events, 400 ms apart: the first must arrive long before the last.
	resp, err := http.Get(web + "/sse?n=3&ms=400&identifier=sse-user")
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != "text/event-stream" {
		t.Fatalf("GET /sse: %s %s", resp.Status, ct)
	}
	var arrivals []time.Time
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "data: ") {
			arrivals = append(arrivals, time.Now())
		}
	}
	resp.Body.Close()
	if len(arrivals) != 3 {
		t.Fatalf("%d events, want 3", len(arrivals))
	}
	if gap := arrivals[2].Sub(arrivals[0]); gap < 400*time.Millisecond {
		t.Errorf("the events arrived within %v: buffered, not streamed", gap)
	}

	// A WebSocket echo, text and binary.
	ctx, cancel := context.WithTimeout(context.Background(), sandboxtest.Timeout(time.Minute))
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(web, "http")+"/ws?identifier=ws-user", nil)
	if err != nil {
		t.Fatalf("WebSocket: %v", err)
	}
	c.SetReadLimit(1 << 20)
	for _, m := range []struct {
		typ  websocket.MessageType
		data []byte
	}{{websocket.MessageText, []byte("hello")}, {websocket.MessageBinary, make([]byte, 100<<10)}} {
		if err := c.Write(ctx, m.typ, m.data); err != nil {
			t.Fatal(err)
		}
		typ, got, err := c.Read(ctx)
		if err != nil || typ != m.typ || string(got) != string(m.data) {
			t.Errorf("echo of a %v message of %d bytes: %v, %d bytes, %v", m.typ, len(m.data), typ, len(got), err)
		}
	}
	if err := c.Close(websocket.StatusNormalClosure, ""); err != nil {
		t.Errorf("closing the WebSocket: %v", err)
	}

	// 200 MB streamed up, never held whole: the container hashes what it received.
	const size = 200 << 20
	h := sha256.New()
	body := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{1}), size), h)
	start := time.Now()
	status, b := send(t, "POST", web+"/upload?identifier=upload-user", body, nil)
	var up struct {
		Size   int64
		SHA256 string
	}
	if err := json.Unmarshal(b, &up); status != 200 || err != nil {
		t.Fatalf("upload: %d %s", status, b)
	}
	if up.Size != size || up.SHA256 != hex.EncodeToString(h.Sum(nil)) {
		t.Errorf("the container received %d bytes with sha256 %s; %d were sent", up.Size, up.SHA256, size)
	}
	t.Logf("200 MB upload through the proxy: %v", time.Since(start))

	// Console output: kept per session, the last agentapi.LogBufferSize bytes.
	get(t, web+"/hello?identifier=log-user")
	if status, b := send(t, "GET", web+"/log?bytes=3000000&identifier=log-user", nil, nil); status != 200 {
		t.Fatalf("GET /log: %d %s", status, b)
	}
	var logs []byte
	waitFor(t, "the console output", 10*time.Second, func() bool {
		logs, err = p.ConsoleLogs(ctx, "log-user", 0)
		return err == nil && strings.HasSuffix(string(logs), "log-end 3000000\n")
	})
	if len(logs) != agentapi.LogBufferSize {
		t.Errorf("%d bytes of console output kept, want the last %d", len(logs), agentapi.LogBufferSize)
	}
	if tail, err := p.ConsoleLogs(ctx, "log-user", 16); err != nil || string(tail) != "log-end 3000000\n" {
		t.Errorf("ConsoleLogs(tail 16) = %q, %v", tail, err)
	}
	other, err := p.ConsoleLogs(ctx, "upload-user", 0)
	if err != nil || strings.Contains(string(other), "log-end") {
		t.Errorf("another session's console: %d bytes, %v; want its own", len(other), err)
	}
	if _, err := p.ConsoleLogs(ctx, "nobody-here", 0); !errkind.Is(err, errkind.NotFound) {
		t.Errorf("ConsoleLogs of an unknown identifier: %v", err)
	}
}

// sessionGone reports whether identifier has no session in the pool (.management).
func sessionGone(t *testing.T, poolURL, identifier string) bool {
	status, _ := send(t, "POST", poolURL+"/.management/getSession?api-version=2025-02-02-preview&identifier="+identifier, nil, nil)
	return status == 400
}

// TestCustomContainerLifecycle: a container that exits ends its session under both
// lifecycle types, and under Timed the identifier's next request gets a fresh container; a
// failed liveness probe ends a session too.
func TestCustomContainerLifecycle(t *testing.T) {
	w := newWorld(t, "runc", imagetest.RegistryOptions{})
	ref := w.push("team/web:v1", "1")
	cp, base := w.start(
		w.spec("timed", ref, func(s *pool.Spec) {
			s.Container.Probes = []probe.Probe{
				{Type: probe.Startup, HTTPGet: &probe.HTTPGet{Path: "/health", Port: 8080}, PeriodSeconds: 1, FailureThreshold: 10},
				{Type: probe.Liveness, HTTPGet: &probe.HTTPGet{Path: "/health", Port: 8080}, PeriodSeconds: 1, FailureThreshold: 2},
			}
		}),
		w.spec("on-exit", ref, func(s *pool.Spec) {
			s.LifecycleType, s.CooldownPeriod, s.MaxAlivePeriod = pool.LifecycleOnContainerExit, 0, time.Hour
		}))
	getPool(t, cp, "timed")
	getPool(t, cp, "on-exit")
	timed, onExit := base+"/pools/timed", base+"/pools/on-exit"

	// Timed: exit 3; the next request (after at most a 503 saying so) gets a new container.
	first := get(t, timed+"/?identifier=exit-user")
	if status, b := send(t, "GET", timed+"/exit?code=3&identifier=exit-user", nil, nil); status != 200 {
		t.Fatalf("GET /exit: %d %s", status, b)
	}
	var next echo
	waitFor(t, "a new container for the identifier", 30*time.Second, func() bool {
		status, b := send(t, "GET", timed+"/?identifier=exit-user", nil, nil)
		if status == 503 && !strings.Contains(string(b), "exited with code 3") && !strings.Contains(string(b), "cannot be reached") {
			t.Errorf("while the container exits: %d %s", status, b)
		}
		return status == 200 && json.Unmarshal(b, &next) == nil && next.Instance != first.Instance
	})

	// Liveness: /health starts failing; the session ends without any request.
	get(t, timed+"/?identifier=sick-user")
	send(t, "GET", timed+"/sick?identifier=sick-user", nil, nil)
	waitFor(t, "the liveness probe to end the session", 30*time.Second, func() bool { return sessionGone(t, timed, "sick-user") })

	// OnContainerExit: the session ends when the container exits, with no request after.
	get(t, onExit+"/?identifier=once-user")
	send(t, "GET", onExit+"/exit?code=0&identifier=once-user", nil, nil)
	waitFor(t, "the session to end with its container", 30*time.Second, func() bool { return sessionGone(t, onExit, "once-user") })
	p, _ := cp.Get("on-exit")
	if c := p.Counts(); c.Allocated != 0 {
		t.Errorf("counts %+v after the only session's container exited", c)
	}
}

// TestCustomContainerStartupProbe: a container that never passes its startup probe never
// joins the ready queue, and the pool's last error says why; so does one that exits.
func TestCustomContainerStartupProbe(t *testing.T) {
	w := newWorld(t, "runc", imagetest.RegistryOptions{})
	ref := w.push("team/web:v1", "1")
	cp, _ := w.start(
		w.spec("deaf", ref, func(s *pool.Spec) {
			// Listens on 9090, probed on 8080.
			s.Container.Env = []pool.EnvVar{{Name: "PORT", Value: "9090"}}
			s.Container.Probes = []probe.Probe{{Type: probe.Startup, TCPSocket: &probe.TCPSocket{Port: 8080}, PeriodSeconds: 1, FailureThreshold: 2}}
		}),
		w.spec("crashing", ref, func(s *pool.Spec) { s.Container.Command = []string{"/no/such/server"} }))
	for name, want := range map[string]string{"deaf": "Startup probe failed 2 times in a row", "crashing": "exited with code 127"} {
		p := getPool(t, cp, name)
		waitFor(t, name+"'s create to fail", 30*time.Second, func() bool { return p.LastError() != nil })
		if err := p.LastError(); !strings.Contains(err.Error(), want) {
			t.Errorf("%s: last error %v, want it to say %q", name, err, want)
		}
		if c := p.Counts(); c.Ready != 0 || c.CreateFailures == 0 {
			t.Errorf("%s: counts %+v, want nothing ready and failures counted", name, c)
		}
	}
	p, _ := cp.Get("crashing")
	if err := p.LastError(); !strings.Contains(err.Error(), "/no/such/server") {
		t.Errorf("the crashing container's error quotes no output: %v", err)
	}
}

// TestCustomContainerRegistryAuth: a registry that wants credentials serves a pool that has
// them; a pool without them is Failed, says why to every request, and does not stop the
// others.
func TestCustomContainerRegistryAuth(t *testing.T) {
	w := newWorld(t, "runc", imagetest.RegistryOptions{Username: "puller", Password: "hunter2"})
	ref := w.push("private/web:v1", "1")
	creds := func(s *pool.Spec) {
		s.Container.Registry = &pool.RegistryCredentials{Server: w.reg.Host, Username: "puller", PasswordSecretRef: "pw"}
		s.Container.Secrets = map[string]string{"pw": "hunter2"}
	}
	cp, base := w.start(w.spec("with-creds", ref, creds), w.spec("without", ref, func(s *pool.Spec) { s.ReadySessionInstances = 0 }))
	getPool(t, cp, "with-creds")
	if e := get(t, base+"/pools/with-creds/?identifier=auth-user"); !hasEnv(e.Env, "VERSION=1") {
		t.Errorf("the private image's container: %+v", e)
	}
	p, _ := cp.Get("without")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := p.WaitProvisioned(ctx)
	if state, perr := p.Provisioning(); state != controlplane.ProvisioningFailed || perr == nil || !strings.Contains(err.Error(), "requires credentials") {
		t.Fatalf("pool without credentials: %s, %v", state, err)
	}
	status, b := send(t, "GET", base+"/pools/without/?identifier=auth-user", nil, nil)
	var env struct {
		Error struct{ Code, Message string }
	}
	json.Unmarshal(b, &env)
	if status != 503 || !strings.Contains(env.Error.Message, "requires credentials") || !strings.Contains(env.Error.Message, "without") {
		t.Errorf("a request to the failed pool: %d %s", status, b)
	}
	if status, _ := send(t, "POST", base+"/pools/without/.management/listSessions?api-version=2025-02-02-preview", nil, nil); status != 200 {
		t.Errorf("listSessions of the failed pool: %d", status)
	}
}

// TestCustomContainerTagMoved: a pool pulls its image once, when created: a tag moved
// afterwards changes nothing for it, and a pool created again gets the new image.
func TestCustomContainerTagMoved(t *testing.T) {
	w := newWorld(t, "runc", imagetest.RegistryOptions{})
	ref := w.push("team/web:stable", "1")
	spec := w.spec("moving", ref, func(s *pool.Spec) { s.ReadySessionInstances = 0 })
	cp, base := w.start(spec)
	getPool(t, cp, "moving")
	if e := get(t, base+"/pools/moving/?identifier=before-move"); !hasEnv(e.Env, "VERSION=1") {
		t.Fatalf("first image: %q", e.Env)
	}
	w.push("team/web:stable", "2")
	if e := get(t, base+"/pools/moving/?identifier=after-move"); !hasEnv(e.Env, "VERSION=1") {
		t.Errorf("a new session after the tag moved runs %q, want the image the pool pulled", e.Env)
	}
	if err := cp.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	cp2, base2 := w.start(spec)
	getPool(t, cp2, "moving")
	if e := get(t, base2+"/pools/moving/?identifier=recreated"); !hasEnv(e.Env, "VERSION=2") {
		t.Errorf("the pool created again runs %q, want the moved tag's image", e.Env)
	}
}
