package oci

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

func TestSeedHome(t *testing.T) {
	img := t.TempDir()
	home := filepath.Join(img, "home", "user")
	mustMkdir(t, filepath.Join(home, ".cache", "matplotlib"))
	mustWrite(t, filepath.Join(home, ".bashrc"), "PS1=x\n", 0o644)
	mustWrite(t, filepath.Join(home, ".cache", "matplotlib", "fontlist.json"), "{}", 0o600)
	mustWrite(t, filepath.Join(img, "secret"), "image root file", 0o644)
	mustWrite(t, filepath.Join(home, "setuid"), "x", 0o755|os.ModeSetuid)
	if err := os.Chmod(filepath.Join(home, "setuid"), 0o755|os.ModeSetuid); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc", filepath.Join(home, "etc-link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../secret", filepath.Join(home, "up")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(home, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	uid, gid := os.Getuid(), os.Getgid()
	if err := seedHome(img, dst, uid, gid); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dst, ".bashrc")); err != nil || string(b) != "PS1=x\n" {
		t.Errorf(".bashrc: %q, %v", b, err)
	}
	if fi, err := os.Stat(filepath.Join(dst, ".cache", "matplotlib", "fontlist.json")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("nested file: %v, %v", fi, err)
	}
	if fi, err := os.Stat(filepath.Join(dst, "setuid")); err != nil || fi.Mode()&os.ModeSetuid != 0 || fi.Mode().Perm() != 0o755 {
		t.Errorf("setuid file copied as %v, %v; want 0755 without setuid", fi.Mode(), err)
	}
	for name, want := range map[string]string{"etc-link": "/etc", "up": "../../secret"} {
		if got, err := os.Readlink(filepath.Join(dst, name)); err != nil || got != want {
			t.Errorf("link %s: %q, %v; want it copied as a link to %q", name, got, err, want)
		}
	}
	if _, err := os.Lstat(filepath.Join(dst, "fifo")); !os.IsNotExist(err) {
		t.Errorf("fifo copied: %v", err)
	}
}

func TestSeedHomeBounds(t *testing.T) {
	t.Run("no home", func(t *testing.T) {
		if err := seedHome(t.TempDir(), t.TempDir(), os.Getuid(), os.Getgid()); err != nil {
			t.Error(err)
		}
	})
	t.Run("home is a link out of the image", func(t *testing.T) {
		img := t.TempDir()
		mustMkdir(t, filepath.Join(img, "home"))
		if err := os.Symlink("/etc", filepath.Join(img, "home", "user")); err != nil {
			t.Fatal(err)
		}
		dst := t.TempDir()
		if err := seedHome(img, dst, os.Getuid(), os.Getgid()); err != nil {
			t.Fatal(err)
		}
		if ents, _ := os.ReadDir(dst); len(ents) != 0 {
			t.Errorf("copied %d entries through a link out of the image", len(ents))
		}
	})
	t.Run("too many entries", func(t *testing.T) {
		img := t.TempDir()
		home := filepath.Join(img, "home", "user")
		mustMkdir(t, home)
		for i := range maxHomeEntries + 1 {
			mustWrite(t, filepath.Join(home, strconv.Itoa(i)), "", 0o644)
		}
		err := seedHome(img, t.TempDir(), os.Getuid(), os.Getgid())
		if err == nil || !strings.Contains(err.Error(), "more than") {
			t.Errorf("seeding %d entries: %v, want a bound error", maxHomeEntries+1, err)
		}
	})
}

func mustMkdir(t *testing.T, p string) {
	t.Helper()
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
}

func mustWrite(t *testing.T, p, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}
