package sandboxtest

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/image"
)

// Required reports whether real-sandbox tests must run rather than skip when something is
// missing (set SESSIOND_TEST_REQUIRE=1, as `make test` and CI do).
func Required() bool { return os.Getenv("SESSIOND_TEST_REQUIRE") == "1" }

// SkipOrFail skips the test, or fails it when real-sandbox tests are required.
func SkipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if Required() {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

// DataDir is the data directory whose image store the tests use (SESSIOND_DATA_DIR, default
// /var/lib/sessiond, where `make test` builds the test image).
func DataDir() string {
	if d := os.Getenv("SESSIOND_DATA_DIR"); d != "" {
		return d
	}
	return "/var/lib/sessiond"
}

// TestImageName is the small image real-sandbox tests run (python3 and ipykernel).
const TestImageName = "python-small"

// TestImage returns the test image from the store in DataDir, skipping (or failing, when
// required) if it has not been built.
// SESSIOND_TEST_ROOTFS, if set, names a root filesystem directory to use instead.
func TestImage(t testing.TB) image.Image {
	t.Helper()
	if dir := os.Getenv("SESSIOND_TEST_ROOTFS"); dir != "" {
		return image.Image{Name: filepath.Base(dir), RootFS: dir}
	}
	store, err := image.Open(filepath.Join(DataDir(), "images"))
	if err != nil {
		SkipOrFail(t, "opening image store: %v", err)
	}
	img, err := store.Get(context.Background(), TestImageName)
	if err != nil {
		SkipOrFail(t, "test image %s not built (run: make test, or sessiond image build %s): %v", TestImageName, TestImageName, err)
	}
	return img
}

// BuildAgent builds a static sessiond-agent into dir, and the kernel preload library
// beside it (as `make build` does), and returns the agent's path. The directory is made
// traversable so that sandboxes with a user namespace can execute the binary.
func BuildAgent(dir string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "sessiond-agent")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/sessiond-agent")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building the agent: %w: %s", err, out)
	}
	if err := BuildKernelPreload(filepath.Join(dir, agentapi.KernelPreloadName)); err != nil {
		return "", err
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		return "", err
	}
	return bin, nil
}

// BuildKernelPreload compiles the kernel preload library (internal/agent/preload) into
// out with the C compiler ($CC, default cc), as the Makefile does.
func BuildKernelPreload(out string) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	cc := cmp.Or(os.Getenv("CC"), "cc")
	cmd := exec.Command(cc, "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-o", out, "internal/agent/preload/kernel_preload.c")
	cmd.Dir = root
	if msg, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building the kernel preload with %s: %w: %s", cc, err, msg)
	}
	return nil
}

// moduleRoot returns the directory of sessiond's go.mod.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("finding the module root: %w", err)
	}
	return filepath.Dir(strings.TrimSpace(string(out))), nil
}

// MainWithAgent is a TestMain for packages whose tests start agents: it builds the agent
// into a temporary directory, sets *bin to its path, runs the tests under goleak (every
// goroutine they start must have ended) and removes the directory; cleanup, if not nil,
// runs after the tests too.
func MainWithAgent(m *testing.M, bin *string, cleanup func()) {
	dir, err := os.MkdirTemp("", "sessiond-test-agent-")
	if err == nil {
		*bin, err = BuildAgent(dir)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	goleak.VerifyTestMain(m, goleak.Cleanup(func(int) {
		os.RemoveAll(dir)
		if cleanup != nil {
			cleanup()
		}
	}))
}
