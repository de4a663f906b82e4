package build

import (
	"slices"
	"strings"

	"github.com/sessiond/sessiond/internal/image"
)

// Recipe is a named way to build an image: Debian packages installed on the minbase
// variant, and the image config recorded with it.
type Recipe struct {
	Name        string
	Description string
	// Packages are installed on top of minbase, without recommends.
	Packages []string
	// Stubs are packages that Packages depend on but a sandbox never uses. An empty
	// package that provides each is installed in its place (see stubPackage).
	Stubs []string
	// Hooks are extra mmdebstrap customize hooks: shell commands run on the host after
	// the packages are installed, with the root filesystem's path in "$1".
	Hooks []string
	// Config is recorded with the image; Build fills in Config.Packages.
	Config image.Config
}

// Recipes returns the known recipes.
func Recipes() []Recipe { return slices.Clone(recipes) }

func lookup(name string) (Recipe, bool) {
	i := slices.IndexFunc(recipes, func(r Recipe) bool { return r.Name == name })
	if i < 0 {
		return Recipe{}, false
	}
	return recipes[i], true
}

func recipeNames() []string {
	var ns []string
	for _, r := range recipes {
		ns = append(ns, r.Name)
	}
	return ns
}

// The sandbox user. The agent runs user code as this uid; /mnt/data belongs to it.
const (
	userName = "user"
	userID   = "1000"
	userHome = "/home/user"
	dataDir  = "/mnt/data"
)

// config is the image config both recipes share.
func config(recipe, description string) image.Config {
	return image.Config{
		Env: []string{
			"PATH=" + userHome + "/.local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
			"LANG=C.UTF-8",
			"HOME=" + userHome,
			"PYTHONUNBUFFERED=1",
			// ipykernel imports debugpy, which otherwise warns on every kernel start
			// that Python's frozen modules may hide breakpoints.
			"PYDEVD_DISABLE_FILE_VALIDATION=1",
		},
		WorkingDir: dataDir,
		User:       userID + ":" + userID,
		Labels: map[string]string{
			"sessiond.recipe":                      recipe,
			"sessiond.debian.suite":                suite,
			"org.opencontainers.image.description": description,
		},
	}
}

// pythonPackages are the Debian packages of the default code-interpreter image. The
// libraries follow what Azure's PythonLTS sessions preinstall (azure-api.md §3.5.1), in
// Debian 12's versions (numpy 1.24, pandas 1.5, matplotlib 3.6, scipy 1.10, scikit-learn
// 1.2, ...), which are older than Azure's pip-installed ones.
//
// Azure preinstalls two libraries bookworm does not package: pyarrow and python-pptx.
// They are left out; with egress enabled, "!pip install python-pptx pyarrow" adds them.
var pythonPackages = []string{
	"python3",
	"python3-ipykernel",
	// Azure's list, by Python name: numpy, pandas, matplotlib, scipy, scikit-learn,
	// seaborn, statsmodels, sympy, networkx, Pillow, openpyxl, XlsxWriter, python-docx,
	// reportlab, lxml, beautifulsoup4, tabulate, requests.
	"python3-numpy",
	"python3-pandas",
	"python3-matplotlib",
	"python3-scipy",
	"python3-sklearn",
	"python3-seaborn",
	"python3-statsmodels",
	"python3-sympy",
	"python3-networkx",
	"python3-pil",
	"python3-openpyxl",
	"python3-xlsxwriter",
	"python3-docx",
	"python3-reportlab",
	"python3-lxml",
	"python3-bs4",
	"python3-tabulate",
	"python3-requests",
	// pkg_resources is how Azure's docs list installed packages; xlrd lets pandas read
	// .xls; pip (made to install into ~/.local, see the hook) serves "!pip install".
	"python3-pkg-resources",
	"python3-xlrd",
	"python3-pip",
	// Fonts for matplotlib (DejaVu is its default) and metric-compatible Arial/Times.
	"fonts-dejavu-core",
	"fonts-liberation2",
	"bash",
	"coreutils",
	"ca-certificates",
	"tzdata",
}

// Stubs that keep tools out of the Python images (see Recipe.Stubs):
//
//   - gdb: ipykernel depends on debugpy, which depends on gdb (and gdb on libicu, boost and
//     libpython), about 70 MB needed only to attach a debugger to another process. Kernels
//     import debugpy without it.
//   - python3-pythran: scipy depends on the Pythran compiler, which pulls in g++, Boost,
//     OpenBLAS and Python headers (about 500 MB). scipy's Pythran modules are compiled
//     extensions; nothing imports pythran at run time.
var (
	smallStubs  = []string{"gdb", "python3-pythran"}
	pythonStubs = []string{"gdb", "python3-pythran"}
)

// fontCacheHook builds matplotlib's font list into the image's home (about a quarter of
// a CPU-second that every kernel's first `import matplotlib.pyplot` paid otherwise).
// Each sandbox starts with a copy of the image's home, so the cache is found there.
const fontCacheHook = `chroot --userspec=` + userID + ":" + userID + ` "$1" env HOME=` + userHome +
	` MPLBACKEND=Agg python3 -c "import matplotlib.pyplot"`

var recipes = []Recipe{
	{
		Name:        "python",
		Description: "the default code interpreter: Python 3.11, ipykernel and the data-science libraries Azure preinstalls (about 800 MiB)",
		Packages:    pythonPackages,
		Stubs:       pythonStubs,
		Hooks: []string{
			// Debian marks its Python externally managed (PEP 668); in a throwaway sandbox
			// "pip install" should just work, into ~/.local as the sandbox user.
			`printf '[global]\nbreak-system-packages = true\n' > "$1/etc/pip.conf"`,
			fontCacheHook,
		},
		Config: config("python", "sessiond code interpreter: Debian 12, Python 3, ipykernel, data-science libraries"),
	},
	{
		Name:        "python-small",
		Description: "Python 3.11, ipykernel, numpy, pandas and matplotlib: the default warm-up's imports, for tests",
		Packages:    []string{"python3", "python3-ipykernel", "bash", "python3-numpy", "python3-pandas", "python3-matplotlib", "fonts-dejavu-core"},
		Stubs:       smallStubs,
		Hooks:       []string{fontCacheHook},
		Config:      config("python-small", "sessiond test image: Debian 12, Python 3, ipykernel"),
	},
}

// args returns mmdebstrap's arguments for r: the tarball goes to stdout, and the installed
// package list to pkgFile on the host. stubs are the paths of the .deb files made for
// r.Stubs.
func (r Recipe) args(pkgFile string, stubs []string) []string {
	args := []string{
		"--variant=minbase",
		"--format=tar",
		// Merged /usr the way debootstrap and Debian's container images do it, with
		// symlinks, instead of the usrmerge package, which pulls in 50 MB of Perl.
		"--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
		"--include=" + strings.Join(r.Packages, ","),
		// Recommends stay out of the build and, as apt.conf, of the image.
		`--aptopt=APT::Install-Recommends "false"`,
		`--aptopt=Acquire::Languages "none"`,
		// Documentation, man pages and translations are dead weight in a sandbox. The
		// exclusions stay in dpkg.cfg.d, so they also apply to later installs.
		"--dpkgopt=path-exclude=/usr/share/doc/*",
		"--dpkgopt=path-include=/usr/share/doc/*/copyright",
		"--dpkgopt=path-exclude=/usr/share/man/*",
		"--dpkgopt=path-exclude=/usr/share/info/*",
		"--dpkgopt=path-exclude=/usr/share/locale/*",
		"--dpkgopt=path-exclude=/usr/share/lintian/*",
		`--customize-hook=chroot "$1" groupadd --gid ` + userID + " " + userName,
		`--customize-hook=chroot "$1" useradd --uid ` + userID + " --gid " + userID +
			" --home-dir " + userHome + " --create-home --shell /bin/bash " + userName,
		`--customize-hook=install -d -o ` + userID + " -g " + userID + ` -m 0755 "$1` + dataDir + `"`,
	}
	// One option per .deb path: mmdebstrap takes an option starting with "/" as one path.
	// dpkg runs inside the chroot, where the automount hook makes the files visible.
	for _, deb := range stubs {
		args = append(args, "--include="+deb)
	}
	if len(stubs) > 0 {
		args = append(args, "--hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount")
	}
	for _, h := range r.Hooks {
		args = append(args, "--customize-hook="+h)
	}
	// Last, so it lists everything the hooks may have added. mmdebstrap's own cleanup
	// (apt lists and caches, logs, /tmp) runs after the hooks.
	args = append(args,
		`--customize-hook=chroot "$1" dpkg-query -W -f '${Package}\t${Version}\n' > `+quote(pkgFile),
		suite,
		"-",
		"deb "+mirror+" "+suite+" main",
		"deb "+mirror+" "+suite+"-updates main",
		"deb "+securityMirror+" "+suite+"-security main",
	)
	return args
}
