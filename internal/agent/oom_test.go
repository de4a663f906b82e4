package agent

import (
	"os"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
)

// TestChildrenOOMScore checks that the processes the agent starts are the OOM killer's
// first choice, and that the agent keeps its own adjustment. (Not parallel: the agent of
// the test is this process, whose value it reads.)
func TestChildrenOOMScore(t *testing.T) {
	before, err := os.ReadFile(oomScoreFile)
	if err != nil {
		t.Skipf("no %s: %v", oomScoreFile, err)
	}
	ta := startAgent(t, nil)
	res, err := ta.client.Exec(ctxFor(t, 10*time.Second), agentapi.ExecRequest{Shell: "cat /proc/self/oom_score_adj; sh -c 'cat /proc/self/oom_score_adj'"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Stdout != childOOMScore+"\n"+childOOMScore+"\n" {
		t.Errorf("children's OOM score adjustment = %q, want %s for them and theirs", res.Stdout, childOOMScore)
	}
	if after, _ := os.ReadFile(oomScoreFile); string(after) != string(before) {
		t.Errorf("the agent's OOM score adjustment went from %q to %q", before, after)
	}
}
