package netns

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/sessiond/sessiond/internal/loopback"
)

// Create makes a new network namespace at path (see createNamespace); Remove removes it.
// With Do they let tests and tools build namespaces of their own (netnstest's stand-in
// internet).
func Create(path string) error { return createNamespace(path) }

// Remove unmounts and removes a namespace made by Create; a missing one is not an error.
func Remove(path string) error { return removeNamespace(path) }

// Do runs fn on an OS thread inside the network namespace at path. Sockets fn creates
// belong to that namespace for their whole life, so a listener or connection made in fn
// can be used from any goroutine afterwards. fn must not start goroutines that create
// sockets (they would run elsewhere).
func Do(path string, fn func() error) error { return inNamespace(path, fn) }

// createNamespace makes a new network namespace and keeps it alive by bind-mounting it on
// path (a new file), the way `ip netns add` does, so that it outlives every process in it
// and can be found by name after a restart. In the new namespace loopback is up and IPv6
// is disabled (sandboxes get no IPv6 route; interfaces moved in later inherit the default).
func createNamespace(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fmt.Errorf("creating network namespace file: %w", err)
	}
	f.Close()
	err = onNewThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unsharing network namespace: %w", err)
		}
		self := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		if err := unix.Mount(self, path, "none", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind-mounting network namespace: %w", err)
		}
		return configureNamespace()
	})
	if err != nil {
		_ = removeNamespace(path)
		return err
	}
	return nil
}

// configureNamespace runs in the new namespace.
func configureNamespace() error {
	for _, s := range []string{"net/ipv6/conf/all/disable_ipv6", "net/ipv6/conf/default/disable_ipv6"} {
		if err := writeSysctl(s, "1"); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return loopback.Up()
}

// removeNamespace unmounts and removes a namespace file made by createNamespace. The
// namespace itself goes away with the last process in it. A missing file is not an error.
func removeNamespace(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmounting network namespace %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing network namespace %s: %w", path, err)
	}
	return nil
}

// isNamespace reports whether path is a mounted network namespace.
func isNamespace(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.NSFS_MAGIC
}

// inNamespace runs fn on an OS thread that has joined the network namespace at path. The
// thread is never handed back to the Go scheduler (it exits with the goroutine), so no
// other goroutine can run in the sandbox's namespace by accident.
func inNamespace(path string, fn func() error) error {
	return onNewThread(func() error {
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("opening network namespace: %w", err)
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("joining network namespace: %w", err)
		}
		return fn()
	})
}

// onNewThread runs fn on a goroutine locked to its OS thread and waits for it. The lock is
// never released: Go ends the thread when the goroutine returns, taking any namespace
// change with it.
func onNewThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- fn()
	}()
	return <-errc
}

// writeSysctl writes value to /proc/sys/<name> of the calling thread's network namespace.
func writeSysctl(name, value string) error {
	p := filepath.Join("/proc/sys", name)
	if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
		return fmt.Errorf("setting %s: %w", strings.ReplaceAll(name, "/", "."), err)
	}
	return nil
}

func readSysctl(name string) (string, error) {
	b, err := os.ReadFile(filepath.Join("/proc/sys", name))
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", strings.ReplaceAll(name, "/", "."), err)
	}
	return strings.TrimSpace(string(b)), nil
}
