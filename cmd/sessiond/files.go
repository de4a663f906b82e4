package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/sessiond/sessiond/internal/client"
)

// cmdFiles moves files in and out of a session of a running server (the data plane's
// files, in /mnt/data):
//
//	sessiond files upload -pool P -identifier ID LOCAL [REMOTE]
//	sessiond files list -pool P -identifier ID
//	sessiond files download -pool P -identifier ID REMOTE [LOCAL]   (LOCAL '-': standard output)
//	sessiond files rm -pool P -identifier ID REMOTE
func cmdFiles(ctx context.Context, g *globals, args []string) error {
	return subcommand(g, "files", args, map[string]func([]string) error{
		"upload":   func(a []string) error { return filesCmd(ctx, g, "upload", "LOCAL [REMOTE]", 1, 2, a) },
		"list":     func(a []string) error { return filesCmd(ctx, g, "list", "", 0, 0, a) },
		"download": func(a []string) error { return filesCmd(ctx, g, "download", "REMOTE [LOCAL|-]", 1, 2, a) },
		"rm":       func(a []string) error { return filesCmd(ctx, g, "rm", "REMOTE", 1, 1, a) },
	}, []string{"upload", "list", "download", "rm"})
}

func filesCmd(ctx context.Context, g *globals, sub, argUsage string, min, max int, args []string) error {
	var rf remoteFlags
	fs := newFlagSet(g, "files "+sub, "files "+sub+" -pool POOL -identifier ID "+argUsage, &rf)
	poolName := fs.String("pool", "", "the pool (required)")
	identifier := fs.String("identifier", "", "the session identifier (required)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs("files "+sub, pos, min, max); err != nil {
		return err
	}
	if *poolName == "" || *identifier == "" {
		return usagef("files %s: -pool and -identifier are required", sub)
	}
	c, err := rf.client()
	if err != nil {
		return err
	}
	p, id := *poolName, *identifier
	switch sub {
	case "upload":
		remote := filepath.Base(pos[0])
		if len(pos) == 2 {
			remote = pos[1]
		}
		f, err := os.Open(pos[0])
		if err != nil {
			return err
		}
		defer f.Close()
		fi, err := c.UploadFile(ctx, p, id, remote, f)
		if err != nil {
			return err
		}
		if rf.json() {
			return printJSON(g.Stdout, fi)
		}
		fmt.Fprintf(g.Stdout, "uploaded %s (%d bytes)\n", remote, fi.SizeInBytes)
	case "list":
		files, err := c.ListFiles(ctx, p, id)
		if err != nil {
			return err
		}
		if rf.json() {
			if files == nil {
				files = []client.File{}
			}
			return printJSON(g.Stdout, files)
		}
		var rows [][]string
		for _, f := range files {
			rows = append(rows, []string{f.Name, f.Type, strconv.FormatInt(f.SizeInBytes, 10), f.LastModifiedAt})
		}
		return table(g.Stdout, []string{"NAME", "TYPE", "SIZE", "MODIFIED"}, rows)
	case "download":
		return download(ctx, g, c, p, id, pos)
	case "rm":
		if err := c.DeleteFile(ctx, p, id, pos[0]); err != nil {
			return err
		}
		if !rf.json() {
			fmt.Fprintf(g.Stdout, "removed %s\n", pos[0])
		}
	}
	return nil
}

// download writes the remote file pos[0] to pos[1] (default: its base name; "-":
// standard output). A failed download leaves no partial file.
func download(ctx context.Context, g *globals, c *client.Client, pool, id string, pos []string) error {
	local := filepath.Base(pos[0])
	if len(pos) == 2 {
		local = pos[1]
	}
	if local == "-" {
		_, err := c.DownloadFile(ctx, pool, id, pos[0], g.Stdout)
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(local), "."+filepath.Base(local)+".part-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	n, err := c.DownloadFile(ctx, pool, id, pos[0], tmp)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), local); err != nil {
		return err
	}
	fmt.Fprintf(g.Stdout, "downloaded %s to %s (%d bytes)\n", pos[0], local, n)
	return nil
}
