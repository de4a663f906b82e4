package sandboxtest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/sessiond/sessiond/internal/sandbox"
)

// TestFake runs the lifecycle part of the conformance suite against Fake, so that the
// fake used by the layers above behaves like the real runtimes where it matters to them.
func TestFake(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the agent")
	}
	bin, err := BuildAgent(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	// The agent runs user commands as uid 1000, which must reach the data directories.
	os.Chmod(filepath.Dir(state), 0o755)
	os.Chmod(state, 0o755)
	Run(t, Config{
		New:      func(t *testing.T) sandbox.Runtime { return &Fake{AgentBinary: bin, StateDir: state} },
		RootFS:   "/",
		Image:    "host",
		NoLayout: true,
	})
}
