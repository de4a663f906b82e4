// Package controlplanetest runs a real control plane for tests of the layers above it
// (the management API, the Go client, the CLI): real pool managers, a real bbolt store
// and a real image store, over sandboxtest.Fake sandboxes (real sessiond-agent processes
// on the host, without isolation). Shell pools work anywhere; PythonLTS pools need a
// python3 with ipykernel on the host.
package controlplanetest

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sessiond/sessiond/internal/controlplane"
	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/events"
	"github.com/sessiond/sessiond/internal/image"
	"github.com/sessiond/sessiond/internal/image/imagetest"
	"github.com/sessiond/sessiond/internal/pool"
	"github.com/sessiond/sessiond/internal/sandbox"
	"github.com/sessiond/sessiond/internal/sandbox/sandboxtest"
	"github.com/sessiond/sessiond/internal/store"
)

// Images are the images every Env's image store holds: tiny trees the Fake runtime
// records (sandbox.Info.Image) but does not use.
var Images = []string{"img-a", "img-b"}

// Env is a control plane over Fake sandboxes with a store, in a data directory of its
// own. Close (registered as a test cleanup) closes it and checks that no sandbox is left.
type Env struct {
	CP      *controlplane.ControlPlane
	Runtime *sandboxtest.Fake
	Images  *image.Store
	Store   *store.Bolt
	// Specs are the pools of the "configuration file", started by New and Restart.
	Specs []pool.Spec

	dir string

	mu sync.Mutex
	// poolEvents are what the control plane told Config.PoolEvent. Guarded by mu.
	poolEvents []string
}

// PoolEvents returns what the control plane told Config.PoolEvent so far, one
// "POOL KIND" (or "POOL forget") per call.
func (e *Env) PoolEvents() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.poolEvents)
}

var agent struct {
	once sync.Once
	dir  string
	bin  string
	err  error
}

// AgentBinary builds sessiond-agent once per test binary. The caller's TestMain removes
// AgentDir when the tests end.
func AgentBinary(t testing.TB) string {
	t.Helper()
	agent.once.Do(func() {
		if agent.dir, agent.err = os.MkdirTemp("", "cpt-agent-"); agent.err == nil {
			agent.bin, agent.err = sandboxtest.BuildAgent(agent.dir)
		}
	})
	if agent.err != nil {
		t.Fatalf("building the agent: %v", agent.err)
	}
	return agent.bin
}

// AgentDir is the directory AgentBinary built into ("" if none).
func AgentDir() string { return agent.dir }

// VerifyTestMain runs a package's tests, fails them if goroutines outlive them (kept-alive
// HTTP connections aside), and removes AgentDir.
func VerifyTestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.Cleanup(func(int) {
			if d := AgentDir(); d != "" {
				os.RemoveAll(d)
			}
		}))
}

// New starts a control plane with specs as its configuration file's pools. Specs
// without an image get Images[0]; without a runtime, the Fake's name is not needed (the
// runtime opener answers the Fake for "" and "fake", and fails for anything else).
func New(t testing.TB, specs ...pool.Spec) *Env {
	t.Helper()
	if testing.Short() {
		t.Skip("starts real agents")
	}
	// Short: sandbox socket paths live below it.
	dir, err := os.MkdirTemp("/tmp", "cpt-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755) // the agent runs user commands as an unprivileged user
	e := &Env{dir: dir, Specs: specs,
		Runtime: &sandboxtest.Fake{AgentBinary: AgentBinary(t), StateDir: filepath.Join(dir, "sandboxes")}}
	t.Cleanup(func() { e.Close(t) })
	if e.Images, err = image.Open(filepath.Join(dir, "images")); err != nil {
		t.Fatal(err)
	}
	for _, name := range Images {
		tar := imagetest.Tar(t, imagetest.File{Name: "etc/", Type: '5'}, imagetest.File{Name: "etc/image", Body: []byte(name)})
		if _, err := e.Images.Import(context.Background(), name, bytes.NewReader(tar), image.Config{Env: []string{"IMAGE=" + name}}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range e.Specs {
		if e.Specs[i].Image == "" {
			e.Specs[i].Image = Images[0]
		}
	}
	e.open(t)
	return e
}

func (e *Env) open(t testing.TB) {
	t.Helper()
	var err error
	if e.Store, err = store.OpenBolt(filepath.Join(e.dir, store.FileName), store.Options{}); err != nil {
		t.Fatal(err)
	}
	e.CP, err = controlplane.New(context.Background(), controlplane.Config{
		OpenRuntime: func(name string) (sandbox.Runtime, error) {
			if name != "" && name != e.Runtime.Name() {
				return nil, errkind.New(errkind.Unavailable, "runtime %q is not available here", name)
			}
			return e.Runtime, nil
		},
		Images: e.Images, Store: e.Store, RefillDelay: -1,
		PoolEvent: func(pool string, kind events.Kind, _ string, forget bool) {
			e.mu.Lock()
			defer e.mu.Unlock()
			if forget {
				e.poolEvents = append(e.poolEvents, pool+" forget")
			} else {
				e.poolEvents = append(e.poolEvents, pool+" "+string(kind))
			}
		},
	}, e.Specs)
	if err != nil {
		t.Fatal(err)
	}
}

// Restart stops the control plane as a shutdown does (allocated sessions keep running),
// closes the store, and starts both again: the next process.
func (e *Env) Restart(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := e.CP.Detach(ctx); err != nil {
		t.Fatalf("Detach: %v", err)
	}
	if err := e.Store.Close(); err != nil {
		t.Fatal(err)
	}
	e.open(t)
}

// Close closes the control plane and the store, checks that no sandbox is left, and
// removes the data directory. It is idempotent.
func (e *Env) Close(t testing.TB) {
	if e.dir == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if e.CP != nil {
		if err := e.CP.Close(ctx); err != nil {
			t.Errorf("closing the control plane: %v", err)
		}
		if infos, _ := e.Runtime.List(ctx); len(infos) > 0 {
			t.Errorf("sandboxes left after Close: %+v", infos)
			for _, i := range infos {
				e.Runtime.Destroy(ctx, i.ID)
			}
		}
	}
	if e.Store != nil {
		e.Store.Close()
	}
	os.RemoveAll(e.dir)
	e.dir = ""
}

// WaitFor polls cond until it holds, failing the test after a minute (scaled for slow
// machines).
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(sandboxtest.Timeout(time.Minute))
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// WaitReady waits until pool name has n ready sandboxes of its current template and no
// other sandbox starting or being destroyed.
func (e *Env) WaitReady(t testing.TB, name string, n int) {
	t.Helper()
	WaitFor(t, "pool "+name+" to be ready", func() bool {
		p, ok := e.CP.Get(name)
		if !ok {
			return false
		}
		c := p.Counts()
		return c.Ready == n && c.Pending == 0 && c.Outdated == 0 && c.Deleting == 0
	})
}
