package image

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// indexVersion is the format of index.json; Open refuses any other.
const indexVersion = 1

// index is the store's metadata, kept in index.json. Each record is one image: a name (or ""
// for an unnamed image, see Import) and the rootfs it refers to. Several names may share an
// ID; an ID has either named records or exactly one unnamed one.
type index struct {
	Version int     `json:"version"`
	Images  []Image `json:"images"`
}

// byName returns the position of the record named name, or -1.
func (ix *index) byName(name string) int {
	return slices.IndexFunc(ix.Images, func(im Image) bool { return im.Name == name })
}

// byID returns the records whose ID is id.
func (ix *index) byID(id string) []Image {
	var out []Image
	for _, im := range ix.Images {
		if im.ID == id {
			out = append(out, im)
		}
	}
	return out
}

// layers returns the set of layer blobs the records list.
func (ix *index) layers() map[string]bool {
	used := map[string]bool{}
	for _, im := range ix.Images {
		for _, d := range im.Layers {
			used[d] = true
		}
	}
	return used
}

// sort orders records by name, unnamed ones last by ID, so index.json and List are stable.
func (ix *index) sort() {
	slices.SortFunc(ix.Images, func(a, b Image) int {
		switch {
		case a.Name == "" && b.Name != "":
			return 1
		case a.Name != "" && b.Name == "":
			return -1
		case a.Name != b.Name:
			return strings.Compare(a.Name, b.Name)
		}
		return strings.Compare(a.ID, b.ID)
	})
}

// readIndex loads index.json; a missing file is an empty index. RootFS paths are not stored
// but derived from the store directory.
func (s *Store) readIndex() (*index, error) {
	b, err := os.ReadFile(s.indexPath())
	if errors.Is(err, fs.ErrNotExist) {
		return &index{Version: indexVersion}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading image index: %w", err)
	}
	var ix index
	if err := json.Unmarshal(b, &ix); err != nil {
		return nil, fmt.Errorf("reading image index %s: %w", s.indexPath(), err)
	}
	if ix.Version != indexVersion {
		return nil, fmt.Errorf("reading image index %s: unsupported version %d", s.indexPath(), ix.Version)
	}
	for i := range ix.Images {
		ix.Images[i].RootFS = s.rootfsPath(ix.Images[i].ID)
	}
	return &ix, nil
}

// writeIndex replaces index.json atomically: a temp file, fsync, rename, fsync of the
// directory. A crash leaves either the old or the new index, never a torn one.
//
// Preconditions: the store lock is held.
func (s *Store) writeIndex(ix *index) error {
	ix.Version = indexVersion
	ix.sort()
	out := index{Version: ix.Version, Images: slices.Clone(ix.Images)}
	for i := range out.Images {
		out.Images[i].RootFS = "" // derived from the directory, which may move
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding image index: %w", err)
	}
	f, err := os.CreateTemp(s.dir, ".index-*.json")
	if err != nil {
		return fmt.Errorf("writing image index: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename this fails harmlessly
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Chmod(0o644)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing image index: %w", err)
	}
	if err := os.Rename(tmp, s.indexPath()); err != nil {
		return fmt.Errorf("writing image index: %w", err)
	}
	return syncDir(s.dir)
}

// syncFS flushes the file system holding path to disk.
func syncFS(path string) error {
	d, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("syncing %s: %w", path, err)
	}
	defer d.Close()
	if err := unix.Syncfs(int(d.Fd())); err != nil {
		return fmt.Errorf("syncing %s: %w", path, err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	return nil
}

// lock takes the store lock: the in-process mutex, then an exclusive flock on index.lock so
// another process (the CLI beside the server) waits too. Index reads need no lock because
// writes are atomic renames; read-modify-write sequences must hold it.
func (s *Store) lock() (unlock func(), err error) {
	s.mu.Lock()
	f, err := flock(filepath.Join(s.dir, "index.lock"), syscall.LOCK_EX)
	if err != nil {
		s.mu.Unlock()
		return nil, err
	}
	return func() {
		f.Close() // closing the descriptor releases the flock
		s.mu.Unlock()
	}, nil
}

// busy marks a use of tmp/ (an import unpacking, a removal deleting) with a shared flock on
// tmp.lock. Open garbage-collects tmp/ only when it can take that lock exclusively, that is
// when no process is using it.
func (s *Store) busy() (done func(), err error) {
	f, err := flock(filepath.Join(s.dir, "tmp.lock"), syscall.LOCK_SH)
	if err != nil {
		return nil, err
	}
	return func() { f.Close() }, nil
}

// flock opens (creating) path and locks it with how (LOCK_SH, LOCK_EX, optionally |LOCK_NB).
// Each call opens its own descriptor, so locks conflict within one process too.
func flock(path string, how int) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening lock file: %w", err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), how)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	return f, nil
}
