package oci

import (
	"slices"
	"strings"
	"testing"

	"github.com/sessiond/sessiond/internal/sandbox"
)

// TestBuildSpecMainProcess: the spec's environment replaces the defaults of the same name
// (a process sees only the first of duplicates), and the main command's user and working
// directory reach the agent's flags.
func TestBuildSpecMainProcess(t *testing.T) {
	s := buildSpec(bundleParams{id: "sb-1", limits: sandbox.DefaultLimits, spec: sandbox.Spec{
		Env:     []string{"PATH=/app/bin", "PORT=1", "PORT=2"},
		Command: []string{"/server", "-v"}, WorkingDir: "/srv", User: &sandbox.User{UID: 0, GID: 0},
	}})
	env := s.Process.Env
	if want := []string{"PATH=/app/bin", "HOME=/home/user", "LANG=C.UTF-8", "PORT=2"}; !slices.Equal(env, want) {
		t.Errorf("Env = %q, want %q", env, want)
	}
	args := strings.Join(s.Process.Args, " ")
	if !strings.Contains(args, " -workdir /srv -main-user 0:0 -- /server -v") {
		t.Errorf("Args = %q", args)
	}
	if s := buildSpec(bundleParams{limits: sandbox.DefaultLimits}); slices.Contains(s.Process.Args, "-main-user") {
		t.Errorf("a spec without a user passes -main-user: %q", s.Process.Args)
	}
}

// TestBuildSpecAgentCPUs: the agent runs its Go code on the sandbox's CPU quota, in whole
// cores rounded up (gVisor shows it every host CPU).
func TestBuildSpecAgentCPUs(t *testing.T) {
	for millis, want := range map[int64]string{250: "1", 1000: "1", 1500: "2", 4000: "4"} {
		args := strings.Join(buildSpec(bundleParams{limits: sandbox.Limits{CPUMillis: millis}}).Process.Args, " ") + " "
		if !strings.Contains(args, " -cpus "+want+" ") {
			t.Errorf("%d millicores: Args = %q, want -cpus %s", millis, args, want)
		}
	}
}

func TestValidateSpecUser(t *testing.T) {
	for _, u := range []sandbox.User{{UID: -1}, {GID: userNSSize}, {UID: userNSSize}} {
		err := validateSpec(sandbox.Spec{RootFS: "/", User: &u})
		if err == nil || !strings.Contains(err.Error(), "user") {
			t.Errorf("validateSpec with user %+v: %v", u, err)
		}
	}
	if err := validateSpec(sandbox.Spec{RootFS: "/", User: &sandbox.User{UID: 65534, GID: 0}}); err != nil {
		t.Errorf("validateSpec with user 65534:0: %v", err)
	}
}

func TestCPUPeriod(t *testing.T) {
	for _, tc := range []struct {
		period, wantPeriod uint64
		millis, wantQuota  int64
	}{
		{0, 100000, 1000, 100000},
		{flavors["runsc"].cpuPeriod, 10000, 1000, 10000},
		{flavors["runsc"].cpuPeriod, 10000, 500, 5000},
		{flavors["runc"].cpuPeriod, 100000, 2000, 200000},
	} {
		cpu := resources(sandbox.Limits{CPUMillis: tc.millis}, 1<<30, 512, tc.period, false).CPU
		if *cpu.Period != tc.wantPeriod || *cpu.Quota != tc.wantQuota || *cpu.Burst != uint64(tc.wantQuota) {
			t.Errorf("period %d, %d millicores: period %d quota %d burst %d, want %d and %d (burst = quota)", tc.period, tc.millis, *cpu.Period, *cpu.Quota, *cpu.Burst, tc.wantPeriod, tc.wantQuota)
		}
	}
}
