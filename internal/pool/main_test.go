package pool

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/sessiond/sessiond/internal/sandbox/sandboxtest"
)

// agentBin is the sessiond-agent built for this test binary.
var agentBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sessiond-pool-agent-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	agentBin, err = sandboxtest.BuildAgent(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	// Every goroutine a manager starts must have ended when the tests end.
	goleak.VerifyTestMain(m, goleak.Cleanup(func(int) { os.RemoveAll(dir) }))
}
