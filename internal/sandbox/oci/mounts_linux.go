package oci

import (
	"errors"
	"fmt"
	"strconv"

	"golang.org/x/sys/unix"
)

// mountTmpfs mounts a size-limited tmpfs at dir, owned by uid:gid, mode 0710.
func mountTmpfs(dir string, size int64, uid, gid uint32) error {
	opts := "size=" + strconv.FormatInt(size, 10) + ",mode=0710,uid=" + strconv.FormatUint(uint64(uid), 10) +
		",gid=" + strconv.FormatUint(uint64(gid), 10)
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		return fmt.Errorf("mounting tmpfs at %s: %w", dir, err)
	}
	return nil
}

// mountOverlay mounts an overlay of the read-only lower dir with upper and work dirs at target.
func mountOverlay(lower, upper, work, target string) error {
	opts := "lowerdir=" + lower + ",upperdir=" + upper + ",workdir=" + work
	if err := unix.Mount("overlay", target, "overlay", 0, opts); err != nil {
		return fmt.Errorf("mounting overlay at %s: %w", target, err)
	}
	return nil
}

// unmount detaches the mount at target, if any. A path that is not a mount point, or that
// does not exist, is not an error.
func unmount(target string) error {
	for i := 0; i < 8; i++ {
		err := unix.Unmount(target, unix.MNT_DETACH)
		switch {
		case err == nil:
			continue // mounts may be stacked; unmount until none is left
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
			return nil
		default:
			return fmt.Errorf("unmounting %s: %w", target, err)
		}
	}
	return fmt.Errorf("unmounting %s: still mounted after 8 attempts", target)
}
