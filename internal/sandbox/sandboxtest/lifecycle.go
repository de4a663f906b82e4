package sandboxtest

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/sandbox"
)

func (s *suite) testLifecycle(t *testing.T) {
	ctx := context.Background()
	spec := s.spec(sandbox.Limits{})
	spec.Labels = map[string]string{"pool": "p1", "test": "lifecycle"}
	info := s.create(t, spec)
	if info.ID == "" || info.Runtime != s.rt.Name() || info.State != sandbox.StateRunning {
		t.Errorf("Create returned %+v, want an ID, runtime %s, state running", info, s.rt.Name())
	}
	if info.Labels["pool"] != "p1" {
		t.Errorf("Create labels = %v, want pool=p1", info.Labels)
	}
	if info.Limits != sandbox.DefaultLimits {
		t.Errorf("Create limits = %+v, want the defaults %+v", info.Limits, sandbox.DefaultLimits)
	}
	h, err := s.rt.Agent(info.ID).Health(ctx)
	if err != nil {
		t.Fatalf("Health: %v", err)
	}
	if h.PID != 1 && !s.cfg.NoLayout {
		t.Errorf("agent pid = %d, want 1 (the agent is the sandbox's init)", h.PID)
	}
	if got := s.mustSh(t, info.ID, "echo hello; echo oops >&2"); got != "hello" {
		t.Errorf("echo = %q, want hello", got)
	}
	list, err := s.rt.List(ctx)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if !containsID(list, info.ID) {
		t.Errorf("List = %v, want it to include %s", list, info.ID)
	}
	st, err := s.rt.Stats(ctx, info.ID)
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	if st.Processes < 1 || st.PSSBytes <= 0 {
		t.Errorf("Stats = %+v, want processes and memory", st)
	}
	if err := s.rt.Destroy(ctx, info.ID); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	list, err = s.rt.List(ctx)
	if err != nil {
		t.Fatalf("List after Destroy: %v", err)
	}
	if containsID(list, info.ID) {
		t.Errorf("List after Destroy still has %s", info.ID)
	}
	if _, err := s.rt.Attach(ctx, info.ID); !errkind.Is(err, errkind.NotFound) {
		t.Errorf("Attach after Destroy = %v, want NotFound", err)
	}
	if _, err := s.rt.Stats(ctx, info.ID); !errkind.Is(err, errkind.NotFound) {
		t.Errorf("Stats after Destroy = %v, want NotFound", err)
	}
	hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := s.rt.Agent(info.ID).Health(hctx); err == nil {
		t.Errorf("Health after Destroy succeeded")
	}
}

func (s *suite) testDestroyIdempotent(t *testing.T) {
	ctx := context.Background()
	info := s.create(t, s.spec(sandbox.Limits{}))
	for i := 0; i < 3; i++ {
		if err := s.rt.Destroy(ctx, info.ID); err != nil {
			t.Fatalf("Destroy #%d: %v", i+1, err)
		}
	}
	for _, id := range []string{"never-existed", "../../etc", "", "UPPER"} {
		if err := s.rt.Destroy(ctx, id); err != nil {
			t.Errorf("Destroy(%q) = %v, want nil", id, err)
		}
	}
	// Destroy with a cancelled context still cleans up.
	info = s.create(t, s.spec(sandbox.Limits{}))
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := s.rt.Destroy(cctx, info.ID); err != nil {
		t.Fatalf("Destroy with cancelled context: %v", err)
	}
	if list, _ := s.rt.List(ctx); containsID(list, info.ID) {
		t.Errorf("sandbox %s survived Destroy with a cancelled context", info.ID)
	}
}

func (s *suite) testInvalidSpec(t *testing.T) {
	ctx := context.Background()
	for name, spec := range map[string]sandbox.Spec{
		"relative rootfs": {RootFS: "rootfs"},
		"missing rootfs":  {RootFS: "/nonexistent/rootfs"},
		"bad ID":          {ID: "../escape", RootFS: s.cfg.RootFS},
		"upper-case ID":   {ID: "ABC", RootFS: s.cfg.RootFS},
		"tiny memory":     {RootFS: s.cfg.RootFS, Limits: sandbox.Limits{MemoryBytes: 1024}},
		"negative pids":   {RootFS: s.cfg.RootFS, Limits: sandbox.Limits{Pids: -1}},
		"bad env":         {RootFS: s.cfg.RootFS, Env: []string{"NOEQUALS"}},
	} {
		t.Run(name, func(t *testing.T) {
			info, err := s.rt.Create(ctx, spec)
			if err == nil {
				s.rt.Destroy(ctx, info.ID)
				t.Fatalf("Create succeeded, want Invalid")
			}
			if !errkind.Is(err, errkind.Invalid) {
				t.Errorf("Create = %v (kind %v), want Invalid", err, errkind.Of(err))
			}
		})
	}
}

func (s *suite) testDuplicateID(t *testing.T) {
	ctx := context.Background()
	spec := s.spec(sandbox.Limits{})
	spec.ID = "dup-" + strings.TrimPrefix(marker(), "sessiond-marker-")
	s.create(t, spec)
	if _, err := s.rt.Create(ctx, spec); !errkind.Is(err, errkind.AlreadyExists) {
		t.Fatalf("second Create = %v, want AlreadyExists", err)
	}
	// The failed create must not have harmed the first sandbox.
	if _, err := s.rt.Agent(spec.ID).Health(ctx); err != nil {
		t.Errorf("first sandbox unhealthy after a duplicate create: %v", err)
	}
}

func (s *suite) testAdopt(t *testing.T) {
	ctx := context.Background()
	info := s.create(t, s.spec(sandbox.Limits{}))
	s.mustSh(t, info.ID, "echo kept > state.txt") // the working directory is the data dir
	// A new runtime instance over the same state, as after a control-plane restart.
	rt2 := s.cfg.New(t)
	list, err := rt2.List(ctx)
	if err != nil {
		t.Fatalf("List after restart: %v", err)
	}
	if !containsID(list, info.ID) {
		t.Fatalf("List after restart = %v, want %s", list, info.ID)
	}
	got, err := rt2.Attach(ctx, info.ID)
	if err != nil {
		t.Fatalf("Attach after restart: %v", err)
	}
	if got.ID != info.ID || got.Labels["test"] != "sandboxtest" || !got.Created.Equal(info.Created) {
		t.Errorf("Attach = %+v, want the record of %+v", got, info)
	}
	res, err := rt2.Agent(info.ID).Exec(ctx, agentapi.ExecRequest{Shell: "cat state.txt"})
	if err != nil || strings.TrimSpace(res.Stdout) != "kept" {
		t.Errorf("state after restart: %+v, %v; want kept", res, err)
	}
}

func (s *suite) testExecIdentity(t *testing.T) {
	info := s.create(t, s.spec(sandbox.Limits{}))
	if got := s.mustSh(t, info.ID, "id -u; id -g; pwd; echo $HOME"); got != "1000\n1000\n/mnt/data\n/home/user" {
		t.Errorf("identity = %q, want uid 1000, gid 1000, cwd /mnt/data, HOME /home/user", got)
	}
	if got := s.mustSh(t, info.ID, "touch /mnt/data/f /tmp/f $HOME/f && stat -c %u /mnt/data/f /tmp/f $HOME/f"); got != "1000\n1000\n1000" {
		t.Errorf("files created by user code are owned by %q, want 1000", got)
	}
	// Writes to the image land in the sandbox's own writable layer, not the shared image.
	res := s.exec(t, info.ID, agentapi.ExecRequest{Shell: "echo x > /etc/sessiond-written && cat /etc/sessiond-written", AsRoot: true})
	_ = res // root in a user namespace may not own the image files; either way the image stays untouched
	other := s.create(t, s.spec(sandbox.Limits{}))
	if r := s.sh(t, other.ID, "test -e /etc/sessiond-written"); r.ExitCode == 0 {
		t.Errorf("a write to one sandbox's root filesystem is visible in another")
	}
}

func (s *suite) testFilesEscape(t *testing.T) {
	ctx := context.Background()
	info := s.create(t, s.spec(sandbox.Limits{}))
	ag := s.rt.Agent(info.ID)
	// Sandbox code plants links that point outside /mnt/data.
	s.mustSh(t, info.ID, "ln -s /etc/passwd passwd && ln -s / root && ln -s ../.. up && mkdir d && ln -s ../../../etc d/etc")
	for _, p := range []string{"passwd", "root/etc/passwd", "up/etc/passwd", "d/etc/passwd", "../etc/passwd", "/etc/passwd", "/mnt/data/../../etc/passwd"} {
		if rc, _, err := ag.Download(ctx, p); err == nil {
			b, _ := io.ReadAll(rc)
			rc.Close()
			t.Errorf("Download(%q) succeeded (%d bytes), want an error", p, len(b))
		}
	}
	// A name of its own, so that the check below cannot see an unrelated file (the Fake
	// runtime's "sandbox" is the host).
	x := marker()
	for _, p := range []string{"root/tmp/" + x, "up/tmp/" + x, "d/etc/" + x, "../" + x, "/tmp/" + x} {
		if _, err := ag.Upload(ctx, p, strings.NewReader("pwned"), 5); err == nil {
			t.Errorf("Upload(%q) succeeded, want an error", p)
		}
	}
	if r := s.sh(t, info.ID, "test -e /tmp/"+x+" || test -e /etc/"+x); r.ExitCode == 0 {
		t.Errorf("an upload escaped /mnt/data")
	}
	// The legitimate paths work.
	if _, err := ag.Upload(ctx, "/mnt/data/sub/ok.txt", bytes.NewReader([]byte("fine")), 4); err != nil {
		t.Fatalf("Upload of a normal file: %v", err)
	}
	if got := s.mustSh(t, info.ID, "cat sub/ok.txt; echo; stat -c %u sub/ok.txt"); got != "fine\n1000" {
		t.Errorf("uploaded file reads %q, want its content and owner 1000", got)
	}
	l, err := ag.ListFiles(ctx, "", true)
	if err != nil {
		t.Fatalf("ListFiles: %v", err)
	}
	for _, f := range l.Files {
		if strings.HasPrefix(f.Path, "root/") || strings.HasPrefix(f.Path, "up/") {
			t.Errorf("ListFiles followed a symlink out of /mnt/data: %s", f.Path)
		}
	}
}

func containsID(l []sandbox.Info, id string) bool {
	for _, i := range l {
		if i.ID == id {
			return true
		}
	}
	return false
}
