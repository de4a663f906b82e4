package image

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestPythonPackages(t *testing.T) {
	root := t.TempDir()
	site := filepath.Join(root, "usr/lib/python3/dist-packages")
	write := func(rel, content string) {
		p := filepath.Join(site, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("numpy-1.24.2.dist-info/METADATA", "Metadata-Version: 2.1\nName: numpy\nVersion: 1.24.2\n\nName: not-this\n")
	write("six-1.16.0.egg-info", "Name: six\nVersion: 1.16.0\n")
	write("Pillow-9.4.0.egg-info/PKG-INFO", "Name: Pillow\nVersion: 9.4.0\n")
	write("broken.dist-info/METADATA", "Name: broken\n")
	write("numpy-dup.dist-info/METADATA", "Name: NumPy\nVersion: 0\n")
	os.MkdirAll(filepath.Join(site, "link.dist-info"), 0o755)
	os.Symlink("/etc/passwd", filepath.Join(site, "link.dist-info", "METADATA"))
	got := PythonPackages(root)
	want := []Package{{"numpy", "1.24.2"}, {"Pillow", "9.4.0"}, {"six", "1.16.0"}}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("PythonPackages (-want +got):\n%s", d)
	}
}
