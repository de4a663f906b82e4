// Package sandboxtest is the behavioural specification of sandbox.Runtime: Run executes
// the conformance suite (lifecycle, idempotent destroy, adoption after a restart, limits,
// and the containment battery) against a runtime. Every runtime must pass it: oci with runc
// and with runsc, and later ones. Only tests import this package.
package sandboxtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/sandbox"
)

// Config describes the runtime under test.
type Config struct {
	// New returns a runtime; calling it again must return a fresh instance over the same
	// state (as a restarted control plane would build it).
	New func(t *testing.T) sandbox.Runtime
	// RootFS is an image root filesystem with /bin/sh, coreutils and python3.
	RootFS string
	// Image is the name recorded for RootFS.
	Image string
	// Containment runs the limits and containment battery (real isolation only).
	Containment bool
	// NoLayout: the runtime does not provide the sandbox layout (the agent as PID 1, the
	// data directory at /mnt/data, HOME at /home/user); checks of it are skipped (Fake).
	NoLayout bool
	// HostPaths are host directories whose contents must stay invisible to sandboxes
	// (e.g. the control plane's data directory); the suite plants marker files in them.
	HostPaths []string
}

// Run runs the conformance suite.
func Run(t *testing.T, cfg Config) {
	s := &suite{cfg: cfg, rt: cfg.New(t)}
	t.Run("Lifecycle", s.testLifecycle)
	t.Run("DestroyIdempotent", s.testDestroyIdempotent)
	t.Run("InvalidSpec", s.testInvalidSpec)
	t.Run("DuplicateID", s.testDuplicateID)
	t.Run("AdoptAfterRestart", s.testAdopt)
	if !cfg.NoLayout {
		t.Run("ExecIdentity", s.testExecIdentity)
	}
	t.Run("FilesStayInDataDir", s.testFilesEscape)
	if cfg.Containment {
		t.Run("Containment", s.testContainment)
		t.Run("Limits", s.testLimits)
	}
}

type suite struct {
	cfg Config
	rt  sandbox.Runtime
}

// Timeout scales test deadlines for slow machines (SESSIOND_TEST_TIMEOUT_SCALE).
func Timeout(d time.Duration) time.Duration {
	if s := os.Getenv("SESSIOND_TEST_TIMEOUT_SCALE"); s != "" {
		if f, err := strconv.ParseFloat(s, 64); err == nil && f > 0 {
			return time.Duration(float64(d) * f)
		}
	}
	return d
}

func (s *suite) spec(l sandbox.Limits) sandbox.Spec {
	return sandbox.Spec{Image: s.cfg.Image, RootFS: s.cfg.RootFS, Limits: l,
		Labels: map[string]string{"test": "sandboxtest"}}
}

// create makes a sandbox that is destroyed when the test ends.
func (s *suite) create(t *testing.T, spec sandbox.Spec) sandbox.Info {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout(60*time.Second))
	defer cancel()
	info, err := s.rt.Create(ctx, spec)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() {
		if err := s.rt.Destroy(context.Background(), info.ID); err != nil {
			t.Errorf("Destroy(%s): %v", info.ID, err)
		}
	})
	return info
}

// sh runs a shell command in sandbox id as the unprivileged user.
func (s *suite) sh(t *testing.T, id, cmd string) agentapi.ExecResult {
	t.Helper()
	return s.exec(t, id, agentapi.ExecRequest{Shell: cmd, TimeoutMS: Timeout(60 * time.Second).Milliseconds()})
}

func (s *suite) exec(t *testing.T, id string, req agentapi.ExecRequest) agentapi.ExecResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout(120*time.Second))
	defer cancel()
	res, err := s.rt.Agent(id).Exec(ctx, req)
	if err != nil {
		t.Fatalf("Exec(%q%q): %v", req.Shell, req.Argv, err)
	}
	return res
}

// mustSh runs cmd and fails the test unless it exits 0; it returns trimmed stdout.
func (s *suite) mustSh(t *testing.T, id, cmd string) string {
	t.Helper()
	res := s.sh(t, id, cmd)
	if res.ExitCode != 0 {
		t.Fatalf("%q: exit %d signal %q\nstdout: %s\nstderr: %s", cmd, res.ExitCode, res.Signal, res.Stdout, res.Stderr)
	}
	return strings.TrimSpace(res.Stdout)
}

func marker() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "sessiond-marker-" + hex.EncodeToString(b[:])
}

// hostProcess starts a host process whose command line carries m, for visibility tests.
func hostProcess(t *testing.T, m string) {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", "sleep 600", m)
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting host process: %v", err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
}

// plantHostFile writes a marker file in dir and removes it when the test ends.
func plantHostFile(t *testing.T, dir, m string) string {
	t.Helper()
	p := filepath.Join(dir, m)
	if err := os.WriteFile(p, []byte(m), 0o644); err != nil {
		t.Fatalf("planting host file: %v", err)
	}
	t.Cleanup(func() { os.Remove(p) })
	return p
}
