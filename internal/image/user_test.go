package image

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sessiond/sessiond/internal/errkind"
)

func writeFiles(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, body := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestResolveUser(t *testing.T) {
	withDB := t.TempDir()
	writeFiles(t, withDB, map[string]string{
		"etc/passwd": "# users\nroot:x:0:0:root:/root:/bin/sh\n\napp:x:1000:1001::/home/app:/bin/sh\nbroken:x:notanumber:0::/:/bin/sh\nshort:x\nsvc:x:2000:2000::/:/bin/sh\n",
		"etc/group":  "root:x:0:\napp:x:1001:\nstaff:x:50:app\nbad:x:zz:\n",
	})
	withoutDB := t.TempDir()
	// An image whose /etc/passwd points at the host's: it must not be read.
	hostile := t.TempDir()
	hostPasswd := filepath.Join(t.TempDir(), "passwd")
	writeFiles(t, filepath.Dir(hostPasswd), map[string]string{"passwd": "host:x:4242:4242::/:/bin/sh\n"})
	os.MkdirAll(filepath.Join(hostile, "etc"), 0o755)
	if err := os.Symlink(hostPasswd, filepath.Join(hostile, "etc/passwd")); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		rootfs, user string
		uid, gid     int
		err          string // substring of the error; "" for success
	}{
		{withDB, "", 0, 0, ""},
		{withDB, "root", 0, 0, ""},
		{withDB, "0", 0, 0, ""},
		{withDB, "app", 1000, 1001, ""},
		{withDB, "1000", 1000, 1001, ""},
		{withDB, "1000:1000", 1000, 1000, ""},
		{withDB, "app:staff", 1000, 50, ""},
		{withDB, "app:7", 1000, 7, ""},
		{withDB, "svc:app", 2000, 1001, ""},
		{withDB, "1234", 1234, 0, ""},
		{withDB, "1234:staff", 1234, 50, ""},
		{withDB, "4294967294", 4294967294, 0, ""},
		{withDB, "nobody", 0, 0, `no user "nobody" in the image's /etc/passwd`},
		{withDB, "broken", 0, 0, `no user "broken"`},
		{withDB, "short", 0, 0, `no user "short"`},
		{withDB, "app:nogroup", 0, 0, `no group "nogroup" in the image's /etc/group`},
		{withDB, "app:bad", 0, 0, `no group "bad"`},
		{withDB, "app:", 0, 0, "want USER or USER:GROUP"},
		{withDB, ":50", 0, 0, "want USER or USER:GROUP"},
		{withDB, "a:b:c", 0, 0, "want USER or USER:GROUP"},
		{withDB, "4294967295", 0, 0, "invalid id"},
		{withDB, "99999999999", 0, 0, "invalid id"},
		{withDB, "12ab", 0, 0, "invalid id"},
		{withoutDB, "1000", 1000, 0, ""},
		{withoutDB, "1000:1000", 1000, 1000, ""},
		{withoutDB, "app", 0, 0, "the image has no /etc/passwd"},
		{withoutDB, "1000:staff", 0, 0, "the image has no /etc/group"},
		{hostile, "host", 0, 0, "/etc/passwd"},
		{hostile, "4242", 4242, 0, ""},
	} {
		im := Image{RootFS: tc.rootfs, Config: Config{User: tc.user}}
		uid, gid, err := im.ResolveUser()
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%s: ResolveUser(%q) = %v", filepath.Base(tc.rootfs), tc.user, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err) || !errkind.Is(err, errkind.Invalid)):
			t.Errorf("ResolveUser(%q) = %d, %d, %v; want an Invalid error with %q", tc.user, uid, gid, err, tc.err)
		case tc.err == "" && (uid != tc.uid || gid != tc.gid):
			t.Errorf("ResolveUser(%q) = %d, %d; want %d, %d", tc.user, uid, gid, tc.uid, tc.gid)
		}
	}
}
