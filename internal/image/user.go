package image

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"

	"github.com/sessiond/sessiond/internal/errkind"
)

// maxUserDB bounds how much of the image's /etc/passwd or /etc/group ResolveUser reads.
const maxUserDB = 4 << 20

// ResolveUser returns the numeric user and group that Config.User names, the way container
// runtimes read it: "" is root (0:0); "user" or "user:group", each a name or a number.
// Names are looked up in the image's /etc/passwd and /etc/group. A user given without a
// group gets the primary group of its passwd entry, or 0 for a number with no entry.
// Numbers need no entry.
//
// The files are read through the image's root, so symlinks in the image cannot make
// ResolveUser read host files. Errors: Invalid for a malformed User, or a name the image
// does not define.
func (im Image) ResolveUser() (uid, gid int, err error) {
	spec := im.Config.User
	if spec == "" {
		return 0, 0, nil
	}
	user, group, hasGroup := strings.Cut(spec, ":")
	if user == "" || hasGroup && group == "" || strings.Contains(group, ":") {
		return 0, 0, errkind.New(errkind.Invalid, "image user %q: want USER or USER:GROUP", spec)
	}
	db := &userDB{rootfs: im.RootFS}
	uid, gid, err = db.user(user)
	if err != nil {
		return 0, 0, fmt.Errorf("image user %q: %w", spec, err)
	}
	if hasGroup {
		if gid, err = db.group(group); err != nil {
			return 0, 0, fmt.Errorf("image user %q: %w", spec, err)
		}
	}
	return uid, gid, nil
}

// userDB reads an image's /etc/passwd and /etc/group.
type userDB struct {
	rootfs string
}

// user returns the uid of user (a name or a number) and its primary gid.
func (db *userDB) user(user string) (uid, gid int, err error) {
	n, numeric, err := parseID(user)
	if err != nil {
		return 0, 0, err
	}
	var found bool
	err = db.scan("etc/passwd", func(f []string) bool {
		// name:password:uid:gid:gecos:home:shell
		if len(f) < 4 {
			return false
		}
		if numeric && f[2] != user || !numeric && f[0] != user {
			return false
		}
		u, err1 := numericID(f[2])
		g, err2 := numericID(f[3])
		if err1 != nil || err2 != nil {
			return false
		}
		uid, gid, found = u, g, true
		return true
	})
	switch {
	case numeric && !found:
		// A number needs no entry (a missing passwd file included); its group is root.
		return n, 0, nil
	case err != nil:
		return 0, 0, err
	case !found:
		return 0, 0, errkind.New(errkind.Invalid, "no user %q in the image's /etc/passwd", user)
	}
	return uid, gid, nil
}

// group returns the gid of group (a name or a number).
func (db *userDB) group(group string) (int, error) {
	n, numeric, err := parseID(group)
	if err != nil || numeric {
		return n, err
	}
	gid, found := 0, false
	err = db.scan("etc/group", func(f []string) bool {
		// name:password:gid:members
		if len(f) < 3 || f[0] != group {
			return false
		}
		g, err := numericID(f[2])
		if err != nil {
			return false
		}
		gid, found = g, true
		return true
	})
	if err != nil {
		return 0, err
	}
	if !found {
		return 0, errkind.New(errkind.Invalid, "no group %q in the image's /etc/group", group)
	}
	return gid, nil
}

// parseID parses a user or group as given in Config.User. A string that does not start
// with a digit is a name (numeric false); one that does must be a valid id.
func parseID(s string) (id int, numeric bool, err error) {
	if s == "" || s[0] < '0' || s[0] > '9' {
		return 0, false, nil
	}
	id, err = numericID(s)
	return id, true, err
}

// numericID parses a uid or gid.
func numericID(s string) (int, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == 1<<32-1 { // (uid_t)-1 means "no change" to the kernel
		return 0, errkind.New(errkind.Invalid, "invalid id %q: want a number from 0 to %d", s, uint32(1<<32-2))
	}
	return int(n), nil
}

// scan calls match with the colon-separated fields of each line of the image file name
// until it returns true. A missing file is Invalid.
func (db *userDB) scan(name string, match func(fields []string) bool) error {
	root, err := os.OpenRoot(db.rootfs)
	if err != nil {
		return fmt.Errorf("opening the image's root: %w", err)
	}
	defer root.Close()
	f, err := root.Open(name)
	if errors.Is(err, fs.ErrNotExist) {
		return errkind.New(errkind.Invalid, "the image has no /%s", name)
	}
	if err != nil {
		return errkind.Wrap(errkind.Invalid, fmt.Errorf("opening the image's /%s: %w", name, err))
	}
	defer f.Close()
	sc := bufio.NewScanner(io.LimitReader(f, maxUserDB))
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		if match(strings.Split(line, ":")) {
			return nil
		}
	}
	if err := sc.Err(); err != nil {
		return errkind.Wrap(errkind.Invalid, fmt.Errorf("reading the image's /%s: %w", name, err))
	}
	return nil
}
