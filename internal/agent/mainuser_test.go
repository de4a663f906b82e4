package agent

import (
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
)

// TestMainUser checks who the main command runs as: the unprivileged user by default, or
// Config.MainUser (a custom image's user), root included with root's HOME; exec stays with
// the unprivileged user either way.
func TestMainUser(t *testing.T) {
	if !isRoot() {
		t.Skip("switching users needs root")
	}
	const show = `echo "main $(id -u):$(id -g) groups=$(id -G) home=$HOME user=$USER"`
	for _, tc := range []struct {
		name string
		user *Identity
		want string
	}{
		{"default", nil, "main 1000:1000 groups=1000 home=/home/user user=user\n"},
		{"root", &Identity{UID: 0, GID: 0}, "main 0:0 groups=0 home=/root user=root\n"},
		{"image user", &Identity{UID: 1234, GID: 4321}, "main 1234:4321 groups=4321 home=/home/user user=user\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ta := startAgent(t, func(c *Config) {
				c.MainUser = tc.user
				c.Command = []string{"sh", "-c", show + "; sleep 60"}
			})
			waitLogs(t, ta, tc.want)
			res, err := ta.client.Exec(ctxFor(t, 10*time.Second), agentapi.ExecRequest{Shell: "id -u"})
			if err != nil || res.Stdout != "1000\n" {
				t.Errorf("exec beside the main command: %+v, %v; want uid 1000", res, err)
			}
		})
	}
}

func TestMainUserValidated(t *testing.T) {
	a := New(Config{MainUser: &Identity{UID: -1}})
	if err := a.validate(); err == nil {
		t.Error("a negative main user was accepted")
	}
}
