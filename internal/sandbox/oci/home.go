package oci

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// maxHomeEntries bounds how many files and directories seedHome copies: the image is
// not trusted to keep its home small, and the sandbox's disk limit bounds only bytes.
const maxHomeEntries = 10000

// seedHome copies the image's home directory (homeDir under rootFS) into dst, the
// sandbox's own empty home, owned by uid:gid: what the image put there (shell profiles,
// a prebuilt matplotlib font cache) is what a session finds, and each sandbox writes its
// own copy. Directories, regular files and symbolic links are copied (links as they are:
// they resolve inside the sandbox); other types are skipped and setuid, setgid and
// sticky bits are dropped. The image is read through an os.Root, so none of its links
// leads the copy out of it. An image without the directory seeds nothing.
func seedHome(rootFS, dst string, uid, gid int) error {
	root, err := os.OpenRoot(rootFS)
	if err != nil {
		return fmt.Errorf("seeding home: opening the image: %w", err)
	}
	defer root.Close()
	src := strings.TrimPrefix(homeDir, "/")
	fi, err := root.Lstat(src)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("seeding home: %w", err)
	}
	if !fi.IsDir() {
		return nil
	}
	n := 0
	err = fs.WalkDir(root.FS(), src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == src {
			return nil
		}
		if n++; n > maxHomeEntries {
			return fmt.Errorf("more than %d entries", maxHomeEntries)
		}
		to := filepath.Join(dst, strings.TrimPrefix(p, src+"/"))
		info, err := d.Info()
		if err != nil {
			return err
		}
		perm := info.Mode().Perm()
		switch info.Mode().Type() {
		case fs.ModeDir:
			if err := os.Mkdir(to, 0o700); err != nil {
				return err
			}
			if err := os.Chmod(to, perm); err != nil {
				return err
			}
		case fs.ModeSymlink:
			target, err := root.Readlink(p)
			if err != nil {
				return err
			}
			if err := os.Symlink(target, to); err != nil {
				return err
			}
		case 0:
			if err := copyFile(root, p, to, perm); err != nil {
				return err
			}
		default:
			return nil
		}
		return os.Lchown(to, uid, gid)
	})
	if err != nil {
		if errors.Is(err, syscall.ENOSPC) {
			return fmt.Errorf("seeding home: the image's %s does not fit in the sandbox's disk limit", homeDir)
		}
		return fmt.Errorf("seeding home from the image's %s: %w", homeDir, err)
	}
	return nil
}

// copyFile copies the regular file name in root to the new file to, with mode perm.
func copyFile(root *os.Root, name, to string, perm fs.FileMode) error {
	in, err := root.OpenFile(name, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Chmod(perm); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
