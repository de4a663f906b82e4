package image

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
	"syscall"

	"github.com/sessiond/sessiond/internal/errkind"
)

// Limits bound what one layer may unpack. Zero fields take the values in DefaultLimits.
type Limits struct {
	// MaxSize caps the total bytes of regular-file content.
	MaxSize int64
	// MaxEntries caps the number of tar entries, whiteouts and skipped ones included.
	MaxEntries int
}

// DefaultLimits are generous: the full python image is about 1.4 GB in 60,000 entries, and
// the biggest public images (CUDA, ML frameworks) stay well below 20 GiB and 2M entries. They
// exist so a hostile tarball (a zip bomb, an endless stream of empty entries) cannot fill the
// disk or the inode table.
var DefaultLimits = Limits{MaxSize: 20 << 30, MaxEntries: 2_000_000}

// LayerStats counts what ApplyLayer did.
type LayerStats struct {
	Entries   int   // tar entries read
	Files     int   // regular files written
	Dirs      int   // directory entries applied (implicit parents not counted)
	Symlinks  int   // symbolic links created
	Hardlinks int   // hard links created
	Whiteouts int   // .wh. entries applied (deletions and opaque directories)
	Skipped   int   // devices, fifos and global headers, which are not unpacked
	Size      int64 // bytes of regular-file content written
}

// Whiteout names, as defined by the OCI image spec (layer.md, "Whiteouts").
const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh."
	whiteoutOpaque = ".wh..wh..opq"
)

// ApplyLayer unpacks the uncompressed tar stream r into root, applying OCI/Docker layer
// whiteouts on top of what root already holds. It treats r as hostile:
//
//   - entry names are cleaned and made relative; names that climb out with ".." are Invalid;
//   - every file-system operation goes through root, so a symlink unpacked earlier (absolute,
//     or pointing above the root) can never redirect a later entry outside it: such an entry
//     fails the whole layer as Invalid;
//   - symlinks are created as stored (their targets mean something only inside the sandbox);
//   - a hard link must name a regular file already inside root;
//   - devices and fifos are skipped (the runtime provides /dev), other unknown types are Invalid;
//   - the content size and entry count are bounded by lim (LimitExceeded).
//
// Owners are kept when the process runs as root (Lchown), as are modes with their
// setuid/setgid/sticky bits and modification times (not for symlinks). Directory modes and
// times are applied after the whole layer is written, so a 0555 directory still receives its
// files; parents created implicitly get 0755. Extended attributes are not restored.
//
// On error root is left partly written; the caller owns cleaning it up. ApplyLayer checks
// ctx between entries and while copying content.
func ApplyLayer(ctx context.Context, root *os.Root, r io.Reader, lim Limits) (LayerStats, error) {
	if lim.MaxSize <= 0 {
		lim.MaxSize = DefaultLimits.MaxSize
	}
	if lim.MaxEntries <= 0 {
		lim.MaxEntries = DefaultLimits.MaxEntries
	}
	a := &applier{
		ctx:     ctx,
		root:    root,
		lim:     lim,
		chown:   os.Geteuid() == 0,
		dirs:    map[string]bool{".": true},
		written: map[string]bool{},
		pending: map[string]*tar.Header{},
		buf:     make([]byte, 128<<10),
	}
	tr := tar.NewReader(&ctxReader{ctx: ctx, r: r})
	for {
		if err := ctx.Err(); err != nil {
			return a.stats, err
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if ctx.Err() != nil {
				return a.stats, ctx.Err()
			}
			return a.stats, errkind.Wrap(errkind.Invalid, fmt.Errorf("reading tar: %w", err))
		}
		a.stats.Entries++
		if a.stats.Entries > lim.MaxEntries {
			return a.stats, errkind.New(errkind.LimitExceeded, "layer has more than %d entries", lim.MaxEntries)
		}
		if err := a.apply(hdr, tr); err != nil {
			if ctx.Err() != nil {
				return a.stats, ctx.Err()
			}
			return a.stats, fmt.Errorf("unpacking %.100q: %w", hdr.Name, classify(err))
		}
	}
	if err := a.finishDirs(); err != nil {
		return a.stats, err
	}
	return a.stats, nil
}

// applier is the state of one ApplyLayer call.
type applier struct {
	ctx   context.Context
	root  *os.Root
	lim   Limits
	chown bool
	stats LayerStats
	// dirs caches paths known to be real directories (not symlinks) inside root, so parents
	// are checked once. Entries under a path are dropped when that path is replaced.
	dirs map[string]bool
	// written holds every path this layer created and all its ancestors: an opaque
	// whiteout removes only what lower layers left.
	written map[string]bool
	// pending holds directory headers whose owner, mode and times are applied at the end.
	pending map[string]*tar.Header
	buf     []byte
}

// maxName is Linux's PATH_MAX. Longer names could not be opened by path inside the sandbox,
// and they would let one entry create thousands of nested directories.
const maxName = 4096

// cleanName turns a tar entry name into a clean path relative to the root ("." for the root
// itself), or fails with Invalid if it climbs out.
func cleanName(name string) (string, error) {
	if name == "" || len(name) > maxName || strings.IndexByte(name, 0) >= 0 {
		return "", errkind.New(errkind.Invalid, "invalid entry name %.100q", name)
	}
	p := path.Clean(strings.TrimLeft(name, "/"))
	if p == ".." || strings.HasPrefix(p, "../") {
		return "", errkind.New(errkind.Invalid, "entry name %.100q escapes the root", name)
	}
	return p, nil
}

func (a *applier) apply(hdr *tar.Header, tr *tar.Reader) error {
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		a.stats.Skipped++
		return nil
	}
	p, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	dir, base := path.Split(p)
	dir = path.Clean(dir)
	if strings.HasPrefix(base, whiteoutPrefix) {
		return a.whiteout(dir, base)
	}
	switch hdr.Typeflag {
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		a.stats.Skipped++
		return nil
	case tar.TypeDir:
		return a.dir(p, hdr)
	case tar.TypeReg, tar.TypeGNUSparse, tar.TypeCont, tar.TypeSymlink, tar.TypeLink:
		// (tar.Reader already turned the old TypeRegA into TypeReg or TypeDir.)
	default:
		return errkind.New(errkind.Invalid, "unsupported entry type %q", hdr.Typeflag)
	}
	if p == "." {
		return errkind.New(errkind.Invalid, "the root can only be a directory")
	}
	if err := a.parents(p); err != nil {
		return err
	}
	if err := a.clear(p, false); err != nil {
		return err
	}
	switch hdr.Typeflag {
	case tar.TypeSymlink:
		if err := a.root.Symlink(hdr.Linkname, p); err != nil {
			return fmt.Errorf("creating symlink: %w", err)
		}
		a.stats.Symlinks++
		a.markWritten(p)
		return a.owner(p, hdr)
	case tar.TypeLink:
		return a.hardlink(p, hdr)
	}
	return a.file(p, hdr, tr)
}

// parents makes sure every parent of p is a directory inside the root, creating missing ones
// with mode 0755. A parent that is a symlink must resolve to a directory inside the root;
// anything else (absolute, escaping, dangling, not a directory) is Invalid.
func (a *applier) parents(p string) error {
	dir := path.Dir(p)
	if a.dirs[dir] {
		return nil
	}
	i := 0
	for i <= len(dir) {
		j := strings.IndexByte(dir[i:], '/')
		if j < 0 {
			j = len(dir)
		} else {
			j += i
		}
		prefix := dir[:j]
		i = j + 1
		if a.dirs[prefix] {
			continue
		}
		fi, err := a.root.Lstat(prefix)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := a.root.Mkdir(prefix, 0o755); err != nil {
				return fmt.Errorf("creating parent %q: %w", prefix, err)
			}
			// Mkdir applies the umask; implicit parents are 0755 whatever it is.
			if err := a.root.Chmod(prefix, 0o755); err != nil {
				return fmt.Errorf("creating parent %q: %w", prefix, err)
			}
			a.markWritten(prefix)
			a.dirs[prefix] = true
			continue
		case err != nil:
			return fmt.Errorf("checking parent %q: %w", prefix, err)
		case fi.IsDir():
			a.dirs[prefix] = true
			continue
		case fi.Mode()&fs.ModeSymlink == 0:
			return errkind.New(errkind.Invalid, "parent %q is not a directory", prefix)
		}
		// A symlink: following it must stay inside the root and reach a directory. It is
		// not cached, because a later entry may replace what it points to.
		fi, err = a.root.Stat(prefix)
		if err != nil || !fi.IsDir() {
			return errkind.Wrap(errkind.Invalid, fmt.Errorf("parent %q is a symlink that does not resolve to a directory inside the root: %w", prefix, orNotDir(err)))
		}
	}
	return nil
}

func orNotDir(err error) error {
	if err == nil {
		return syscall.ENOTDIR
	}
	return err
}

// clear removes whatever is at p, unless keepDir is set and p is a directory.
func (a *applier) clear(p string, keepDir bool) error {
	fi, err := a.root.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("checking existing entry: %w", err)
	}
	if keepDir && fi.IsDir() {
		return nil
	}
	if err := a.root.RemoveAll(p); err != nil {
		return fmt.Errorf("replacing existing entry: %w", err)
	}
	a.forget(p)
	return nil
}

// forget drops cached knowledge about p and everything below it after p was removed.
func (a *applier) forget(p string) {
	delete(a.dirs, p)
	delete(a.pending, p)
	prefix := p + "/"
	if p == "." {
		prefix = ""
	}
	for k := range a.dirs {
		if strings.HasPrefix(k, prefix) {
			delete(a.dirs, k)
		}
	}
	for k := range a.pending {
		if strings.HasPrefix(k, prefix) {
			delete(a.pending, k)
		}
	}
}

// markWritten records that this layer created p, and thus all of p's ancestors.
func (a *applier) markWritten(p string) {
	for p != "." && !a.written[p] {
		a.written[p] = true
		p = path.Dir(p)
	}
}

func (a *applier) dir(p string, hdr *tar.Header) error {
	if p != "." {
		if err := a.parents(p); err != nil {
			return err
		}
		if err := a.clear(p, true); err != nil {
			return err
		}
		if !a.dirs[p] {
			if err := a.root.Mkdir(p, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("creating directory: %w", err)
			}
			a.dirs[p] = true
		}
		a.markWritten(p)
	}
	a.pending[p] = hdr
	a.stats.Dirs++
	return nil
}

func (a *applier) file(p string, hdr *tar.Header, tr *tar.Reader) error {
	if hdr.Size < 0 || hdr.Size > a.lim.MaxSize-a.stats.Size {
		return errkind.New(errkind.LimitExceeded, "layer content exceeds %d bytes", a.lim.MaxSize)
	}
	f, err := a.root.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("creating file: %w", err)
	}
	a.markWritten(p)
	src := &sourceReader{r: tr}
	n, err := io.CopyBuffer(f, src, a.buf)
	a.stats.Size += n
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if src.err != nil {
		// A truncated or corrupt archive, not a disk problem.
		return errkind.Wrap(errkind.Invalid, fmt.Errorf("reading tar: %w", src.err))
	}
	if err != nil {
		return fmt.Errorf("writing file: %w", err)
	}
	a.stats.Files++
	if err := a.owner(p, hdr); err != nil {
		return err
	}
	if err := a.root.Chmod(p, mode(hdr)); err != nil {
		return fmt.Errorf("setting mode: %w", err)
	}
	return a.times(p, hdr)
}

func (a *applier) hardlink(p string, hdr *tar.Header) error {
	target, err := cleanName(hdr.Linkname)
	if err != nil {
		return err
	}
	if target == p {
		return errkind.New(errkind.Invalid, "hard link to itself")
	}
	fi, err := a.root.Lstat(target)
	if err != nil || !fi.Mode().IsRegular() {
		return errkind.Wrap(errkind.Invalid, fmt.Errorf("hard link target %q is not a regular file inside the root: %w", hdr.Linkname, orNotRegular(err)))
	}
	if err := a.root.Link(target, p); err != nil {
		return fmt.Errorf("creating hard link: %w", err)
	}
	a.markWritten(p)
	a.stats.Hardlinks++
	return nil
}

var errNotRegular = errors.New("not a regular file")

func orNotRegular(err error) error {
	if err == nil {
		return errNotRegular
	}
	return err
}

// whiteout applies a ".wh." entry found in dir.
func (a *applier) whiteout(dir, base string) error {
	a.stats.Whiteouts++
	if base == whiteoutOpaque {
		return a.opaque(dir)
	}
	if strings.HasPrefix(base, whiteoutMeta) {
		// Other AUFS metadata (.wh..wh.plnk, .wh..wh.aufs) carries nothing for us.
		return nil
	}
	name := strings.TrimPrefix(base, whiteoutPrefix)
	if name == "" || name == "." || name == ".." {
		return errkind.New(errkind.Invalid, "invalid whiteout %q", base)
	}
	// No parents are created for a whiteout: if they are missing there is nothing to hide.
	// A parent that escapes the root makes os.Root fail, which classify turns into Invalid.
	return a.clear(path.Join(dir, name), false)
}

// opaque removes everything under dir that this layer did not write.
func (a *applier) opaque(dir string) error {
	f, err := a.root.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("opening opaque directory: %w", err)
	}
	entries, err := f.ReadDir(-1)
	f.Close()
	if err != nil {
		return fmt.Errorf("reading opaque directory: %w", err)
	}
	for _, e := range entries {
		p := path.Join(dir, e.Name())
		if !a.written[p] {
			if err := a.root.RemoveAll(p); err != nil {
				return fmt.Errorf("removing hidden entry: %w", err)
			}
			a.forget(p)
			continue
		}
		if e.IsDir() {
			if err := a.opaque(p); err != nil {
				return err
			}
		}
	}
	return nil
}

func (a *applier) owner(p string, hdr *tar.Header) error {
	if !a.chown {
		return nil
	}
	if hdr.Uid < 0 || hdr.Gid < 0 {
		return errkind.New(errkind.Invalid, "negative owner %d:%d", hdr.Uid, hdr.Gid)
	}
	if err := a.root.Lchown(p, hdr.Uid, hdr.Gid); err != nil {
		return fmt.Errorf("setting owner: %w", err)
	}
	return nil
}

func (a *applier) times(p string, hdr *tar.Header) error {
	atime := hdr.AccessTime
	if atime.IsZero() {
		atime = hdr.ModTime
	}
	if err := a.root.Chtimes(p, atime, hdr.ModTime); err != nil {
		return fmt.Errorf("setting times: %w", err)
	}
	return nil
}

// finishDirs applies the owner, mode and times of every directory entry, children before
// their parents (reverse lexical order, the root last).
func (a *applier) finishDirs() error {
	paths := make([]string, 0, len(a.pending))
	for p := range a.pending {
		if p != "." {
			paths = append(paths, p)
		}
	}
	slices.SortFunc(paths, func(x, y string) int { return strings.Compare(y, x) })
	if _, ok := a.pending["."]; ok {
		paths = append(paths, ".")
	}
	for _, p := range paths {
		if err := a.ctx.Err(); err != nil {
			return err
		}
		hdr := a.pending[p]
		// Only a real directory: a symlink at p is never followed.
		if fi, err := a.root.Lstat(p); err != nil || !fi.IsDir() {
			continue
		}
		err := a.owner(p, hdr)
		if err == nil {
			err = a.root.Chmod(p, mode(hdr))
		}
		if err == nil {
			err = a.times(p, hdr)
		}
		if err != nil {
			return fmt.Errorf("finishing directory %.100q: %w", hdr.Name, classify(err))
		}
	}
	return nil
}

// mode returns hdr's permission bits with the sticky bit and a directory's setgid bit.
// Setuid and setgid on files are dropped: inside a sandbox they do nothing (every process
// runs with no_new_privs), and on the host the unpacked tree is reachable by local users,
// for whom a setuid-root binary from an imported image would be a way to host root.
func mode(hdr *tar.Header) fs.FileMode {
	m := fs.FileMode(hdr.Mode).Perm()
	if hdr.Mode&0o2000 != 0 && hdr.Typeflag == tar.TypeDir {
		m |= fs.ModeSetgid
	}
	if hdr.Mode&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	return m
}

// classify marks errors caused by the archive's content as Invalid: a path that os.Root
// refused because it escapes, a name too long, or bytes the kernel rejects. Errors already
// classified keep their kind; anything else (disk full, I/O) stays Internal.
func classify(err error) error {
	var ke *errkind.Error
	if errors.As(err, &ke) {
		return err
	}
	var pe *os.PathError
	var le *os.LinkError
	switch {
	case errors.As(err, &pe) && pe.Err.Error() == "path escapes from parent",
		errors.As(err, &le) && le.Err.Error() == "path escapes from parent",
		errors.Is(err, syscall.ENAMETOOLONG),
		errors.Is(err, syscall.EINVAL),
		errors.Is(err, syscall.ELOOP),
		errors.Is(err, syscall.ENOTDIR):
		return errkind.Wrap(errkind.Invalid, err)
	}
	return err
}

// sourceReader remembers a read error, so a copy can tell the archive's fault from the
// disk's.
type sourceReader struct {
	r   io.Reader
	err error
}

func (s *sourceReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF {
		s.err = err
	}
	return n, err
}

// ctxReader fails reads once ctx is done, so a stalled or huge stream stops promptly.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
