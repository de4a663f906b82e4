package oci

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/sessiond/sessiond/internal/errkind"
)

// cli drives one OCI runtime binary (runc or runsc): a binary path and the global flags
// every call carries, and one method per verb.
type cli struct {
	binary string
	global []string // rendered global flags, e.g. --root, --platform
}

// command builds an exec.Cmd for verb with args. Standard streams are /dev/null unless the
// caller sets them; the runtime's own diagnostics go to its --log file.
func (c *cli) command(ctx context.Context, verb string, args ...string) *exec.Cmd {
	full := make([]string, 0, len(c.global)+1+len(args))
	full = append(full, c.global...)
	full = append(full, verb)
	full = append(full, args...)
	cmd := exec.CommandContext(ctx, c.binary, full...)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	return cmd
}

// run runs verb and returns its stdout; a failure carries the runtime's stderr.
func (c *cli) run(ctx context.Context, verb string, args ...string) ([]byte, error) {
	cmd := c.command(ctx, verb, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 2048 {
			msg = msg[:2048]
		}
		if ctx.Err() != nil {
			return nil, errkind.Wrap(errkind.Timeout, fmt.Errorf("%s %s: %w: %s", c.binary, verb, ctx.Err(), msg))
		}
		return nil, fmt.Errorf("%s %s: %w: %s", c.binary, verb, err, msg)
	}
	return stdout.Bytes(), nil
}

// runDetached starts the container described by the bundle in the background. The
// container's standard streams are /dev/null: the agent's API is the only way in or out,
// and nothing from inside can fill a host file or block on a pipe the control plane owns.
func (c *cli) runDetached(ctx context.Context, id, bundle, pidFile string) error {
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("opening %s: %w", os.DevNull, err)
	}
	defer devnull.Close()
	cmd := c.command(ctx, "run", "--detach", "--bundle", bundle, "--pid-file", pidFile, id)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, devnull, devnull
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return errkind.Wrap(errkind.Timeout, fmt.Errorf("%s run: %w", c.binary, ctx.Err()))
		}
		return fmt.Errorf("%s run: %w (see the runtime log)", c.binary, err)
	}
	return nil
}

// containerState is the part of `state` output we use.
type containerState struct {
	ID     string `json:"id"`
	Status string `json:"status"`
	PID    int    `json:"pid"`
}

// state returns the runtime's view of a container; NotFound if it has none.
func (c *cli) state(ctx context.Context, id string) (containerState, error) {
	out, err := c.run(ctx, "state", id)
	if err != nil {
		if strings.Contains(err.Error(), "does not exist") || strings.Contains(err.Error(), "not found") {
			return containerState{}, errkind.Wrap(errkind.NotFound, err)
		}
		return containerState{}, err
	}
	var st containerState
	if err := json.Unmarshal(out, &st); err != nil {
		return containerState{}, fmt.Errorf("decoding %s state: %w", c.binary, err)
	}
	return st, nil
}

// list returns the IDs of all containers the runtime knows under its root.
func (c *cli) list(ctx context.Context) ([]string, error) {
	out, err := c.run(ctx, "list", "--format", "json")
	if err != nil {
		return nil, err
	}
	var cs []containerState
	if s := strings.TrimSpace(string(out)); s == "" || s == "null" {
		return nil, nil
	}
	if err := json.Unmarshal(out, &cs); err != nil {
		return nil, fmt.Errorf("decoding %s list: %w", c.binary, err)
	}
	ids := make([]string, 0, len(cs))
	for _, s := range cs {
		ids = append(ids, s.ID)
	}
	return ids, nil
}

// deleteForce kills the container's processes and removes its runtime state. A container the
// runtime does not know is not an error.
func (c *cli) deleteForce(ctx context.Context, id string) error {
	_, err := c.run(ctx, "delete", "--force", id)
	if err != nil && (strings.Contains(err.Error(), "does not exist") || strings.Contains(err.Error(), "not found") || strings.Contains(err.Error(), "no such file")) {
		return nil
	}
	return err
}
