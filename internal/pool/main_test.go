package pool

import (
	"testing"

	"github.com/sessiond/sessiond/internal/sandbox/sandboxtest"
)

// agentBin is the sessiond-agent built for this test binary.
var agentBin string

func TestMain(m *testing.M) {
	// Every goroutine a manager starts must have ended when the tests end.
	sandboxtest.MainWithAgent(m, &agentBin, nil)
}
