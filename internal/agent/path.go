package agent

import (
	"strings"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
)

// maxPathLen bounds a file path in a request (the kernel's PATH_MAX).
const maxPathLen = 4096

// cleanPath turns a files API path into a slash-separated path relative to the data dir,
// "" for the data dir itself. It accepts a relative path, or an absolute one under
// dataDir or agentapi.DataDir (the name user code knows the directory by). It rejects,
// as Invalid, any other absolute path, NUL bytes, and "", "." or ".." components: the
// result is always local and clean, so the only way out of the data dir left is a
// symlink, which the resolver never follows (resolve_linux.go walks the path one
// component at a time and refuses a symlink anywhere in it).
func cleanPath(p, dataDir string) (string, error) {
	if len(p) > maxPathLen {
		return "", errkind.New(errkind.Invalid, "path of %d bytes is longer than %d", len(p), maxPathLen)
	}
	if strings.IndexByte(p, 0) >= 0 {
		return "", errkind.New(errkind.Invalid, "path %q contains a NUL byte", p)
	}
	if strings.HasPrefix(p, "/") {
		rel, ok := trimDir(p, dataDir)
		if !ok {
			rel, ok = trimDir(p, agentapi.DataDir)
		}
		if !ok {
			return "", errkind.New(errkind.Invalid, "path %q is outside %s", p, agentapi.DataDir)
		}
		p = rel
	}
	if p == "" || p == "." {
		return "", nil
	}
	for c := range strings.SplitSeq(p, "/") {
		switch c {
		case "":
			return "", errkind.New(errkind.Invalid, "path %q has an empty component", p)
		case ".", "..":
			return "", errkind.New(errkind.Invalid, "path %q has a %q component", p, c)
		}
	}
	return p, nil
}

// trimDir returns p relative to the absolute directory dir, if p is dir or under it.
func trimDir(p, dir string) (string, bool) {
	if p == dir {
		return "", true
	}
	if rest, ok := strings.CutPrefix(p, dir+"/"); ok {
		return rest, true
	}
	return "", false
}
