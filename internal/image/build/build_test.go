package build

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/image"
)

func TestArgs(t *testing.T) {
	r, ok := lookup("python-small")
	if !ok {
		t.Fatal("no python-small recipe")
	}
	got := r.args("/w/packages", []string{"/w/sessiond-stub-gdb.deb"})
	want := []string{
		"--variant=minbase",
		"--format=tar",
		"--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
		"--include=python3,python3-ipykernel,bash,python3-numpy,python3-pandas,python3-matplotlib,fonts-dejavu-core",
		`--aptopt=APT::Install-Recommends "false"`,
		`--aptopt=Acquire::Languages "none"`,
		"--dpkgopt=path-exclude=/usr/share/doc/*",
		"--dpkgopt=path-include=/usr/share/doc/*/copyright",
		"--dpkgopt=path-exclude=/usr/share/man/*",
		"--dpkgopt=path-exclude=/usr/share/info/*",
		"--dpkgopt=path-exclude=/usr/share/locale/*",
		"--dpkgopt=path-exclude=/usr/share/lintian/*",
		`--customize-hook=chroot "$1" groupadd --gid 1000 user`,
		`--customize-hook=chroot "$1" useradd --uid 1000 --gid 1000 --home-dir /home/user --create-home --shell /bin/bash user`,
		`--customize-hook=install -d -o 1000 -g 1000 -m 0755 "$1/mnt/data"`,
		"--include=/w/sessiond-stub-gdb.deb",
		"--hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount",
		`--customize-hook=chroot --userspec=1000:1000 "$1" env HOME=/home/user MPLBACKEND=Agg python3 -c "import matplotlib.pyplot"`,
		`--customize-hook=chroot "$1" dpkg-query -W -f '${Package}\t${Version}\n' > /w/packages`,
		"bookworm",
		"-",
		"deb http://deb.debian.org/debian bookworm main",
		"deb http://deb.debian.org/debian bookworm-updates main",
		"deb http://deb.debian.org/debian-security bookworm-security main",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("args mismatch (-want +got):\n%s", diff)
	}

	// Hooks come before the package listing; an awkward path is quoted for the shell.
	r, _ = lookup("python")
	got = r.args("/a b/it's", nil)
	hook := slices.Index(got, "--customize-hook="+r.Hooks[0])
	list := slices.Index(got, `--customize-hook=chroot "$1" dpkg-query -W -f '${Package}\t${Version}\n' > '/a b/it'\''s'`)
	if hook < 0 || list < 0 || hook > list {
		t.Errorf("python args: pip hook at %d, package listing at %d; want both, hook first:\n%q", hook, list, got)
	}
	if slices.ContainsFunc(got, func(a string) bool { return strings.Contains(a, "automount") }) {
		t.Errorf("python args without stubs mount files: %q", got)
	}
}

func TestRecipes(t *testing.T) {
	rs := Recipes()
	var names []string
	for _, r := range rs {
		names = append(names, r.Name)
		if r.Description == "" || len(r.Packages) == 0 {
			t.Errorf("recipe %s lacks a description or packages", r.Name)
		}
		if r.Config.User != "1000:1000" || r.Config.WorkingDir != "/mnt/data" || r.Config.Labels["sessiond.recipe"] != r.Name {
			t.Errorf("recipe %s config = %+v", r.Name, r.Config)
		}
	}
	if want := []string{"python", "python-small"}; !slices.Equal(names, want) {
		t.Errorf("recipes = %q, want %q", names, want)
	}
	// Recipes returns a copy.
	rs[0].Name = "changed"
	if Recipes()[0].Name != "python" {
		t.Error("Recipes exposes the table")
	}
	// The code interpreter has the libraries Azure preinstalls that Debian packages.
	py, _ := lookup("python")
	for _, p := range []string{"python3-ipykernel", "python3-numpy", "python3-pandas", "python3-matplotlib", "python3-scipy",
		"python3-sklearn", "python3-seaborn", "python3-statsmodels", "python3-sympy", "python3-networkx", "python3-pil",
		"python3-openpyxl", "python3-xlsxwriter", "python3-docx", "python3-reportlab", "python3-lxml", "python3-bs4",
		"python3-tabulate", "python3-requests", "fonts-dejavu-core", "ca-certificates"} {
		if !slices.Contains(py.Packages, p) {
			t.Errorf("python recipe lacks %s", p)
		}
	}
}

func TestReadPackages(t *testing.T) {
	tests := []struct {
		name    string
		content string
		want    []image.Package
		wantErr bool
	}{
		{name: "ok", content: "bash\t5.2.15-2+b13\npython3\t3.11.2-1+b1\n", want: []image.Package{{Name: "bash", Version: "5.2.15-2+b13"}, {Name: "python3", Version: "3.11.2-1+b1"}}},
		{name: "no final newline", content: "bash\t5.2", want: []image.Package{{Name: "bash", Version: "5.2"}}},
		{name: "empty", content: "", wantErr: true},
		{name: "no tab", content: "bash 5.2\n", wantErr: true},
		{name: "no version", content: "bash\t\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "packages")
			os.WriteFile(p, []byte(tt.content), 0o644)
			got, err := readPackages(p)
			if (err != nil) != tt.wantErr {
				t.Fatalf("readPackages error = %v, want error %v", err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("readPackages mismatch (-want +got):\n%s", diff)
			}
		})
	}
	if _, err := readPackages(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("readPackages of a missing file succeeded")
	}
}

// fakeMmdebstrap writes a script that stands in for mmdebstrap: it finds the package-list
// path in the dpkg-query hook, then runs body. $out is a small root filesystem to tar.
func fakeMmdebstrap(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "mmdebstrap")
	script := `#!/bin/sh
set -e
for a in "$@"; do
	case "$a" in
	--customize-hook=*dpkg-query*) pkgs="${a##*> }";;
	esac
done
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
mkdir -p "$out/etc" "$out/mnt/data"
echo fake > "$out/etc/os-release"
` + body
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestBuildFake(t *testing.T) {
	if _, err := exec.LookPath("tar"); err != nil {
		t.Skip("needs tar")
	}
	recipe := Recipe{Name: "fake", Packages: []string{"bash"}, Config: config("fake", "a fake")}
	tests := []struct {
		name    string
		body    string
		wantErr string // "" for success
	}{
		{name: "ok", body: `printf 'bash\t5.2\npython3\t3.11\n' > "$pkgs"; echo "I: progress" >&2; tar -C "$out" -cf - .`},
		{name: "fails early", body: `echo "E: no network" >&2; exit 1`, wantErr: "E: no network"},
		{name: "fails after the tarball", body: `printf 'bash\t5.2\n' > "$pkgs"; tar -C "$out" -cf - .; echo "E: cleanup failed" >&2; exit 2`, wantErr: "E: cleanup failed"},
		{name: "no package list", body: `tar -C "$out" -cf - .`, wantErr: "installed package list"},
		{name: "no tarball", body: `printf 'bash\t5.2\n' > "$pkgs"`, wantErr: "wrote no tarball"},
		{name: "garbage", body: `printf 'bash\t5.2\n' > "$pkgs"; head -c 4096 /dev/zero | tr '\0' x`, wantErr: "reading tar"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store, err := image.Open(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			var log strings.Builder
			im, err := build(context.Background(), store, recipe, fakeMmdebstrap(t, tt.body), &log)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("build error = %v, want one containing %q", err, tt.wantErr)
				}
				if list, _ := store.List(context.Background()); len(list) != 0 {
					t.Errorf("failed build left images %+v", list)
				}
				return
			}
			if err != nil {
				t.Fatalf("build: %v\nlog:\n%s", err, log.String())
			}
			want := recipe.Config
			want.Packages = []image.Package{{Name: "bash", Version: "5.2"}, {Name: "python3", Version: "3.11"}}
			if diff := cmp.Diff(want, im.Config); diff != "" {
				t.Errorf("config mismatch (-want +got):\n%s", diff)
			}
			if b, err := os.ReadFile(filepath.Join(im.RootFS, "etc/os-release")); err != nil || string(b) != "fake\n" {
				t.Errorf("etc/os-release = %q, %v", b, err)
			}
			if !strings.Contains(log.String(), "I: progress") {
				t.Errorf("log lacks mmdebstrap's output:\n%s", log.String())
			}
		})
	}
}

func TestBuildCancel(t *testing.T) {
	store, err := image.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	bin := fakeMmdebstrap(t, `trap 'echo "I: cleaning up" >&2; kill $!; exit 1' TERM; sleep 60 & wait`)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = build(ctx, store, Recipe{Name: "fake", Packages: []string{"bash"}}, bin, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("build error = %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("build took %v to stop", d)
	}
}

func TestBuildUnknownRecipe(t *testing.T) {
	store, err := image.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Build(context.Background(), store, "nope", nil); !errkind.Is(err, errkind.NotFound) {
		t.Errorf("Build(nope) = %v, want NotFound", err)
	}
}

func TestStubPackage(t *testing.T) {
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Skip("needs dpkg-deb")
	}
	deb, err := stubPackage(context.Background(), t.TempDir(), "gdb")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("dpkg-deb", "--field", deb, "Package", "Provides").Output()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(out), "Package: sessiond-stub-gdb\nProvides: gdb\n"; got != want {
		t.Errorf("stub fields = %q, want %q", got, want)
	}
}

// TestBuildPythonSmall builds the real python-small image: a few minutes and a few hundred
// MB from the Debian mirror, so only with SESSIOND_TEST_BUILD=1 (and as root).
func TestBuildPythonSmall(t *testing.T) {
	if os.Getenv("SESSIOND_TEST_BUILD") != "1" {
		t.Skip("set SESSIOND_TEST_BUILD=1 to build python-small with mmdebstrap")
	}
	if os.Geteuid() != 0 {
		t.Skip("building images needs root")
	}
	ctx := context.Background()
	store, err := image.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var log strings.Builder
	im, err := Build(ctx, store, "python-small", &log)
	if err != nil {
		t.Fatalf("Build: %v\nlog:\n%s", err, log.String())
	}
	t.Logf("python-small: %s, %d bytes", im.ID, im.Size)
	var pkgs []string
	for _, p := range im.Config.Packages {
		pkgs = append(pkgs, p.Name)
	}
	for _, p := range []string{"python3", "python3-ipykernel", "bash", "sessiond-stub-gdb"} {
		if !slices.Contains(pkgs, p) {
			t.Errorf("packages lack %s: %q", p, pkgs)
		}
	}
	for _, p := range []string{"gdb", "usrmerge", "perl"} {
		if slices.Contains(pkgs, p) {
			t.Errorf("packages include %s", p)
		}
	}
	passwd, err := os.ReadFile(filepath.Join(im.RootFS, "etc/passwd"))
	if err != nil || !strings.Contains(string(passwd), "user:x:1000:1000::/home/user:/bin/bash") {
		t.Errorf("etc/passwd lacks the sandbox user: %v\n%s", err, passwd)
	}
	if fi, err := os.Stat(filepath.Join(im.RootFS, "mnt/data")); err != nil || !fi.IsDir() {
		t.Errorf("mnt/data: %v", err)
	}
	if lists, _ := filepath.Glob(filepath.Join(im.RootFS, "var/lib/apt/lists/*_Packages*")); len(lists) > 0 {
		t.Errorf("apt lists were not cleaned: %q", lists)
	}
	var docs []string // regular files; dangling changelog symlinks that postinsts make are fine
	filepath.WalkDir(filepath.Join(im.RootFS, "usr/share/doc"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() && d.Name() != "copyright" {
			docs = append(docs, p)
		}
		return nil
	})
	if len(docs) > 0 {
		t.Errorf("docs were not excluded: %q", docs[:min(3, len(docs))])
	}
	// A chroot has no /dev or /proc (the runtime provides them), so only look ipykernel up.
	out, err := exec.CommandContext(ctx, "chroot", "--userspec=1000:1000", im.RootFS, "/usr/bin/python3", "-c",
		"import importlib.util, sys; print(sys.version_info[:2], importlib.util.find_spec('ipykernel') is not None)").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "(3, 11) True") {
		t.Errorf("python3 in the image: %v\n%s", err, out)
	}
}
