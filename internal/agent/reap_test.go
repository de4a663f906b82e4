package agent

import (
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
)

// TestReapOrphans double-forks a process so that it is orphaned and reparented to the
// agent (here a child subreaper; in a sandbox, init): the reaper must collect it, leaving
// no zombie.
func TestReapOrphans(t *testing.T) {
	t.Parallel()
	ta := startAgent(t, nil)
	res, err := ta.client.Exec(ctxFor(t, 10*time.Second), agentapi.ExecRequest{
		Shell: "sleep 0.2 >/dev/null 2>&1 & echo $!",
	})
	if err != nil {
		t.Fatal(err)
	}
	ps := pids(t, res.Stdout)
	if len(ps) != 1 {
		t.Fatalf("stdout %q, want one pid", res.Stdout)
	}
	// Still running, and orphaned: its parent, the shell, has exited.
	if st := procState(ps[0]); st == 0 || st == 'Z' {
		t.Fatalf("orphan %d is already gone (state %q)", ps[0], st)
	}
	waitGone(t, ps[0], 3*time.Second)
}
