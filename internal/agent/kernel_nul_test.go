package agent

import (
	"testing"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
)

// TestExecuteRefusesNUL: ipykernel never answers code Python cannot compile for a NUL
// byte, so the agent refuses it instead of waiting for the timeout.
func TestExecuteRefusesNUL(t *testing.T) {
	_, err := newExecution(agentapi.ExecuteRequest{Code: "print(1)\x00print(2)"})
	if !errkind.Is(err, errkind.Invalid) {
		t.Errorf("code with a NUL: %v, want Invalid", err)
	}
	if _, err := newExecution(agentapi.ExecuteRequest{Code: "print(1)"}); err != nil {
		t.Errorf("plain code: %v", err)
	}
}
