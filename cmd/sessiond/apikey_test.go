package main

import (
	"bytes"
	"context"
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/sessiond/sessiond/internal/auth"
)

// TestAPIKeyCommand checks that the printed entry, pasted into the configuration,
// authenticates the printed key with the requested roles.
func TestAPIKeyCommand(t *testing.T) {
	var out bytes.Buffer
	g := &globals{Stdout: &out, Stderr: io.Discard}
	err := cmdAPIKey(context.Background(), g, []string{"-name", `ci: "nightly"`, "-role", "sessionexecutor", "-role", "Reader", "-pool", "a", "-pool", "b c"})
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitN(out.String(), "\n", 3)
	key := lines[1]
	if !strings.HasPrefix(key, auth.APIKeyPrefix) {
		t.Fatalf("second line %q is not a key", key)
	}
	var entries []auth.APIKeyConfig
	if err := yaml.Unmarshal([]byte(lines[2]), &entries); err != nil {
		t.Fatalf("the entry is not YAML: %v\n%s", err, lines[2])
	}
	a, err := auth.New(auth.Config{APIKeys: entries}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set("Authorization", "Bearer "+key)
	p, err := a.Check(r, "b c", auth.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if p.Name != `ci: "nightly"` || !p.Allowed("a", auth.SessionExecutor) || p.Allowed("z", auth.SessionExecutor) || p.Allowed("a", auth.Contributor) {
		t.Errorf("principal %v has the wrong grants", p)
	}

	for _, args := range [][]string{{}, {"-name", "x", "-role", "Owner"}, {"-name", "x", "-pool", ""}, {"-name", "x", "extra"}} {
		if err := cmdAPIKey(context.Background(), g, args); err == nil {
			t.Errorf("apikey %q: no error", args)
		}
	}
}
