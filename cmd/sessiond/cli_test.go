package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/api"
	"github.com/sessiond/sessiond/internal/auth"
	"github.com/sessiond/sessiond/internal/controlplane/controlplanetest"
)

// cli runs the sessiond command line in-process.
type cli struct {
	t        *testing.T
	endpoint string
	dir      string // the working directory of files the commands name
}

// run runs sessiond with args (and -endpoint for the commands that take it), and returns
// its standard output, standard error and error.
func (c *cli) run(args ...string) (string, string, error) {
	c.t.Helper()
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := run(ctx, args, &stdout, &stderr)
	return stdout.String(), stderr.String(), err
}

// ok runs sessiond and fails the test if it fails.
func (c *cli) ok(args ...string) string {
	c.t.Helper()
	out, errOut, err := c.run(args...)
	if err != nil {
		c.t.Fatalf("sessiond %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// fails runs sessiond and returns its error, failing the test if it succeeds.
func (c *cli) fails(args ...string) error {
	c.t.Helper()
	out, _, err := c.run(args...)
	if err == nil {
		c.t.Fatalf("sessiond %s succeeded: %s", strings.Join(args, " "), out)
	}
	return err
}

func (c *cli) file(name, content string) string {
	c.t.Helper()
	p := filepath.Join(c.dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		c.t.Fatal(err)
	}
	return p
}

// newCLI starts a real control plane over Fake sandboxes behind the real API, and a CLI
// pointed at it through SESSIOND_ENDPOINT.
func newCLI(t *testing.T, cfg api.Config) (*cli, *controlplanetest.Env) {
	e := controlplanetest.New(t)
	cfg.Pools, cfg.Manage = e.CP, e.CP
	srv := httptest.NewServer(api.New(cfg))
	t.Cleanup(srv.Close)
	t.Setenv("SESSIOND_ENDPOINT", srv.URL)
	t.Setenv("SESSIOND_TOKEN", "")
	t.Setenv("SESSIOND_API_KEY", "")
	return &cli{t: t, endpoint: srv.URL, dir: t.TempDir()}, e
}

const cliPool = `# a Shell pool
name: shells
properties:
  containerType: Shell
  scaleConfiguration: {maxConcurrentSessions: 4, readySessionInstances: 1}
  dynamicPoolConfiguration:
    lifecycleConfiguration: {lifecycleType: Timed, cooldownPeriodInSeconds: 300}
sessiond:
  image: img-a
`

// TestCLI drives every remote command against a real server.
func TestCLI(t *testing.T) {
	c, e := newCLI(t, api.Config{})
	poolFile := c.file("pool.yaml", cliPool)

	if out := c.ok("pool", "create", "-f", poolFile); !strings.Contains(out, "pool shells created: endpoint "+c.endpoint+"/subscriptions/local/resourceGroups/local/sessionPools/shells") {
		t.Errorf("pool create: %q", out)
	}
	if err := c.fails("pool", "create", "shells", "-f", poolFile); !strings.Contains(err.Error(), "exists") {
		t.Errorf("creating it again: %v", err)
	}
	if err := c.fails("pool", "create", "other", "-f", poolFile); !errors.As(err, new(usageError)) {
		t.Errorf("a name that contradicts the file: %v", err)
	}
	c.ok("pool", "create", "shells", "-f", poolFile, "-replace")
	e.WaitReady(t, "shells", 1)

	out := c.ok("pool", "list")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 2 || !strings.HasPrefix(lines[0], "NAME") ||
		!strings.Contains(lines[1], "shells") || !strings.Contains(lines[1], "Shell") || !strings.Contains(lines[1], "Succeeded") {
		t.Errorf("pool list:\n%s", out)
	}
	var pools []struct {
		Name   string
		Status struct{ Ready int }
	}
	if err := json.Unmarshal([]byte(c.ok("pool", "list", "-output", "json")), &pools); err != nil || len(pools) != 1 || pools[0].Status.Ready != 1 {
		t.Errorf("pool list -output json: %+v, %v", pools, err)
	}
	if out := c.ok("pool", "show", "shells"); !strings.Contains(out, "type:      Shell") || !strings.Contains(out, "at most 4, 1 kept ready") ||
		!strings.Contains(out, "cooldown 300s") {
		t.Errorf("pool show:\n%s", out)
	}

	c.ok("pool", "update", "shells", "-set", "properties.scaleConfiguration.maxConcurrentSessions=3", "-set", "sessiond.image=img-b")
	var shown struct {
		Properties struct {
			ScaleConfiguration struct{ MaxConcurrentSessions int }
		}
		Sessiond struct{ Image string }
	}
	json.Unmarshal([]byte(c.ok("pool", "show", "shells", "-output", "json")), &shown)
	if shown.Properties.ScaleConfiguration.MaxConcurrentSessions != 3 || shown.Sessiond.Image != "img-b" {
		t.Errorf("after pool update: %+v", shown)
	}
	if err := c.fails("pool", "update", "shells", "-set", "properties.scaleConfiguration.maxConcurrentSessions=0"); !strings.Contains(err.Error(), "properties.scaleConfiguration.maxConcurrentSessions: 0: want 1 to 10000") {
		t.Errorf("a bad update: %v", err)
	}
	patch := c.file("patch.yaml", "properties:\n  scaleConfiguration: {readySessionInstances: 2}\n")
	c.ok("pool", "update", "shells", "-f", patch)
	e.WaitReady(t, "shells", 2)

	// exec: output, errors and the exit status.
	out, errOut, err := c.run("exec", "-pool", "shells", "-identifier", "cli-user", "echo hello; echo oops >&2; echo $IMAGE")
	if err != nil || out != "hello\nimg-b\n" || errOut != "oops\n" {
		t.Errorf("exec: %q %q %v", out, errOut, err)
	}
	out, _, err = c.run("exec", "-pool", "shells", "-identifier", "cli-user", "exit 4")
	if ee := exitError(0); !errors.As(err, &ee) || ee != 1 {
		t.Errorf("a failed execution: %q %v, want exit status 1", out, err)
	}
	var x struct{ Status string }
	if _, _, err := c.run("exec", "-pool", "shells", "-identifier", "cli-user", "-output", "json", "exit 5"); err == nil {
		t.Error("a failed execution with -output json succeeded")
	}
	json.Unmarshal([]byte(c.ok("exec", "-output", "json", "-pool", "shells", "-identifier", "cli-user", "true")), &x)
	if x.Status != "0" {
		t.Errorf("exec -output json: %+v", x)
	}

	// files
	local := c.file("data.csv", "a,b\n1,2\n")
	if out := c.ok("files", "upload", "-pool", "shells", "-identifier", "cli-user", local, "in/data.csv"); !strings.Contains(out, "uploaded in/data.csv (8 bytes)") {
		t.Errorf("files upload: %q", out)
	}
	if out := c.ok("files", "list", "-pool", "shells", "-identifier", "cli-user"); !strings.Contains(out, "in") || !strings.Contains(out, "Directory") {
		t.Errorf("files list:\n%s", out)
	}
	copyPath := filepath.Join(c.dir, "copy.csv")
	c.ok("files", "download", "-pool", "shells", "-identifier", "cli-user", "in/data.csv", copyPath)
	if b, err := os.ReadFile(copyPath); err != nil || string(b) != "a,b\n1,2\n" {
		t.Errorf("downloaded %q, %v", b, err)
	}
	if out := c.ok("files", "download", "-pool", "shells", "-identifier", "cli-user", "in/data.csv", "-"); out != "a,b\n1,2\n" {
		t.Errorf("download to stdout: %q", out)
	}
	c.ok("files", "rm", "-pool", "shells", "-identifier", "cli-user", "in/data.csv")
	if err := c.fails("files", "download", "-pool", "shells", "-identifier", "cli-user", "in/data.csv", filepath.Join(c.dir, "gone")); !strings.Contains(err.Error(), "NotFound") {
		t.Errorf("downloading a removed file: %v", err)
	}
	if _, err := os.Stat(filepath.Join(c.dir, "gone")); !os.IsNotExist(err) {
		t.Errorf("a failed download left a file: %v", err)
	}

	// sessions
	if out := c.ok("session", "list", "-pool", "shells"); !strings.Contains(out, "cli-user") || !strings.Contains(out, "Allocated") {
		t.Errorf("session list:\n%s", out)
	}
	var s struct{ Identifier, SandboxID string }
	json.Unmarshal([]byte(c.ok("session", "show", "-pool", "shells", "cli-user", "-output", "json")), &s)
	if s.Identifier != "cli-user" || s.SandboxID == "" {
		t.Errorf("session show: %+v", s)
	}
	c.ok("session", "stop", "-pool", "shells", "cli-user")
	if err := c.fails("session", "show", "-pool", "shells", "cli-user"); !strings.Contains(err.Error(), "No session") {
		t.Errorf("session show after stop: %v", err)
	}

	if out := c.ok("pool", "delete", "shells"); out != "pool shells deleted\n" {
		t.Errorf("pool delete: %q", out)
	}
	if err := c.fails("pool", "show", "shells"); !strings.Contains(err.Error(), "SessionPoolNotFound") {
		t.Errorf("pool show after delete: %v", err)
	}
}

// TestCLIUsage: bad command lines are usage errors (exit status 2) that say what is wrong.
func TestCLIUsage(t *testing.T) {
	c := &cli{t: t, dir: t.TempDir()}
	for _, args := range [][]string{
		{"pool"},
		{"pool", "frobnicate"},
		{"pool", "create", "x"},
		{"pool", "show"},
		{"pool", "update", "x"},
		{"pool", "update", "x", "-set", "novalue"},
		{"pool", "list", "extra"},
		{"pool", "list", "-output", "yaml"},
		{"pool", "list", "-endpoint", "ftp://x"},
		{"pool", "list", "-token", "t", "-api-key", "k"},
		{"exec", "-pool", "p", "code"},
		{"exec", "-identifier", "i", "code"},
		{"exec", "-pool", "p", "-identifier", "i"},
		{"session", "list"},
		{"session", "stop", "-pool", "p"},
		{"files", "upload", "-pool", "p", "-identifier", "i"},
		{"files", "list", "-pool", "p"},
	} {
		_, errOut, err := c.run(args...)
		if !errors.As(err, new(usageError)) {
			t.Errorf("sessiond %s: %v (%s), want a usage error", strings.Join(args, " "), err, errOut)
		}
	}
	// -h is not an error.
	if _, errOut, err := c.run("pool", "create", "-h"); err != nil || !strings.Contains(errOut, "usage: sessiond pool create") {
		t.Errorf("pool create -h: %v %q", err, errOut)
	}
	// Flags after "--" are code.
	args, err := parseArgs(newFlagSet(&globals{Stderr: &bytes.Buffer{}}, "x", "x", &remoteFlags{}), []string{"a", "-output", "json", "--", "-b", "-output"})
	if err != nil || strings.Join(args, " ") != "a -b -output" {
		t.Errorf("parseArgs: %q %v", args, err)
	}
}

// TestCLIAuth: the token and API key flags and environment variables reach the server.
func TestCLIAuth(t *testing.T) {
	const key = "cli-test-key-0123456789"
	authn, err := auth.New(auth.Config{APIKeys: []auth.APIKeyConfig{{Name: "cli", Hash: auth.HashAPIKey(key), Roles: []string{"Reader"}}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := newCLI(t, api.Config{Auth: authn})
	if err := c.fails("pool", "list"); !strings.Contains(err.Error(), "Unauthorized") {
		t.Errorf("without credentials: %v", err)
	}
	c.ok("pool", "list", "-api-key", key)
	if err := c.fails("pool", "list", "-token", "not-a-key"); !strings.Contains(err.Error(), "Unauthorized") {
		t.Errorf("a bad token: %v", err)
	}
	t.Setenv("SESSIOND_API_KEY", key)
	c.ok("pool", "list")
	if err := c.fails("pool", "delete", "anything"); !strings.Contains(err.Error(), "Forbidden") {
		t.Errorf("a Reader deleting: %v", err)
	}
}
