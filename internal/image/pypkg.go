package image

import (
	"bufio"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// pythonSitePatterns are where Debian and pip put Python distributions in an image.
var pythonSitePatterns = []string{
	"usr/lib/python3/dist-packages",
	"usr/lib/python3*/site-packages",
	"usr/local/lib/python3*/dist-packages",
	"usr/local/lib/python3*/site-packages",
}

// PythonPackages lists the Python distributions installed in the root filesystem rootfs
// (name and version from their *.dist-info/METADATA or *.egg-info), sorted by name. What
// the image holds decides the answer; nothing in it is executed.
func PythonPackages(rootfs string) []Package {
	seen := map[string]bool{}
	var out []Package
	for _, pat := range pythonSitePatterns {
		dirs, _ := filepath.Glob(filepath.Join(rootfs, pat))
		for _, dir := range dirs {
			ents, err := os.ReadDir(dir)
			if err != nil {
				continue
			}
			for _, e := range ents {
				var meta string
				switch {
				case strings.HasSuffix(e.Name(), ".dist-info"):
					meta = filepath.Join(dir, e.Name(), "METADATA")
				case strings.HasSuffix(e.Name(), ".egg-info"):
					meta = filepath.Join(dir, e.Name())
					if e.IsDir() {
						meta = filepath.Join(meta, "PKG-INFO")
					}
				default:
					continue
				}
				p, ok := readPkgInfo(meta)
				if ok && !seen[strings.ToLower(p.Name)] {
					seen[strings.ToLower(p.Name)] = true
					out = append(out, p)
				}
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return strings.ToLower(out[i].Name) < strings.ToLower(out[j].Name) })
	return out
}

// readPkgInfo reads Name and Version from the header of a core-metadata file.
func readPkgInfo(path string) (Package, bool) {
	fi, err := os.Lstat(path)
	if err != nil || !fi.Mode().IsRegular() {
		return Package{}, false
	}
	f, err := os.Open(path)
	if err != nil {
		return Package{}, false
	}
	defer f.Close()
	var p Package
	sc := bufio.NewScanner(io.LimitReader(f, 64<<10))
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			break // end of the header
		}
		if v, ok := strings.CutPrefix(line, "Name: "); ok && p.Name == "" {
			p.Name = strings.TrimSpace(v)
		}
		if v, ok := strings.CutPrefix(line, "Version: "); ok && p.Version == "" {
			p.Version = strings.TrimSpace(v)
		}
	}
	return p, p.Name != "" && p.Version != ""
}
