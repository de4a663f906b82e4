package agent

import (
	"errors"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// The files API resolves paths itself instead of using os.Root. os.Root opens each
// intermediate directory with O_NOFOLLOW|O_DIRECTORY and relies on the kernel refusing a
// symlink there; gVisor follows the symlink instead (found by the sandboxtest containment
// suite: "up -> ../.." let a download read /etc/passwd under runsc). Here every component
// is opened with O_PATH|O_NOFOLLOW, which both kernels honour, and checked with fstat to be
// a real directory before it is entered; a symlink anywhere in a path is refused. As a
// second, independent check, the directory finally reached must still lie below the data
// dir according to /proc/self/fd.

// errSymlink reports a symbolic link in a path: the files API never follows one.
var errSymlink = errors.New("a symbolic link is in the way (the files API does not follow symbolic links)")

// errOutside reports a directory that resolved outside the data dir.
var errOutside = errors.New("path escapes the data directory")

// openDataRoot opens the data dir itself.
func (a *Agent) openDataRoot() (int, error) {
	return unix.Open(a.cfg.DataDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
}

// stepDir opens the entry name of directory dir as a directory, never following a symlink.
func stepDir(dir int, name string) (int, error) {
	pfd, err := unix.Openat(dir, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	defer unix.Close(pfd)
	var st unix.Stat_t
	if err := unix.Fstat(pfd, &st); err != nil {
		return -1, err
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
	case unix.S_IFLNK:
		return -1, errSymlink
	default:
		return -1, unix.ENOTDIR
	}
	dfd, err := unix.Openat(pfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	var st2 unix.Stat_t
	if err := unix.Fstat(dfd, &st2); err != nil || st2.Dev != st.Dev || st2.Ino != st.Ino {
		unix.Close(dfd)
		return -1, unix.ENOTDIR
	}
	return dfd, nil
}

// openDir opens the directory rel ("" is the data dir) for reading; with create, missing
// directories are made (owned by the user). The caller closes the result.
func (a *Agent) openDir(rel string, create bool) (*os.File, error) {
	fd, err := a.openDataRoot()
	if err != nil {
		return nil, err
	}
	if rel != "" {
		for comp := range strings.SplitSeq(rel, "/") {
			if create {
				switch err := unix.Mkdirat(fd, comp, 0o755); {
				case err == nil:
					if a.switchUser {
						if err := unix.Fchownat(fd, comp, a.cfg.UID, a.cfg.GID, unix.AT_SYMLINK_NOFOLLOW); err != nil {
							unix.Close(fd)
							return nil, err
						}
					}
				case err == unix.EEXIST:
				default:
					unix.Close(fd)
					return nil, err
				}
			}
			next, err := stepDir(fd, comp)
			unix.Close(fd)
			if err != nil {
				return nil, err
			}
			fd = next
		}
	}
	if err := a.checkInside(fd); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), rel), nil
}

// openParent opens the directory containing rel (which is not "") and returns it with
// rel's last component.
func (a *Agent) openParent(rel string, create bool) (*os.File, string, error) {
	dir, name := "", rel
	if i := strings.LastIndexByte(rel, '/'); i >= 0 {
		dir, name = rel[:i], rel[i+1:]
	}
	d, err := a.openDir(dir, create)
	if err != nil {
		return nil, "", err
	}
	return d, name, nil
}

// checkInside verifies, independently of how fd was reached, that it is the data dir or
// lies below it.
func (a *Agent) checkInside(fd int) error {
	p, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return nil // no /proc: the component walk above is the guarantee
	}
	if p == a.dataDirReal || strings.HasPrefix(p, a.dataDirReal+"/") {
		return nil
	}
	return errOutside
}
