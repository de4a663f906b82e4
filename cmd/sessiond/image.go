package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sessiond/sessiond/internal/image"
	"github.com/sessiond/sessiond/internal/image/build"
)

func cmdImage(ctx context.Context, g *globals, args []string) error {
	if len(args) == 0 {
		return usagef("usage: sessiond image build|import|pull|ls|rm|inspect [flags] [args]")
	}
	switch args[0] {
	case "build":
		return imageBuild(ctx, g, args[1:])
	case "import":
		return imageImport(ctx, g, args[1:])
	case "pull":
		return imagePull(ctx, g, args[1:])
	case "ls", "list":
		return imageList(ctx, g, args[1:])
	case "rm", "remove":
		return imageRemove(ctx, g, args[1:])
	case "inspect":
		return imageInspect(ctx, g, args[1:])
	}
	return usagef("image: unknown subcommand %q (build, import, pull, ls, rm, inspect)", args[0])
}

// imageFlags returns a flag set for "image <sub>" whose usage shows synopsis.
func imageFlags(g *globals, sub, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet("image "+sub, flag.ContinueOnError)
	fs.SetOutput(g.Stderr)
	fs.Usage = func() {
		fmt.Fprintf(g.Stderr, "usage: sessiond image %s %s\n", sub, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// imageParse parses args; ok is false when the command should stop, with err nil after -h.
func imageParse(fs *flag.FlagSet, args []string) (ok bool, err error) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return false, nil
		}
		return false, usageError{err.Error()}
	}
	return true, nil
}

func imageBuild(ctx context.Context, g *globals, args []string) error {
	fs := imageFlags(g, "build", "RECIPE")
	quiet := fs.Bool("q", false, "do not show mmdebstrap's progress")
	recipes := build.Recipes()
	fs.Usage = func() {
		fmt.Fprintf(g.Stderr, "usage: sessiond image build [-q] RECIPE\n\nBuilds a Debian 12 image with mmdebstrap and stores it under the recipe's name.\n\nrecipes:\n")
		for _, r := range recipes {
			fmt.Fprintf(g.Stderr, "  %-13s %s\n", r.Name, r.Description)
		}
		fmt.Fprintln(g.Stderr)
		fs.PrintDefaults()
	}
	if ok, err := imageParse(fs, args); !ok {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return usagef("image build: give one recipe name")
	}
	store, err := openImages(g)
	if err != nil {
		return err
	}
	var log io.Writer = g.Stderr
	if *quiet {
		log = nil
	}
	im, err := build.Build(ctx, store, fs.Arg(0), log)
	if err != nil {
		return err
	}
	fmt.Fprintf(g.Stdout, "%s %s %s\n", im.Name, im.ID, imageHumanSize(im.Size))
	return nil
}

func imageImport(ctx context.Context, g *globals, args []string) error {
	fs := imageFlags(g, "import", "[flags] NAME TARBALL|-")
	var env, labels stringList
	fs.Var(&env, "env", "KEY=VALUE for the image's environment (repeatable)")
	fs.Var(&labels, "label", "KEY=VALUE label (repeatable)")
	user := fs.String("user", "", "user the image runs as, e.g. 1000:1000")
	workdir := fs.String("workdir", "", "working directory, e.g. /mnt/data")
	if ok, err := imageParse(fs, args); !ok {
		return err
	}
	if fs.NArg() != 2 {
		return usagef("usage: sessiond image import [flags] NAME TARBALL|- (see -h)")
	}
	cfg := image.Config{Env: env, User: *user, WorkingDir: *workdir}
	for _, l := range labels {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return usagef("image import: -label %q: want KEY=VALUE", l)
		}
		if cfg.Labels == nil {
			cfg.Labels = map[string]string{}
		}
		cfg.Labels[k] = v
	}
	for _, e := range env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			return usagef("image import: -env %q: want KEY=VALUE", e)
		}
	}
	var r io.Reader = os.Stdin
	if path := fs.Arg(1); path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		r = f
	}
	store, err := openImages(g)
	if err != nil {
		return err
	}
	im, err := store.Import(ctx, fs.Arg(0), r, cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(g.Stdout, "%s %s %s\n", im.Name, im.ID, imageHumanSize(im.Size))
	return nil
}

// maxPasswordInput bounds what -password-stdin reads; registry tokens are a few KiB.
const maxPasswordInput = 64 << 10

func imagePull(ctx context.Context, g *globals, args []string) error {
	fs := imageFlags(g, "pull", "REF [-username USER -password-stdin] [-insecure]")
	username := fs.String("username", "", "registry user name")
	passwordStdin := fs.Bool("password-stdin", false, "read the registry password (or token) from standard input")
	insecure := fs.Bool("insecure", false, "allow plain HTTP and unverified TLS (always allowed for loopback registries)")
	maxSize := fs.Int64("max-size", image.DefaultMaxPullSize, "largest image to pull, in bytes (downloaded, and unpacked)")
	refs, ok, err := imageParseInterspersed(fs, args)
	if !ok {
		return err
	}
	if len(refs) != 1 {
		return usagef("usage: sessiond image pull REF [-username USER -password-stdin] [-insecure] (see -h)")
	}
	if (*username != "") != *passwordStdin {
		return usagef("image pull: -username and -password-stdin go together")
	}
	opts := image.PullOptions{Username: *username, Insecure: *insecure, MaxSize: *maxSize}
	if *passwordStdin {
		b, err := io.ReadAll(io.LimitReader(os.Stdin, maxPasswordInput+1))
		if err != nil {
			return fmt.Errorf("reading the password from standard input: %w", err)
		}
		if len(b) > maxPasswordInput {
			return usagef("image pull: the password on standard input is longer than %d bytes", maxPasswordInput)
		}
		opts.Password = strings.TrimRight(string(b), "\r\n")
		if opts.Password == "" {
			return usagef("image pull: -password-stdin read an empty password")
		}
	}
	store, err := openImages(g)
	if err != nil {
		return err
	}
	im, err := store.Pull(ctx, refs[0], opts)
	if err != nil {
		return err
	}
	fmt.Fprintf(g.Stdout, "%s %s %s\n", im.Name, im.Digest, imageHumanSize(im.Size))
	return nil
}

// imageParseInterspersed parses args allowing flags after positional arguments, as in
// "image pull REF -insecure", and returns the positional ones; ok is as for imageParse.
func imageParseInterspersed(fs *flag.FlagSet, args []string) (pos []string, ok bool, err error) {
	for {
		if ok, err := imageParse(fs, args); !ok {
			return nil, false, err
		}
		// After "--" everything is positional.
		if n := len(args) - len(fs.Args()); n > 0 && args[n-1] == "--" {
			return append(pos, fs.Args()...), true, nil
		}
		if fs.NArg() == 0 {
			return pos, true, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

func imageList(ctx context.Context, g *globals, args []string) error {
	fs := imageFlags(g, "ls", "[-o table|json]")
	output := fs.String("o", "table", "output format: table or json")
	if ok, err := imageParse(fs, args); !ok {
		return err
	}
	if fs.NArg() != 0 || *output != "table" && *output != "json" {
		return usagef("usage: sessiond image ls [-o table|json]")
	}
	store, err := openImages(g)
	if err != nil {
		return err
	}
	ims, err := store.List(ctx)
	if err != nil {
		return err
	}
	if *output == "json" {
		if ims == nil {
			ims = []image.Image{}
		}
		return imageWriteJSON(g.Stdout, ims)
	}
	tw := tabwriter.NewWriter(g.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tID\tSIZE\tCREATED")
	for _, im := range ims {
		name := im.Name
		if name == "" {
			name = "<none>"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", name, im.ShortID(), imageHumanSize(im.Size), im.Created.Local().Format(time.DateTime))
	}
	return tw.Flush()
}

func imageRemove(ctx context.Context, g *globals, args []string) error {
	fs := imageFlags(g, "rm", "REF...")
	if ok, err := imageParse(fs, args); !ok {
		return err
	}
	if fs.NArg() == 0 {
		return usagef("usage: sessiond image rm REF... (a name, an ID or an ID prefix of 12+ hex digits)")
	}
	store, err := openImages(g)
	if err != nil {
		return err
	}
	var errs []error
	for _, ref := range fs.Args() {
		if err := store.Remove(ctx, ref); err != nil {
			errs = append(errs, err)
			continue
		}
		fmt.Fprintln(g.Stdout, ref)
	}
	return errors.Join(errs...)
}

func imageInspect(ctx context.Context, g *globals, args []string) error {
	fs := imageFlags(g, "inspect", "REF")
	if ok, err := imageParse(fs, args); !ok {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("usage: sessiond image inspect REF")
	}
	store, err := openImages(g)
	if err != nil {
		return err
	}
	im, err := store.Get(ctx, fs.Arg(0))
	if err != nil {
		return err
	}
	return imageWriteJSON(g.Stdout, im)
}

func imageWriteJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// imageHumanSize formats n bytes with a binary unit, as "1.4 GiB".
func imageHumanSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
