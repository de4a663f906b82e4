package main

import (
	"bytes"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// allowed are the module's own packages the agent may link. Everything else must be the
// standard library, golang.org/x/sys, or the pure-Go ZeroMQ stack the Jupyter client
// uses (allowedModules): the agent runs in every sandbox, as root, and stays small,
// static and auditable.
var allowed = map[string]bool{
	"github.com/sessiond/sessiond/cmd/sessiond-agent": true,
	"github.com/sessiond/sessiond/internal/agent":     true,
	"github.com/sessiond/sessiond/internal/agentapi":  true,
	"github.com/sessiond/sessiond/internal/errkind":   true,
	"github.com/sessiond/sessiond/internal/jupyter":   true,
	"github.com/sessiond/sessiond/internal/loopback":  true,
}

// allowedModules are third-party module paths whose packages the agent may link:
// github.com/go-zeromq/zmq4 (pure Go ZeroMQ, for the Jupyter kernel protocol) and what
// it imports.
var allowedModules = []string{
	"github.com/go-zeromq/zmq4",
	"golang.org/x/sync",
	"golang.org/x/text",
}

func allowedModule(pkg string) bool {
	for _, m := range allowedModules {
		if pkg == m || strings.HasPrefix(pkg, m+"/") {
			return true
		}
	}
	return false
}

func goTool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go command: %v", err)
	}
	return p
}

// TestDeps walks the agent's import graph as the release build sees it (CGO_ENABLED=0).
func TestDeps(t *testing.T) {
	cmd := exec.Command(goTool(t), "list", "-deps", "-f", "{{.ImportPath}} {{.Standard}} {{len .CgoFiles}}", ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.Bytes())
	}
	n := 0
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) != 3 {
			t.Fatalf("unexpected go list line %q", line)
		}
		pkg, std, cgo := f[0], f[1] == "true", f[2] != "0"
		n++
		switch {
		case pkg == "runtime/cgo" || pkg == "C" || cgo:
			t.Errorf("the agent links cgo through %s", pkg)
		case std, allowed[pkg]:
		case pkg == "golang.org/x/sys" || strings.HasPrefix(pkg, "golang.org/x/sys/"):
		case allowedModule(pkg):
		default:
			t.Errorf("the agent imports %s, which is neither the standard library, golang.org/x/sys, an allowed module, nor an allowed sessiond package", pkg)
		}
	}
	if n < 10 {
		t.Errorf("go list reported only %d packages: is the pattern right?", n)
	}
}

// TestStatic builds the agent as released and checks that it needs no dynamic loader or
// shared library, so it runs in any image.
func TestStatic(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a binary")
	}
	bin := filepath.Join(t.TempDir(), "sessiond-agent")
	cmd := exec.Command(goTool(t), "build", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("the agent binary has a %v program header: it is not static", p.Type)
		}
	}
	if libs, err := f.ImportedLibraries(); err == nil && len(libs) > 0 {
		t.Errorf("the agent binary needs shared libraries %v", libs)
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	if err := run([]string{"-no-such-flag"}); err == nil {
		t.Error("run accepted an unknown flag")
	}
	if err := run([]string{"-cpus", "-1"}); err == nil || !strings.Contains(err.Error(), "-cpus") {
		t.Errorf("run -cpus -1: %v, want an error naming -cpus", err)
	}
}
