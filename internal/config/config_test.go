package config

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sessiond/sessiond/internal/pool"
	"github.com/sessiond/sessiond/internal/sandbox"
)

func TestParseFull(t *testing.T) {
	in := `
pools:
- name: analysis
  properties:
    containerType: PythonLTS
    poolManagementType: Dynamic
    scaleConfiguration: {maxConcurrentSessions: 20, readySessionInstances: 3}
    dynamicPoolConfiguration:
      lifecycleConfiguration: {lifecycleType: Timed, cooldownPeriodInSeconds: 600, maxAlivePeriodInSeconds: 7200}
    sessionNetworkConfiguration: {status: EgressDisabled}
  sessiond:
    runtime: runc
    image: python-small
    cpu: 0.5
    memory: 512Mi
    disk: 2Gi
    pids: 128
    warmupCode: "import json"
    executionTimeoutCapInSeconds: 60
- name: shell-pool
  properties: {containerType: shell}
`
	got, err := Parse(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []pool.Spec{{
		Name: "analysis", ContainerType: pool.PythonLTS, MaxConcurrentSessions: 20, ReadySessionInstances: 3,
		LifecycleType: "Timed", CooldownPeriod: 600 * time.Second, MaxAlivePeriod: 2 * time.Hour,
		Runtime: "runc", Image: "python-small",
		Limits:     sandbox.Limits{CPUMillis: 500, MemoryBytes: 512 << 20, DiskBytes: 2 << 30, Pids: 128},
		WarmupCode: "import json", ExecutionTimeoutCap: time.Minute,
	}, {
		Name: "shell-pool", ContainerType: pool.Shell, MaxConcurrentSessions: 10, ReadySessionInstances: 5,
		LifecycleType: "Timed", CooldownPeriod: 300 * time.Second, Image: "python",
		ExecutionTimeoutCap: 220 * time.Second,
	}}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("Parse (-want +got):\n%s", d)
	}
}

func TestParseARMJSON(t *testing.T) {
	// An ARM properties block pasted as JSON, with properties sessiond ignores.
	in := `{"pools": [{"name": "my-session-pool", "properties": {
	  "environmentId": "/subscriptions/x/resourceGroups/y/providers/Microsoft.App/managedEnvironments/z",
	  "containerType": "PythonLTS", "poolManagementType": "Dynamic",
	  "scaleConfiguration": {"maxConcurrentSessions": 5, "readySessionInstances": 1},
	  "dynamicPoolConfiguration": {"executionType": "Timed", "cooldownPeriodInSeconds": 300},
	  "managedIdentitySettings": [{"identity": "system", "lifecycle": "None"}],
	  "sessionNetworkConfiguration": {"status": "EgressDisabled"}}}]}`
	got, err := Parse(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if got[0].Name != "my-session-pool" || got[0].MaxConcurrentSessions != 5 || got[0].WarmupCode != pool.DefaultWarmupCode {
		t.Errorf("Parse = %+v", got[0])
	}
}

func TestDefault(t *testing.T) {
	d := Default()
	if len(d) != 1 || d[0].Name != "default" || d[0].ContainerType != pool.PythonLTS || d[0].Image != DefaultImage {
		t.Errorf("Default() = %+v", d)
	}
}

func TestParseErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{``, "empty"},
		{`pools: []`, "pools: want at least one pool"},
		{`pools: [{name: X}]`, "name:"},
		{`pools: [{name: ab}]`, "name:"},
		{`pools: [{name: good, properties: {containerType: Cobol}}]`, "properties.containerType"},
		{`pools: [{name: good, properties: {containerType: NodeLTS}}]`, "not supported yet"},
		{`pools: [{name: good, properties: {scaleConfiguration: {maxConcurrentSessions: 0}}}]`, "scaleConfiguration.maxConcurrentSessions"},
		{`pools: [{name: good, properties: {scaleConfiguration: {readySessionInstances: -1}}}]`, "readySessionInstances"},
		{`pools: [{name: good, properties: {dynamicPoolConfiguration: {lifecycleConfiguration: {cooldownPeriodInSeconds: 0}}}}]`, "lifecycleConfiguration.cooldownPeriodInSeconds"},
		{`pools: [{name: good, properties: {dynamicPoolConfiguration: {lifecycleConfiguration: {lifecycleType: Forever}}}}]`, "lifecycleType"},
		{`pools: [{name: good, properties: {dynamicPoolConfiguration: {lifecycleConfiguration: {maxAlivePeriodInSeconds: -5}}}}]`, "maxAlivePeriodInSeconds"},
		{`pools: [{name: good, properties: {sessionNetworkConfiguration: {status: Open}}}]`, "sessionNetworkConfiguration.status"},
		{`pools: [{name: good, properties: {sessionNetworkConfiguration: {status: EgressEnabled, allowedCidrs: [nope]}}}]`, "allowedCidrs[0]"},
		{`pools: [{name: good, properties: {sessionNetworkConfiguration: {status: EgressDisabled, allowedDomains: [example.com]}}}]`, "need status EgressEnabled"},
		{`pools: [{name: good, properties: {sessionNetworkConfiguration: {status: EgressEnabled, allowedDomains: ["exa mple.com"]}}}]`, "sessionNetworkConfiguration"},
		{`pools: [{name: good, properties: {poolManagementType: Manual}}]`, "poolManagementType"},
		{`pools: [{name: good, properties: {scaleConfiguraton: {}}}]`, "scaleConfiguraton"},
		{`pools: [{name: good, sessiond: {runtime: docker}}]`, "sessiond.runtime"},
		{`pools: [{name: good, sessiond: {memory: lots}}]`, "sessiond.memory"},
		{`pools: [{name: good, sessiond: {memory: 1Ki}}]`, "sessiond.memory"},
		{`pools: [{name: good, sessiond: {disk: -1Gi}}]`, "sessiond.disk"},
		{`pools: [{name: good, sessiond: {cpu: 100}}]`, "sessiond.cpu"},
		{`pools: [{name: good, sessiond: {pids: 3}}]`, "sessiond.pids"},
		{`pools: [{name: good, sessiond: {executionTimeoutCapInSeconds: -1}}]`, "executionTimeoutCapInSeconds"},
		{`pools: [{name: good, properties: {containerType: Shell}, sessiond: {warmupCode: "x"}}]`, "sessiond.warmupCode"},
		{`pools: [{name: good}, {name: good}]`, "declared twice"},
		{`pools: [{name: good, sessiond: {imag: x}}]`, "imag"},
	} {
		_, err := Parse(strings.NewReader(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%s) = %v, want an error containing %q", tc.in, err, tc.want)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(`pools: [{name: good, properties: {containerType: Shell}}]`)
	f.Add(`{"pools": [{"name": "x"}]}`)
	f.Fuzz(func(t *testing.T, in string) {
		specs, err := Parse(strings.NewReader(in))
		if err == nil && len(specs) == 0 {
			t.Fatalf("Parse(%q) returned no pools and no error", in)
		}
	})
}
