// Package image is sessiond's image store: unpacked root filesystems on local disk,
// addressed by content and named for users ("python", "python-small", "name:tag",
// "registry.example/app:v1"). Images come from tarballs (Import), from image/build, or from
// OCI/Docker registries (Pull). Sandboxes share an image's RootFS read-only; the runtime
// puts a writable layer above it.
//
// The store is a directory:
//
//	index.json            names, IDs, digests, sizes and configs; replaced atomically
//	index.lock            flock serializing index updates across processes
//	rootfs/<hex>/         one unpacked tree per image ID
//	blobs/sha256/<hex>    compressed layers of pulled images, verified, shared between them
//	tmp/                  imports and pulls in progress, removals; tmp.lock guards its clean-up
//
// It also holds ApplyLayer, the hardened tar unpacker that imports and pulls use. It does
// not build images (see image/build) or know which sandboxes use an image: callers must not
// remove an image a sandbox still runs on.
//
// Any package may import image; it imports only errkind of sessiond's.
package image

import (
	"bufio"
	"compress/bzip2"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/sessiond/sessiond/internal/errkind"
)

// Image is one named (or, after its name moved on, unnamed) root filesystem.
type Image struct {
	// Name is how users refer to the image; "" for an image whose name was re-imported
	// onto different content (see Store.Import).
	Name string `json:"name,omitempty"`
	// ID is "sha256:" and a hex sha256: of the uncompressed root-filesystem tarball for an
	// imported or built image, of the image config (which names every layer's content) for
	// a pulled one.
	ID string `json:"id"`
	// Digest is, for a pulled image, the registry digest its reference resolved to: the
	// manifest's, or the index's for a multi-platform image, so Name's repository plus
	// "@"+Digest pins it. "" for imported and built images.
	Digest string `json:"digest,omitempty"`
	// Layers are the digests of the compressed layer blobs a pulled image was unpacked from.
	// The store keeps each blob while an image lists it, so pulls of images that share
	// layers download them once.
	Layers []string `json:"layers,omitempty"`
	// RootFS is the absolute path of the unpacked tree. Treat it as read-only.
	RootFS string `json:"rootfs,omitempty"`
	// Size is the number of bytes of file content unpacked.
	Size    int64     `json:"size"`
	Created time.Time `json:"created"`
	Config  Config    `json:"config"`
}

// ShortID returns the first 12 hex digits of the ID, as the CLI shows it.
func (im Image) ShortID() string {
	h := strings.TrimPrefix(im.ID, idPrefix)
	return h[:min(12, len(h))]
}

// Config is what an OCI image config carries that a runtime needs, plus what the build
// recorded about the image's contents.
type Config struct {
	Env        []string          `json:"env,omitempty"`
	Entrypoint []string          `json:"entrypoint,omitempty"`
	Cmd        []string          `json:"cmd,omitempty"`
	WorkingDir string            `json:"workingDir,omitempty"`
	User       string            `json:"user,omitempty"`
	Labels     map[string]string `json:"labels,omitempty"`
	// ExposedPorts are the ports the image declares, as "8080/tcp" or "53/udp", sorted.
	ExposedPorts []string `json:"exposedPorts,omitempty"`
	// Packages lists the Debian packages installed in the image, for reporting.
	Packages []Package `json:"packages,omitempty"`
}

// Package is one installed (Debian) package.
type Package struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

const idPrefix = "sha256:"

// minPrefix is the shortest hex prefix Get accepts for an ID.
const minPrefix = 12

// Store is an image store in one directory. It is safe for concurrent use, also by several
// processes sharing the directory (the server and the CLI).
type Store struct {
	dir string
	// mu serializes index updates within the process; index.lock does it across processes.
	mu sync.Mutex
}

// Open opens the store in dir, creating it if needed. When no other process is importing
// into or removing from the store, it also deletes what a crash left behind: unfinished
// imports and rootfs trees that no index record names.
func Open(dir string) (*Store, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("opening image store: %w", err)
	}
	s := &Store{dir: abs}
	for _, d := range []struct {
		path string
		perm fs.FileMode
	}{{s.dir, 0o755}, {s.rootfsDir(), 0o755}, {s.blobsDir(), 0o700}, {s.tmpDir(), 0o700}} {
		if err := os.MkdirAll(d.path, d.perm); err != nil {
			return nil, fmt.Errorf("opening image store: %w", err)
		}
	}
	if _, err := s.readIndex(); err != nil {
		return nil, fmt.Errorf("opening image store: %w", err)
	}
	if err := s.collect(); err != nil {
		return nil, fmt.Errorf("opening image store: %w", err)
	}
	return s, nil
}

// Dir returns the store's absolute directory.
func (s *Store) Dir() string { return s.dir }

func (s *Store) indexPath() string { return filepath.Join(s.dir, "index.json") }
func (s *Store) rootfsDir() string { return filepath.Join(s.dir, "rootfs") }
func (s *Store) tmpDir() string    { return filepath.Join(s.dir, "tmp") }
func (s *Store) blobsDir() string  { return filepath.Join(s.dir, "blobs", "sha256") }
func (s *Store) rootfsPath(id string) string {
	return filepath.Join(s.rootfsDir(), strings.TrimPrefix(id, idPrefix))
}

// blobPath is where the store keeps the blob with digest "sha256:<hex>".
func (s *Store) blobPath(digest string) string {
	return filepath.Join(s.blobsDir(), strings.TrimPrefix(digest, idPrefix))
}

// Get returns the image ref names: a name, a full "sha256:<hex>" ID, or a hex prefix of at
// least 12 digits (with or without "sha256:"). A name wins over an ID prefix that happens to
// spell it. Errors: NotFound, Invalid for an ambiguous prefix.
func (s *Store) Get(ctx context.Context, ref string) (Image, error) {
	ix, err := s.readIndex()
	if err != nil {
		return Image{}, err
	}
	recs, _, err := ix.resolve(ref)
	if err != nil {
		return Image{}, err
	}
	return recs[0], nil
}

// List returns every image, named ones by name, then unnamed ones by ID.
func (s *Store) List(ctx context.Context) ([]Image, error) {
	ix, err := s.readIndex()
	if err != nil {
		return nil, err
	}
	ix.sort()
	return ix.Images, nil
}

// Remove removes the image ref names (see Get). For a name, it removes that name; for an ID
// it removes the image's only name, and fails with Invalid when several names share it.
// When no name refers to the ID any more, its rootfs is deleted too, and so are layer blobs
// no remaining image lists.
func (s *Store) Remove(ctx context.Context, ref string) error {
	// Lock order everywhere: tmp.lock, then the index lock.
	done, err := s.busy()
	if err != nil {
		return fmt.Errorf("removing image %s: %w", ref, err)
	}
	defer done()
	trash, err := s.unname(ref)
	if err != nil || trash == "" {
		return err
	}
	if err := removeTree(trash); err != nil {
		return fmt.Errorf("removing image %s: %w", ref, err)
	}
	return nil
}

// unname does Remove's index update under the lock. What is no longer named (the rootfs,
// layer blobs) it moves into tmp/, so an import or pull of the same content cannot adopt a
// half-deleted tree, and returns the directory for the caller to delete without holding
// the lock.
func (s *Store) unname(ref string) (trash string, err error) {
	unlock, err := s.lock()
	if err != nil {
		return "", fmt.Errorf("removing image %s: %w", ref, err)
	}
	defer unlock()
	ix, err := s.readIndex()
	if err != nil {
		return "", fmt.Errorf("removing image %s: %w", ref, err)
	}
	recs, byName, err := ix.resolve(ref)
	if err != nil {
		return "", err
	}
	if !byName && len(recs) > 1 {
		names := make([]string, len(recs))
		for i, r := range recs {
			names[i] = r.Name
		}
		return "", errkind.New(errkind.Invalid, "image %s has several names (%s): remove them by name", recs[0].ShortID(), strings.Join(names, ", "))
	}
	victim := recs[0]
	ix.Images = slices.DeleteFunc(ix.Images, func(im Image) bool {
		return im.Name == victim.Name && im.ID == victim.ID
	})
	if err := s.writeIndex(ix); err != nil {
		return "", fmt.Errorf("removing image %s: %w", ref, err)
	}
	used := ix.layers()
	orphans := slices.DeleteFunc(slices.Clone(victim.Layers), func(d string) bool { return used[d] })
	named := len(ix.byID(victim.ID)) > 0
	if named && len(orphans) == 0 {
		return "", nil
	}
	// From here a failure leaves an unnamed tree or blob, which the next Open collects.
	trash, err = os.MkdirTemp(s.tmpDir(), "remove-")
	if err != nil {
		return "", fmt.Errorf("removing image %s: %w", ref, err)
	}
	if !named {
		if err := os.Rename(victim.RootFS, filepath.Join(trash, "rootfs")); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return trash, fmt.Errorf("removing image %s: %w", ref, err)
		}
	}
	for _, d := range orphans {
		if err := os.Rename(s.blobPath(d), filepath.Join(trash, strings.TrimPrefix(d, idPrefix))); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return trash, fmt.Errorf("removing image %s: %w", ref, err)
		}
	}
	return trash, nil
}

// resolve finds the records ref names and reports whether it matched a name.
func (ix *index) resolve(ref string) (recs []Image, byName bool, err error) {
	if ref == "" {
		return nil, false, errkind.New(errkind.Invalid, "empty image reference")
	}
	if i := ix.byName(ref); i >= 0 {
		return ix.Images[i : i+1], true, nil
	}
	h := strings.TrimPrefix(ref, idPrefix)
	if len(h) < minPrefix || len(h) > sha256.Size*2 || !isHex(h) {
		return nil, false, errkind.New(errkind.NotFound, "image %q not found", ref)
	}
	var ids []string
	for _, im := range ix.Images {
		if strings.HasPrefix(im.ID, idPrefix+h) && !slices.Contains(ids, im.ID) {
			ids = append(ids, im.ID)
		}
	}
	switch len(ids) {
	case 0:
		return nil, false, errkind.New(errkind.NotFound, "image %q not found", ref)
	case 1:
		recs = ix.byID(ids[0])
		slices.SortFunc(recs, func(a, b Image) int { return strings.Compare(a.Name, b.Name) })
		return recs, false, nil
	}
	return nil, false, errkind.New(errkind.Invalid, "image ID prefix %q is ambiguous: it matches %d images", ref, len(ids))
}

func isHex(s string) bool {
	for _, c := range []byte(s) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// nameRE admits OCI-style references (repository paths, registry ports, tags, digests)
// without parsing them: names are only index keys, never paths.
var nameRE = regexp.MustCompile(`^[a-z0-9][A-Za-z0-9._:/@+-]{0,254}$`)

func checkName(name string) error {
	if !nameRE.MatchString(name) || strings.HasPrefix(name, idPrefix) {
		return errkind.New(errkind.Invalid, "invalid image name %q: use up to 255 of [A-Za-z0-9._:/@+-], starting with a lower-case letter or digit", name)
	}
	return nil
}

// Import unpacks a root-filesystem tarball (plain tar, gzip or bzip2, detected from its
// first bytes) and names it name. The image ID is the sha256 of the uncompressed tar
// stream. If an image with that ID already exists the new copy is discarded and name points
// at the existing one.
//
// If name referred to another image before and no other name refers to that one, it is
// kept as an unnamed image (List shows it with an empty Name): sandboxes may still run on
// its rootfs. Remove it by ID once they are gone.
//
// Import is atomic: the tree is unpacked in tmp/ and renamed into rootfs/ only when
// complete, and the index is updated after that. Any failure, cancellation of ctx
// included, leaves no tree behind and the old name mapping untouched. Errors: Invalid for a
// bad name or a hostile or corrupt archive, LimitExceeded (see DefaultLimits).
func (s *Store) Import(ctx context.Context, name string, r io.Reader, cfg Config) (Image, error) {
	if err := checkName(name); err != nil {
		return Image{}, err
	}
	done, err := s.busy()
	if err != nil {
		return Image{}, fmt.Errorf("importing %s: %w", name, err)
	}
	defer done()
	tmp, err := os.MkdirTemp(s.tmpDir(), "import-")
	if err != nil {
		return Image{}, fmt.Errorf("importing %s: %w", name, err)
	}
	defer func() {
		if tmp != "" {
			removeTree(tmp)
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return Image{}, fmt.Errorf("importing %s: %w", name, err)
	}
	id, stats, err := unpack(ctx, tmp, r)
	if err != nil {
		return Image{}, fmt.Errorf("importing %s: %w", name, err)
	}
	if ix, err := s.readIndex(); err != nil || len(ix.byID(id)) == 0 {
		// The tree is new: make its content durable before the rename publishes it. One
		// syncfs costs far less than an fsync per file.
		if err := syncFS(tmp); err != nil {
			return Image{}, fmt.Errorf("importing %s: %w", name, err)
		}
	}
	img, moved, err := s.commit(Image{Name: name, ID: id, Size: stats.Size, Config: cfg}, tmp, "")
	if moved {
		tmp = ""
	}
	if err != nil {
		return Image{}, fmt.Errorf("importing %s: %w", name, err)
	}
	return img, nil
}

// maxTrailer bounds what may follow the end-of-archive marker (tar pads to its record
// size, 10 KiB by default); it keeps a hostile endless stream from being hashed forever.
const maxTrailer = 1 << 20

// unpack decompresses r, unpacks it into dir and returns the image ID.
func unpack(ctx context.Context, dir string, r io.Reader) (string, LayerStats, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return "", LayerStats{}, err
	}
	defer root.Close()
	return applyCompressed(ctx, root, r, DefaultLimits)
}

// applyCompressed decompresses r (see decompress), applies it to root with ApplyLayer and
// returns "sha256:" and the hex sha256 of the uncompressed stream: an imported image's ID, a
// pulled layer's diff ID.
func applyCompressed(ctx context.Context, root *os.Root, r io.Reader, lim Limits) (string, LayerStats, error) {
	ur, closeDec, err := decompress(bufio.NewReaderSize(&ctxReader{ctx: ctx, r: r}, 64<<10))
	if err != nil {
		return "", LayerStats{}, err
	}
	defer closeDec()
	h := sha256.New()
	stats, err := ApplyLayer(ctx, root, io.TeeReader(ur, h), lim)
	if err != nil {
		return "", stats, err
	}
	// The hash covers the whole stream, padding after the end-of-archive marker included,
	// and reading to the end makes gzip verify its checksum.
	n, err := io.Copy(h, io.LimitReader(ur, maxTrailer+1))
	if err != nil {
		if ctx.Err() != nil {
			return "", stats, ctx.Err()
		}
		return "", stats, errkind.Wrap(errkind.Invalid, fmt.Errorf("reading tar: %w", err))
	}
	if n > maxTrailer {
		return "", stats, errkind.New(errkind.Invalid, "more than %d bytes follow the end of the tar archive", maxTrailer)
	}
	return idPrefix + hex.EncodeToString(h.Sum(nil)), stats, nil
}

// maxZstdWindow bounds the memory a zstd stream may make the decoder allocate. 128 MiB is
// the largest window zstd itself uses without an explicit --long=N above 27.
const maxZstdWindow = 128 << 20

// decompress returns the uncompressed stream of br, sniffing its compression (gzip, bzip2,
// zstd or none), and a function releasing the decoder.
func decompress(br *bufio.Reader) (io.Reader, func(), error) {
	nop := func() {}
	magic, err := br.Peek(4)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, nop, fmt.Errorf("reading tarball: %w", err)
	}
	switch {
	case len(magic) >= 2 && magic[0] == 0x1f && magic[1] == 0x8b:
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nop, errkind.Wrap(errkind.Invalid, fmt.Errorf("reading gzip tarball: %w", err))
		}
		return zr, nop, nil
	case len(magic) >= 3 && string(magic[:3]) == "BZh":
		return bzip2.NewReader(br), nop, nil
	case len(magic) >= 4 && string(magic) == "\x28\xb5\x2f\xfd":
		// One synchronous decoder: no goroutines, memory bounded by the window.
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxWindow(maxZstdWindow), zstd.WithDecoderMaxMemory(uint64(DefaultLimits.MaxSize)))
		if err != nil {
			return nil, nop, errkind.Wrap(errkind.Invalid, fmt.Errorf("reading zstd tarball: %w", err))
		}
		return zr, zr.Close, nil
	case len(magic) >= 4 && string(magic) == "\xfd7zX":
		return nil, nop, errkind.New(errkind.Invalid, "xz-compressed tarballs are not supported; decompress first")
	}
	return br, nop, nil
}

// commit records rec (Name, ID, Size, Config, and for a pulled image Digest and Layers)
// in the index. It first moves the unpacked tree tmp into rootfs/ unless the ID is there
// already, and each of rec.Layers from blobDir into blobs/ unless it is there already. An
// empty tmp means the tree must exist: Unavailable if it vanished meanwhile. A record with
// no Layers whose ID is known inherits the Layers of that ID's records. commit reports
// whether tmp was moved, after which the caller must not delete it.
func (s *Store) commit(rec Image, tmp, blobDir string) (img Image, moved bool, err error) {
	unlock, err := s.lock()
	if err != nil {
		return Image{}, false, err
	}
	defer unlock()
	ix, err := s.readIndex()
	if err != nil {
		return Image{}, false, err
	}
	name, id := rec.Name, rec.ID
	for _, d := range rec.Layers {
		// A blob already in blobs/ is complete: it was verified before it was moved there.
		dst := s.blobPath(d)
		if _, err := os.Lstat(dst); errors.Is(err, fs.ErrNotExist) {
			if err := os.Rename(filepath.Join(blobDir, strings.TrimPrefix(d, idPrefix)), dst); err != nil {
				return Image{}, false, fmt.Errorf("publishing layer %s: %w", d, err)
			}
		} else if err != nil {
			return Image{}, false, fmt.Errorf("checking layer %s: %w", d, err)
		}
	}
	dst := s.rootfsPath(id)
	if _, err := os.Lstat(dst); errors.Is(err, fs.ErrNotExist) {
		if tmp == "" {
			return Image{}, false, errkind.New(errkind.Unavailable, "image %s was removed while it was being named; try again", rec.ShortID())
		}
		if err := os.Rename(tmp, dst); err != nil {
			return Image{}, false, fmt.Errorf("publishing rootfs: %w", err)
		}
		moved = true
	} else if err != nil {
		return Image{}, false, fmt.Errorf("checking rootfs: %w", err)
	}
	// Otherwise the tree exists: indexed (dedupe), or left by a crash between rename and
	// index write. Trees only ever appear in rootfs/ complete, so it is adopted either way.
	if len(rec.Layers) == 0 {
		for _, im := range ix.byID(id) {
			if len(im.Layers) > 0 {
				rec.Layers = im.Layers
				break
			}
		}
	}

	img = rec
	img.RootFS, img.Created = dst, time.Now().UTC()
	var prev *Image
	if i := ix.byName(name); i >= 0 {
		p := ix.Images[i]
		prev = &p
	}
	ix.Images = slices.DeleteFunc(ix.Images, func(im Image) bool {
		return im.Name == name || (im.ID == id && im.Name == "")
	})
	if prev != nil && prev.ID != id && len(ix.byID(prev.ID)) == 0 {
		prev.Name = ""
		ix.Images = append(ix.Images, *prev)
	}
	ix.Images = append(ix.Images, img)
	if err := s.writeIndex(ix); err != nil {
		if moved && os.Rename(dst, tmp) == nil {
			moved = false
		}
		return Image{}, moved, err
	}
	if moved {
		if err := syncDir(s.rootfsDir()); err != nil {
			return Image{}, moved, err
		}
	}
	return img, moved, nil
}

// collect deletes what crashes left: everything in tmp/, and rootfs trees and layer blobs
// that no record names. It does nothing when another process holds tmp.lock, since its
// work in progress looks the same as debris.
func (s *Store) collect() error {
	f, err := flock(filepath.Join(s.dir, "tmp.lock"), syscall.LOCK_EX|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	ix, err := s.readIndex()
	if err != nil {
		return err
	}
	var debris []string
	tmps, err := os.ReadDir(s.tmpDir())
	if err != nil {
		return fmt.Errorf("collecting debris: %w", err)
	}
	for _, e := range tmps {
		debris = append(debris, filepath.Join(s.tmpDir(), e.Name()))
	}
	trees, err := os.ReadDir(s.rootfsDir())
	if err != nil {
		return fmt.Errorf("collecting debris: %w", err)
	}
	for _, e := range trees {
		if len(ix.byID(idPrefix+e.Name())) == 0 {
			debris = append(debris, filepath.Join(s.rootfsDir(), e.Name()))
		}
	}
	blobs, err := os.ReadDir(s.blobsDir())
	if err != nil {
		return fmt.Errorf("collecting debris: %w", err)
	}
	used := ix.layers()
	for _, e := range blobs {
		if !used[idPrefix+e.Name()] {
			debris = append(debris, filepath.Join(s.blobsDir(), e.Name()))
		}
	}
	stale, _ := filepath.Glob(filepath.Join(s.dir, ".index-*.json"))
	debris = append(debris, stale...)
	for _, p := range debris {
		if err := removeTree(p); err != nil {
			return fmt.Errorf("collecting debris: %w", err)
		}
	}
	return nil
}

// removeTree is os.RemoveAll that also copes with directories an image made read-only
// (0555), which a non-root process cannot empty without first making them writable.
func removeTree(path string) error {
	if err := os.RemoveAll(path); err == nil {
		return nil
	}
	filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(p, 0o700)
		}
		return nil
	})
	return os.RemoveAll(path)
}
