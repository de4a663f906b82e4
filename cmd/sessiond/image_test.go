package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/sessiond/sessiond/internal/image/imagetest"
)

// withStdin runs f with os.Stdin reading input.
func withStdin(t *testing.T, input string, f func()) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		w.WriteString(input)
		w.Close()
	}()
	old := os.Stdin
	os.Stdin = r
	defer func() {
		os.Stdin = old
		r.Close()
	}()
	f()
}

// TestImagePull pulls from an in-process registry that wants credentials, through the
// command line as a user types it.
func TestImagePull(t *testing.T) {
	ctx := context.Background()
	dataDir := t.TempDir()
	reg := imagetest.NewRegistry(t, imagetest.RegistryOptions{Username: "robot", Password: "s3cret"})
	ref := reg.Ref("team/app:v1")
	img := imagetest.Image(t, imagetest.ImageSpec{
		Config: v1.Config{Entrypoint: []string{"/app"}, User: "1000"},
		Layers: []v1.Layer{imagetest.Layer(t, imagetest.File{Name: "app", Body: []byte("#!"), Mode: 0o755})},
	})
	digest := reg.Push(t, ref, img)
	pull := func(stdin string, args ...string) (stdout, stderr string, err error) {
		var out, errb bytes.Buffer
		withStdin(t, stdin, func() {
			err = run(ctx, append([]string{"-data-dir", dataDir, "image", "pull"}, args...), &out, &errb)
		})
		return out.String(), errb.String(), err
	}

	_, _, err := pull("", ref)
	if err == nil || !strings.Contains(err.Error(), "registry "+reg.Host+" requires credentials") {
		t.Errorf("pull without credentials = %v, want an error naming the registry", err)
	}
	_, _, err = pull("wrong\n", ref, "--username", "robot", "--password-stdin")
	if err == nil || !strings.Contains(err.Error(), `rejected the credentials of user "robot"`) {
		t.Errorf("pull with a wrong password = %v, want the credentials rejected", err)
	}
	if _, _, err = pull("", ref, "--username", "robot"); !isUsage(err) {
		t.Errorf("pull with -username alone = %v, want a usage error", err)
	}
	if _, _, err = pull(""); !isUsage(err) {
		t.Errorf("pull without a reference = %v, want a usage error", err)
	}

	// Flags after the reference, as the usage line shows them.
	out, _, err := pull("s3cret\n", ref, "--username", "robot", "--password-stdin")
	if err != nil {
		t.Fatal(err)
	}
	if f := strings.Fields(out); len(f) < 3 || f[0] != ref || f[1] != digest.String() {
		t.Errorf("pull printed %q, want %s %s SIZE", out, ref, digest)
	}
	// And before it.
	if out, _, err = pull("s3cret", "-username=robot", "-password-stdin", ref); err != nil || !strings.Contains(out, digest.String()) {
		t.Errorf("pull with flags first = %q, %v", out, err)
	}

	var ls bytes.Buffer
	if err := run(ctx, []string{"-data-dir", dataDir, "image", "ls", "-o", "json"}, &ls, &ls); err != nil {
		t.Fatal(err)
	}
	var ims []struct {
		Name, Digest string
		Config       struct{ Entrypoint []string }
	}
	if err := json.Unmarshal(ls.Bytes(), &ims); err != nil {
		t.Fatalf("image ls: %v\n%s", err, ls.Bytes())
	}
	if len(ims) != 1 || ims[0].Name != ref || ims[0].Digest != digest.String() || len(ims[0].Config.Entrypoint) != 1 {
		t.Errorf("image ls = %+v, want %s with digest %s and its entrypoint", ims, ref, digest)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "images", "blobs", "sha256")); err != nil {
		t.Error(err)
	}
}

func isUsage(err error) bool {
	_, ok := err.(usageError)
	return ok
}
