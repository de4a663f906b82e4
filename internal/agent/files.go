package agent

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
)

// The files API serves the data dir. Paths are resolved one component at a time below the
// directory's descriptor and never through a symbolic link (resolve_linux.go); every
// operation then acts on a single name relative to a verified directory descriptor.
// Listing and removal never follow a symlink; upload replaces one rather than writing
// through it; download refuses one.

const (
	// maxListDepth bounds how deep a recursive listing descends, and so how many
	// directories it holds open. Deeper directories are listed but not entered, and the
	// listing is marked Truncated.
	maxListDepth = 64
	// uploadTimeout and downloadTimeout bound the transfer of one file's body.
	uploadTimeout   = 30 * time.Minute
	downloadTimeout = 30 * time.Minute
	// uploadPrefix names the temporary file an upload is written to before the rename.
	uploadPrefix = ".sessiond-upload-"
)

// handleList serves GET /v1/files: a directory listing, or with stat=1 one FileInfo.
func (a *Agent) handleList(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	rel, err := cleanPath(q.Get("path"), a.cfg.DataDir)
	if err != nil {
		return err
	}
	stat, err := boolParam(q, "stat")
	if err != nil {
		return err
	}
	recursive, err := boolParam(q, "recursive")
	if err != nil {
		return err
	}
	if stat {
		info, err := a.lstat(rel)
		if err != nil {
			return fileError("stat", rel, err)
		}
		return writeJSON(w, http.StatusOK, info)
	}
	l, err := a.list(rel, recursive)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, l)
}

// list lists the directory rel.
func (a *Agent) list(rel string, recursive bool) (agentapi.FileList, error) {
	dir, err := a.openDir(rel, false)
	if err != nil {
		return agentapi.FileList{}, fileError("listing", rel, err)
	}
	defer dir.Close()
	l := lister{recursive: recursive, max: a.maxList, files: []agentapi.FileInfo{}}
	if err := l.walk(dir, rel, 0); err != nil {
		return agentapi.FileList{}, fileError("listing", rel, err)
	}
	return agentapi.FileList{Files: l.files, Truncated: l.truncated}, nil
}

// lstat describes rel without following a final symlink.
func (a *Agent) lstat(rel string) (agentapi.FileInfo, error) {
	if rel == "" {
		d, err := a.openDir("", false)
		if err != nil {
			return agentapi.FileInfo{}, err
		}
		defer d.Close()
		var st unix.Stat_t
		if err := unix.Fstat(int(d.Fd()), &st); err != nil {
			return agentapi.FileInfo{}, err
		}
		return statInfo(rel, &st), nil
	}
	d, name, err := a.openParent(rel, false)
	if err != nil {
		return agentapi.FileInfo{}, err
	}
	defer d.Close()
	var st unix.Stat_t
	if err := unix.Fstatat(int(d.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return agentapi.FileInfo{}, err
	}
	return statInfo(rel, &st), nil
}

// lister collects a listing of at most max entries, depth first, each directory's
// entries in name order: a truncated listing is the first max entries of that order.
// Upload temporaries (uploadPrefix) are left out.
//
// Memory is bounded whatever the tree looks like. A directory's names are read whole, up
// to dirNamesFactor×max of them (beyond that the directory is truncated, and which names
// were read is up to the file system), then sorted; and the names still to be listed by
// every directory being walked, together, never exceed what the listing has room for
// (see trim). So a listing holds at most (dirNamesFactor+1)×max names at any time.
type lister struct {
	recursive bool
	max       int
	files     []agentapi.FileInfo
	truncated bool
	// pending holds, for each directory being walked (outermost first), the names it has
	// yet to list.
	pending [][]string
}

// dirNamesFactor sets how many names of one directory a listing reads, as a multiple of
// its entry limit: enough that a directory is truncated only when it holds far more
// entries than could be listed anyway.
const dirNamesFactor = 4

// walk appends the entries of dir, whose path is rel. Entries are examined relative to
// dir's descriptor without following symlinks, and subdirectories are opened the same
// way, so a rename race can never lead the walk out of the tree.
func (l *lister) walk(dir *os.File, rel string, depth int) error {
	names, err := l.readNames(dir)
	if err != nil {
		return err
	}
	level := len(l.pending)
	l.pending = append(l.pending, names)
	defer func() { l.pending = l.pending[:level] }()
	l.trim()
	fd := int(dir.Fd())
	for len(l.pending[level]) > 0 {
		name := l.pending[level][0]
		l.pending[level] = l.pending[level][1:]
		child := joinRel(rel, name)
		var st unix.Stat_t
		if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if err == unix.ENOENT {
				continue // removed since it was read
			}
			return &os.PathError{Op: "fstatat", Path: child, Err: err}
		}
		l.files = append(l.files, statInfo(child, &st))
		if !l.recursive || st.Mode&unix.S_IFMT != unix.S_IFDIR {
			continue
		}
		if depth+1 >= maxListDepth {
			l.truncated = true
			continue
		}
		cfd, err := stepDir(fd, name)
		switch err {
		case nil:
		case unix.ENOENT, unix.ENOTDIR, errSymlink:
			continue // replaced since it was examined
		default:
			return &os.PathError{Op: "openat", Path: child, Err: err}
		}
		sub := os.NewFile(uintptr(cfd), child)
		err = l.walk(sub, child, depth+1)
		sub.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// readNames returns the names in dir, upload temporaries left out, in name order. It
// reads at most dirNamesFactor×max names and marks the listing truncated if there are
// more.
func (l *lister) readNames(dir *os.File) ([]string, error) {
	limit := dirNamesFactor * l.max
	var names []string
	for read := 0; read < limit; {
		batch, err := dir.Readdirnames(min(1024, limit-read))
		read += len(batch)
		for _, n := range batch {
			if !strings.HasPrefix(n, uploadPrefix) {
				names = append(names, n)
			}
		}
		if err == io.EOF {
			slices.Sort(names)
			return names, nil
		}
		if err != nil {
			return nil, err
		}
	}
	if more, _ := dir.Readdirnames(1); len(more) > 0 {
		l.truncated = true
	}
	slices.Sort(names)
	return names, nil
}

// trim cuts the pending names so that, together, they fit the room left in the listing.
// Deeper directories are listed first (depth first), so the names of the innermost
// directory keep their room and the outer ones get what remains. A cut list is copied so
// that the names cut off can be freed.
func (l *lister) trim() {
	room := l.max - len(l.files)
	for i := len(l.pending) - 1; i >= 0; i-- {
		if p := l.pending[i]; len(p) > room {
			l.pending[i] = slices.Clone(p[:room])
			l.truncated = true
		}
		room -= len(l.pending[i])
	}
}

// handleDownload serves GET /v1/files/content: a regular file's bytes.
func (a *Agent) handleDownload(w http.ResponseWriter, r *http.Request) error {
	rel, err := cleanPath(r.URL.Query().Get("path"), a.cfg.DataDir)
	if err != nil {
		return err
	}
	if rel == "" {
		return errkind.New(errkind.Invalid, "downloading: the path names the data directory, not a file")
	}
	d, name, err := a.openParent(rel, false)
	if err != nil {
		return fileError("opening", rel, err)
	}
	// O_NONBLOCK: opening a FIFO planted by user code must not hang the agent. It does
	// not change reads of a regular file, the only kind served. O_NOFOLLOW: a symlink
	// is refused, never followed.
	fd, err := unix.Openat(int(d.Fd()), name, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	d.Close()
	if err != nil {
		if err == unix.ELOOP {
			err = errSymlink
		}
		return fileError("opening", rel, err)
	}
	f := os.NewFile(uintptr(fd), rel)
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fileError("opening", rel, err)
	}
	if !fi.Mode().IsRegular() {
		return errkind.New(errkind.Invalid, "downloading %q: not a regular file", rel)
	}
	size := fi.Size()
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Length", strconv.FormatInt(size, 10))
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(downloadTimeout))
	w.WriteHeader(http.StatusOK)
	if _, err := io.CopyN(w, f, size); err != nil {
		// The header is sent: the client sees a body shorter than its Content-Length.
		a.log.Debug("download cut short", "path", rel, "err", err)
	}
	return nil
}

// handleUpload serves PUT /v1/files/content. The body goes to a temporary file beside the
// target, which is renamed over the target only once complete: a failed or oversized
// upload leaves the old file as it was, and a symlink at the target is replaced, never
// written through.
func (a *Agent) handleUpload(w http.ResponseWriter, r *http.Request) error {
	rel, err := cleanPath(r.URL.Query().Get("path"), a.cfg.DataDir)
	if err != nil {
		return err
	}
	if rel == "" {
		return errkind.New(errkind.Invalid, "uploading: the path names the data directory, not a file")
	}
	if r.ContentLength > a.maxUpload {
		return errkind.New(errkind.LimitExceeded, "uploading %q: %d bytes is above the limit of %d", rel, r.ContentLength, a.maxUpload)
	}
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(uploadTimeout))
	d, name, err := a.openParent(rel, true)
	if err != nil {
		return fileError("uploading", rel, err)
	}
	defer d.Close()
	dfd := int(d.Fd())
	perm := uint32(0o644)
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			return errkind.New(errkind.Invalid, "uploading %q: is a directory", rel)
		case unix.S_IFREG:
			perm = st.Mode & 0o777 // replacing a file keeps its permissions
		}
	} else if err != unix.ENOENT {
		return fileError("uploading", rel, err)
	}

	tmp := uploadPrefix + rand.Text()
	fd, err := unix.Openat(dfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fileError("uploading", rel, err)
	}
	f := os.NewFile(uintptr(fd), tmp)
	renamed := false
	defer func() {
		if !renamed {
			f.Close()
			unix.Unlinkat(dfd, tmp, 0)
		}
	}()
	body := &readErr{r: http.MaxBytesReader(w, r.Body, a.maxUpload)}
	if _, err := io.Copy(f, body); err != nil {
		if body.err != nil {
			return bodyError(fmt.Sprintf("uploading %q", rel), body.err)
		}
		return fileError("writing", rel, err)
	}
	if a.switchUser {
		if err := f.Chown(a.cfg.UID, a.cfg.GID); err != nil {
			return fileError("uploading", rel, err)
		}
	}
	if err := f.Chmod(fs.FileMode(perm)); err != nil {
		return fileError("uploading", rel, err)
	}
	if err := f.Close(); err != nil {
		return fileError("writing", rel, err)
	}
	if err := unix.Renameat(dfd, tmp, dfd, name); err != nil {
		return fileError("uploading", rel, err)
	}
	renamed = true
	if err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fileError("uploading", rel, err)
	}
	return writeJSON(w, http.StatusOK, statInfo(rel, &st))
}

// readErr remembers the error of its reader, to tell a failed request body from a
// failed write in io.Copy.
type readErr struct {
	r   io.Reader
	err error
}

func (e *readErr) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF {
		e.err = err
	}
	return n, err
}

// handleMkdir serves POST /v1/files/mkdir: create a directory and its parents.
func (a *Agent) handleMkdir(w http.ResponseWriter, r *http.Request) error {
	rel, err := cleanPath(r.URL.Query().Get("path"), a.cfg.DataDir)
	if err != nil {
		return err
	}
	d, err := a.openDir(rel, true)
	if err != nil {
		if fi, lerr := a.lstat(rel); err == unix.ENOTDIR && lerr == nil && !fi.IsDir {
			return errkind.New(errkind.AlreadyExists, "creating directory %q: a file that is not a directory exists there", rel)
		}
		return fileError("creating directory", rel, err)
	}
	defer d.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(d.Fd()), &st); err != nil {
		return fileError("creating directory", rel, err)
	}
	return writeJSON(w, http.StatusOK, statInfo(rel, &st))
}

// handleRemove serves DELETE /v1/files: remove a file, an empty directory, or with
// recursive=1 a tree. A symlink is removed, not what it points to.
func (a *Agent) handleRemove(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	rel, err := cleanPath(q.Get("path"), a.cfg.DataDir)
	if err != nil {
		return err
	}
	recursive, err := boolParam(q, "recursive")
	if err != nil {
		return err
	}
	if rel == "" {
		return errkind.New(errkind.Invalid, "removing: the data directory itself cannot be removed")
	}
	d, name, err := a.openParent(rel, false)
	if err != nil {
		return fileError("removing", rel, err)
	}
	defer d.Close()
	if err := removeAt(int(d.Fd()), name, recursive, 0); err != nil {
		return fileError("removing", rel, err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// removeAt removes the entry name of directory dir; a directory only if empty, unless
// recursive. It never follows a symlink.
func removeAt(dir int, name string, recursive bool, depth int) error {
	var st unix.Stat_t
	if err := unix.Fstatat(dir, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return unix.Unlinkat(dir, name, 0)
	}
	if recursive {
		if depth > 256 {
			return unix.ELOOP
		}
		sub, err := stepDir(dir, name)
		if err != nil {
			return err
		}
		f := os.NewFile(uintptr(sub), name)
		for {
			names, err := f.Readdirnames(256)
			for _, n := range names {
				if err := removeAt(sub, n, true, depth+1); err != nil && err != unix.ENOENT {
					f.Close()
					return err
				}
			}
			if err != nil || len(names) == 0 {
				break
			}
		}
		f.Close()
	}
	return unix.Unlinkat(dir, name, unix.AT_REMOVEDIR)
}

func boolParam(q url.Values, name string) (bool, error) {
	v := q.Get(name)
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, errkind.New(errkind.Invalid, "%s=%q is not a boolean", name, v)
	}
	return b, nil
}

func joinRel(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// statInfo describes the entry at rel from its stat result.
func statInfo(rel string, st *unix.Stat_t) agentapi.FileInfo {
	return newInfo(rel, st.Size, st.Mode, time.Unix(st.Mtim.Unix()))
}

// newInfo builds a FileInfo. Mode is the Unix st_mode: file type and permission bits.
func newInfo(rel string, size int64, mode uint32, mtime time.Time) agentapi.FileInfo {
	name := ""
	if rel != "" {
		name = path.Base(rel)
	}
	return agentapi.FileInfo{
		Name:    name,
		Path:    rel,
		Size:    size,
		IsDir:   mode&unix.S_IFMT == unix.S_IFDIR,
		Mode:    mode,
		ModTime: mtime.UTC(),
	}
}

// fileError classifies a file system error of action on rel, with a message that names
// rel as the client gave it, never a path of the agent's.
func fileError(action, rel string, err error) error {
	kind, what := classifyFileError(err)
	if kind == errkind.Internal {
		return fmt.Errorf("%s %q: %w", action, rel, err)
	}
	return &errkind.Error{Kind: kind, Msg: fmt.Sprintf("%s %q: %s", action, rel, what), Public: true, Err: err}
}

func classifyFileError(err error) (errkind.Kind, string) {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case unix.ENOENT:
			return errkind.NotFound, "no such file or directory"
		case unix.EEXIST:
			return errkind.AlreadyExists, "already exists"
		case unix.ENOTEMPTY:
			return errkind.Invalid, "directory not empty"
		case unix.ENOTDIR:
			return errkind.Invalid, "not a directory"
		case unix.EISDIR:
			return errkind.Invalid, "is a directory"
		case unix.ELOOP:
			return errkind.Invalid, "too many levels of symbolic links"
		case unix.ENAMETOOLONG:
			return errkind.Invalid, "file name too long"
		case unix.EROFS:
			return errkind.Invalid, "read-only file system"
		case unix.EBUSY:
			return errkind.Invalid, "busy (a mount point?)"
		case unix.ENOSPC, unix.EDQUOT, unix.EFBIG:
			return errkind.LimitExceeded, errno.Error()
		}
		return errkind.Internal, ""
	}
	switch {
	case errors.Is(err, errSymlink):
		return errkind.Invalid, errSymlink.Error()
	case errors.Is(err, errOutside):
		return errkind.Invalid, errOutside.Error()
	}
	return errkind.Internal, ""
}
