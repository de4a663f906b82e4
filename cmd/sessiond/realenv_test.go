package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/controlplane"
	"github.com/sessiond/sessiond/internal/image"
	"github.com/sessiond/sessiond/internal/pool"
	"github.com/sessiond/sessiond/internal/sandbox"
	"github.com/sessiond/sessiond/internal/sandbox/sandboxtest"
)

// realEnv is what the tests of real sandboxes in this package share: the test image (from
// the store make test builds it in), a freshly built agent in $SESSIOND_AGENT, and a data
// directory of the test's own that shares that image store. They skip, or fail under
// SESSIOND_TEST_REQUIRE=1, when something is missing, as TestServeEndToEnd does.
type realEnv struct {
	img image.Image
	g   *globals
}

// newRealEnv prepares a realEnv. The data directory is short (sandbox socket paths live
// below it) and traversable by sandboxes' mapped users, and removed when t ends.
func newRealEnv(t *testing.T) *realEnv {
	t.Helper()
	if testing.Short() {
		t.Skip("starts real sandboxes")
	}
	img := sandboxtest.TestImage(t)
	agentDir, err := os.MkdirTemp("", "sessiond-agent-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(agentDir) })
	agent, err := sandboxtest.BuildAgent(agentDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("SESSIOND_AGENT", agent)
	data, err := os.MkdirTemp("/tmp", "sdh-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(data, 0o711)
	t.Cleanup(func() { os.RemoveAll(data) })
	storeDir := filepath.Dir(filepath.Dir(img.RootFS)) // <store>/rootfs/<id>
	if err := os.Symlink(storeDir, filepath.Join(data, "images")); err != nil {
		t.Fatal(err)
	}
	g := &globals{DataDir: data, Stdout: io.Discard, Stderr: io.Discard, Log: slog.New(slog.DiscardHandler)}
	if os.Getenv("SESSIOND_TEST_LOG") == "1" { // every request and pool event, to debug a failure

		g.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return &realEnv{img: img, g: g}
}

// runtime returns the runtime called name, skipping (or failing, when required) if it
// cannot run here.
func (e *realEnv) runtime(t *testing.T, name string) sandbox.Runtime {
	t.Helper()
	rt, err := openRuntime(e.g, name)
	if err != nil || !rt.Capabilities().Available {
		sandboxtest.SkipOrFail(t, "%s unavailable: %v", name, err)
	}
	return rt
}

// startPools starts the pools of specs as serve does (without a store) and closes them
// when t ends, checking that no sandbox is left behind.
func (e *realEnv) startPools(t *testing.T, specs []pool.Spec) *controlplane.ControlPlane {
	t.Helper()
	cp, err := newControlPlane(context.Background(), e.g, specs, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := cp.Close(ctx); err != nil {
			t.Errorf("closing the pools: %v", err)
		}
	})
	return cp
}
