package api

import (
	"path"
	"strings"
	"unicode/utf8"

	"github.com/sessiond/sessiond/internal/agentapi"
)

// File names and directories as clients give them (azure-api.md §3.1.3, §3.2.5, §13.12):
// relative to /mnt/data, or absolute under it (Semantic Kernel Python and LlamaIndex send
// /mnt/data/x, LangChain's Bash tool path=/mnt/data). Anything that would leave /mnt/data
// is refused with a 400 here, before a session is touched; the agent checks again.

const (
	maxPathBytes = 4096 // PATH_MAX
	maxNameBytes = 255  // NAME_MAX
)

// dataPath returns p relative to /mnt/data ("" for /mnt/data itself), and whether p was
// absolute. Empty and "." segments are dropped; "..", control characters and invalid
// UTF-8 are refused, as are absolute paths outside /mnt/data.
func dataPath(target, p string) (string, bool, error) {
	if len(p) > maxPathBytes {
		return "", false, errInvalid(target, "The %s is %d bytes long, above the limit of %d.", target, len(p), maxPathBytes)
	}
	if !utf8.ValidString(p) {
		return "", false, errInvalid(target, "The %s is not valid UTF-8.", target)
	}
	for _, c := range p {
		if c < 0x20 || c == 0x7f {
			return "", false, errInvalid(target, "The %s contains the control character %q.", target, c)
		}
	}
	abs := strings.HasPrefix(p, "/")
	if abs {
		rest, ok := strings.CutPrefix(p, agentapi.DataDir)
		if !ok || rest != "" && rest[0] != '/' {
			return "", false, errInvalid(target, "The %s %q is outside %s.", target, p, agentapi.DataDir)
		}
		p = rest
	}
	var segs []string
	for seg := range strings.SplitSeq(p, "/") {
		switch seg {
		case "", ".":
			continue
		case "..":
			return "", false, errInvalid(target, "The %s %q has a '..' segment; paths must stay inside %s.", target, p, agentapi.DataDir)
		}
		if len(seg) > maxNameBytes {
			return "", false, errInvalid(target, "The %s has a name of %d bytes, above the limit of %d.", target, len(seg), maxNameBytes)
		}
		segs = append(segs, seg)
	}
	return strings.Join(segs, "/"), abs, nil
}

// filePath resolves a file name against the request's directory (the path query
// parameter, relative to /mnt/data): an absolute name stands alone. The result names a
// file, never /mnt/data itself.
func filePath(target, dir, name string) (string, error) {
	rel, abs, err := dataPath(target, name)
	if err != nil {
		return "", err
	}
	if rel == "" {
		return "", errInvalid(target, "The %s %q names no file.", target, name)
	}
	if !abs && dir != "" {
		rel = dir + "/" + rel
	}
	if len(rel) > maxPathBytes {
		return "", errInvalid(target, "The path of the %s is %d bytes long, above the limit of %d.", target, len(rel), maxPathBytes)
	}
	return rel, nil
}

// relativeTo returns the directory of rel relative to dir ("" when rel is directly in
// dir, or not under it).
func relativeTo(rel, dir string) string {
	parent := path.Dir(rel)
	if parent == "." {
		parent = ""
	}
	if dir == "" {
		return parent
	}
	if parent == dir {
		return ""
	}
	if rest, ok := strings.CutPrefix(parent, dir+"/"); ok {
		return rest
	}
	return parent
}

// contentTypes map file extensions to the Content-Type reported for files and sent with
// downloads. A table rather than mime.TypeByExtension, whose answers depend on the host's
// mime.types: the same file reports the same type everywhere.
var contentTypes = map[string]string{
	".txt": "text/plain; charset=utf-8", ".log": "text/plain; charset=utf-8",
	".md": "text/markdown; charset=utf-8", ".csv": "text/csv; charset=utf-8",
	".tsv": "text/tab-separated-values; charset=utf-8", ".html": "text/html; charset=utf-8",
	".htm": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
	".js": "text/javascript; charset=utf-8", ".py": "text/x-python; charset=utf-8",
	".sh": "text/x-sh; charset=utf-8", ".xml": "application/xml", ".json": "application/json",
	".ipynb": "application/x-ipynb+json", ".yaml": "application/yaml", ".yml": "application/yaml",
	".pdf": "application/pdf", ".zip": "application/zip", ".gz": "application/gzip",
	".tar": "application/x-tar", ".parquet": "application/vnd.apache.parquet",
	".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
	".xls":  "application/vnd.ms-excel",
	".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
	".pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
	".png":  "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
	".svg": "image/svg+xml", ".webp": "image/webp", ".bmp": "image/bmp", ".ico": "image/x-icon",
	".mp3": "audio/mpeg", ".wav": "audio/wav", ".mp4": "video/mp4",
}

// defaultContentType is reported for directories and unknown extensions.
const defaultContentType = "application/octet-stream"

// contentTypeOf returns the content type of a file name by its extension, or "".
func contentTypeOf(name string) string {
	return contentTypes[strings.ToLower(path.Ext(name))]
}
