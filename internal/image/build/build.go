// Package build builds sessiond's stock images: Debian 12 (bookworm) root filesystems made
// with mmdebstrap from a named recipe and streamed straight into an image.Store. It needs
// mmdebstrap on the host, root (or working user namespaces for mmdebstrap's unshare mode)
// and the Debian mirrors; it does not build from Dockerfiles or pull from registries.
//
// Only cmd/sessiond and tests import build.
package build

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/image"
)

// Debian sources every recipe installs from.
const (
	suite          = "bookworm"
	mirror         = "http://deb.debian.org/debian"
	securityMirror = "http://deb.debian.org/debian-security"
)

// Build builds the recipe called name with mmdebstrap and imports the result into store
// under the recipe's name, recording the installed packages in Config.Packages. mmdebstrap's
// progress goes to log (nil discards it). The tarball is never written to disk: it streams
// into store.Import, and nothing is imported unless mmdebstrap succeeds.
//
// Errors: NotFound for an unknown recipe, Unavailable if mmdebstrap is not installed.
// Cancelling ctx stops mmdebstrap (SIGTERM, so it can unmount and clean up).
func Build(ctx context.Context, store *image.Store, name string, log io.Writer) (image.Image, error) {
	r, ok := lookup(name)
	if !ok {
		return image.Image{}, errkind.New(errkind.NotFound, "no image recipe %q (known: %s)", name, strings.Join(recipeNames(), ", "))
	}
	bin, err := exec.LookPath("mmdebstrap")
	if err != nil {
		return image.Image{}, errkind.Wrap(errkind.Unavailable, fmt.Errorf("building %s: mmdebstrap is not installed (scripts/install-deps.sh installs it): %w", name, err))
	}
	return build(ctx, store, r, bin, log)
}

// stopGrace is how long mmdebstrap gets after SIGTERM to unmount /proc and /sys from its
// chroot and delete it before it is killed.
const stopGrace = 30 * time.Second

func build(ctx context.Context, store *image.Store, r Recipe, bin string, log io.Writer) (image.Image, error) {
	if log == nil {
		log = io.Discard
	}
	// mmdebstrap's stderr is copied by an exec goroutine while build writes its own lines.
	log = &lockedWriter{w: log}
	work, err := os.MkdirTemp("", "sessiond-build-")
	if err != nil {
		return image.Image{}, fmt.Errorf("building %s: %w", r.Name, err)
	}
	defer os.RemoveAll(work)
	pkgFile := filepath.Join(work, "packages")
	var stubs []string
	for _, name := range r.Stubs {
		deb, err := stubPackage(ctx, work, name)
		if err != nil {
			return image.Image{}, fmt.Errorf("building %s: %w", r.Name, err)
		}
		stubs = append(stubs, deb)
	}
	args := r.args(pkgFile, stubs)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = stopGrace
	tail := &tailBuffer{max: 4 << 10}
	cmd.Stderr = io.MultiWriter(log, tail)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return image.Image{}, fmt.Errorf("building %s: %w", r.Name, err)
	}
	fmt.Fprintf(log, "build: %s %s\n", bin, strings.Join(quoteAll(args), " "))
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return image.Image{}, fmt.Errorf("building %s: starting mmdebstrap: %w", r.Name, err)
	}
	proc := &process{cmd: cmd, tail: tail}
	// On every path mmdebstrap is stopped (a no-op once it exited) and reaped.
	defer func() {
		cancel()
		proc.wait()
	}()

	// mmdebstrap packs the tarball only after all customize hooks ran, so once its first
	// byte arrives the package list is complete.
	out := bufio.NewReaderSize(stdout, 1<<20)
	if _, err := out.Peek(1); err != nil {
		werr := proc.wait()
		switch {
		case ctx.Err() != nil:
			return image.Image{}, fmt.Errorf("building %s: %w", r.Name, ctx.Err())
		case werr != nil:
			return image.Image{}, fmt.Errorf("building %s: %w", r.Name, werr)
		}
		return image.Image{}, fmt.Errorf("building %s: mmdebstrap wrote no tarball: %w", r.Name, err)
	}
	pkgs, err := readPackages(pkgFile)
	if err != nil {
		return image.Image{}, fmt.Errorf("building %s: %w", r.Name, err)
	}
	fmt.Fprintf(log, "build: %d packages installed after %s, importing\n", len(pkgs), time.Since(start).Round(time.Second))
	cfg := r.Config
	cfg.Packages = pkgs
	im, err := store.Import(ctx, r.Name, &exitReader{r: out, proc: proc}, cfg)
	if err != nil {
		return image.Image{}, fmt.Errorf("building %s: %w", r.Name, err)
	}
	fmt.Fprintf(log, "build: %s is %s, %d bytes, built in %s\n", r.Name, im.ID, im.Size, time.Since(start).Round(time.Second))
	return im, nil
}

// stubPackage writes an empty Debian package, sessiond-stub-<name>, that provides name,
// into dir and returns its path. dpkg-deb is on every host that has mmdebstrap.
func stubPackage(ctx context.Context, dir, name string) (string, error) {
	pkg := "sessiond-stub-" + name
	root := filepath.Join(dir, pkg)
	if err := os.MkdirAll(filepath.Join(root, "DEBIAN"), 0o755); err != nil {
		return "", fmt.Errorf("making stub for %s: %w", name, err)
	}
	control := "Package: " + pkg + "\n" +
		"Version: 1.0\n" +
		"Architecture: all\n" +
		"Maintainer: sessiond <sessiond@localhost>\n" +
		"Provides: " + name + "\n" +
		"Description: empty stand-in for " + name + "\n" +
		" Satisfies dependencies on " + name + " in sessiond images, where it is never used.\n"
	if err := os.WriteFile(filepath.Join(root, "DEBIAN", "control"), []byte(control), 0o644); err != nil {
		return "", fmt.Errorf("making stub for %s: %w", name, err)
	}
	deb := filepath.Join(dir, pkg+".deb")
	out, err := exec.CommandContext(ctx, "dpkg-deb", "--root-owner-group", "--build", root, deb).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("making stub for %s: dpkg-deb: %w: %s", name, err, bytes.TrimSpace(out))
	}
	return deb, nil
}

// process waits for mmdebstrap once, from whichever path needs its outcome first.
type process struct {
	cmd  *exec.Cmd
	tail *tailBuffer
	once sync.Once
	err  error
}

func (p *process) wait() error {
	p.once.Do(func() {
		if err := p.cmd.Wait(); err != nil {
			p.err = fmt.Errorf("mmdebstrap: %w; last output:\n%s", err, p.tail.String())
		}
	})
	return p.err
}

// exitReader passes mmdebstrap's stdout through and, at its end, reports mmdebstrap's exit
// status instead of io.EOF when it failed. Import reads to EOF before it commits, so a
// failed build is never imported even if its tarball looked complete.
type exitReader struct {
	r    io.Reader
	proc *process
}

func (e *exitReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if errors.Is(err, io.EOF) {
		if werr := e.proc.wait(); werr != nil {
			return n, werr
		}
	}
	return n, err
}

// readPackages parses the "name\tversion" lines dpkg-query wrote.
func readPackages(path string) ([]image.Package, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the installed package list: %w", err)
	}
	var pkgs []image.Package
	for line := range strings.Lines(string(b)) {
		line = strings.TrimRight(line, "\n")
		if line == "" {
			continue
		}
		name, version, ok := strings.Cut(line, "\t")
		if !ok || name == "" || version == "" {
			return nil, fmt.Errorf("reading the installed package list: malformed line %q", line)
		}
		pkgs = append(pkgs, image.Package{Name: name, Version: version})
	}
	if len(pkgs) == 0 {
		return nil, errors.New("reading the installed package list: it is empty")
	}
	return pkgs, nil
}

// lockedWriter serializes writes to w.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer // guarded by mu
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte // guarded by mu
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if over := len(t.b) - t.max; over > 0 {
		t.b = t.b[over:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(bytes.TrimSpace(t.b))
}

// quote returns s quoted for sh when it needs to be.
func quote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_=/.,:+@") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func quoteAll(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = quote(a)
	}
	return out
}
