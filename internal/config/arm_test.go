package config

import (
	"encoding/json"
	"errors"
	"github.com/sessiond/sessiond/internal/sandbox"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"pgregory.net/rapid"

	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/pool"
)

// TestDocumentRoundTrip: any pool a document can declare reads back from its Document
// unchanged, so a GET body PUTs back as a no-op.
func TestDocumentRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		ct := rapid.SampledFrom([]pool.ContainerType{pool.PythonLTS, pool.Shell}).Draw(t, "containerType")
		s := pool.Spec{
			Name:                  rapid.StringMatching(`[a-z][a-z0-9-]{1,20}[a-z0-9]`).Draw(t, "name"),
			ContainerType:         ct,
			MaxConcurrentSessions: rapid.IntRange(1, 10000).Draw(t, "max"),
			ReadySessionInstances: rapid.IntRange(0, 1000).Draw(t, "ready"),
			LifecycleType:         pool.LifecycleTimed,
			CooldownPeriod:        time.Duration(rapid.IntRange(1, 86400).Draw(t, "cooldown")) * time.Second,
			MaxAlivePeriod:        time.Duration(rapid.IntRange(0, 30*86400).Draw(t, "maxAlive")) * time.Second,
			Runtime:               rapid.SampledFrom([]string{"", "runc", "runsc"}).Draw(t, "runtime"),
			Image:                 rapid.SampledFrom([]string{"python", "python-small", "ghcr.io/org/img:v1"}).Draw(t, "image"),
			Limits: sandbox.Limits{
				CPUMillis:   int64(rapid.SampledFrom([]int{0, 10, 250, 1000, 1500, 64000}).Draw(t, "cpu")),
				MemoryBytes: rapid.SampledFrom([]int64{0, 32 << 20, 512 << 20, 1<<30 + 1, 3 << 30}).Draw(t, "memory"),
				DiskBytes:   rapid.SampledFrom([]int64{0, 1 << 20, 1048577, 2 << 40}).Draw(t, "disk"),
				Pids:        rapid.SampledFrom([]int64{0, 8, 512}).Draw(t, "pids"),
			},
			ExecutionTimeoutCap: time.Duration(rapid.IntRange(1, 3600).Draw(t, "cap")) * time.Second,
		}
		if ct == pool.PythonLTS {
			s.WarmupCode = rapid.SampledFrom([]string{"", pool.DefaultWarmupCode, "import json\nprint('<&>')"}).Draw(t, "warmup")
		}
		switch rapid.IntRange(0, 2).Draw(t, "network") {
		case 1:
			s.Network = sandbox.Network{Egress: true}
		case 2:
			s.Network = sandbox.Network{Egress: true, AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")},
				AllowDomains: []string{"pypi.org", "*.pythonhosted.org"}}
		}
		doc := Document(s)
		got, err := PoolFromJSON(s.Name, doc)
		if err != nil {
			t.Fatalf("PoolFromJSON(%s): %v", doc, err)
		}
		if d := cmp.Diff(s, got, cmpopts.EquateComparable(netip.Prefix{})); d != "" {
			t.Fatalf("round trip of %s (-want +got):\n%s", doc, d)
		}
	})
	for _, s := range Default() {
		if got, err := PoolFromJSON(s.Name, Document(s)); err != nil || !reflect.DeepEqual(got, s) {
			t.Errorf("default pool: %v, %+v", err, got)
		}
	}
}

func TestDocumentShape(t *testing.T) {
	s := Default()[0]
	var got map[string]any
	if err := json.Unmarshal(Document(s), &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"properties": map[string]any{
			"containerType":      "PythonLTS",
			"poolManagementType": "Dynamic",
			"scaleConfiguration": map[string]any{"maxConcurrentSessions": 10.0, "readySessionInstances": 5.0},
			"dynamicPoolConfiguration": map[string]any{"lifecycleConfiguration": map[string]any{
				"lifecycleType": "Timed", "cooldownPeriodInSeconds": 300.0}},
			"sessionNetworkConfiguration": map[string]any{"status": "EgressDisabled"},
		},
		"sessiond": map[string]any{"image": "python", "warmupCode": pool.DefaultWarmupCode, "executionTimeoutCapInSeconds": 220.0},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("Document (-want +got):\n%s", d)
	}
}

// TestPoolFromJSONAcceptsARM: an ARM resource (envelope, read-only properties, older and
// differently cased spellings) reads as the configuration file would.
func TestPoolFromJSONAcceptsARM(t *testing.T) {
	doc := `{
	  "id": "/subscriptions/x/resourceGroups/y/providers/Microsoft.App/sessionPools/my-pool",
	  "name": "my-pool", "type": "Microsoft.App/sessionPools", "location": "westus2", "tags": {"team": "a"},
	  "status": {"ready": 3},
	  "properties": {
	    "environmentId": "/subscriptions/x/resourceGroups/y/providers/Microsoft.App/managedEnvironments/z",
	    "containerType": "Shell", "poolManagementType": "Dynamic",
	    "ScaleConfiguration": {"maxConcurrentSessions": 7, "readySessionInstances": 0},
	    "dynamicPoolConfiguration": {"executionType": "Timed", "coolDownPeriodInSeconds": 600},
	    "managedIdentitySettings": [{"identity": "system", "lifecycle": "None"}],
	    "poolManagementEndpoint": "https://example/pools/my-pool", "provisioningState": "Succeeded"},
	  "sessiond": {"runtime": "runc", "memory": "512Mi", "cpu": 0.5}}`
	got, err := PoolFromJSON("my-pool", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	want := pool.Spec{Name: "my-pool", ContainerType: pool.Shell, MaxConcurrentSessions: 7, ReadySessionInstances: 0,
		LifecycleType: "Timed", CooldownPeriod: 600 * time.Second, Runtime: "runc", Image: DefaultImage,
		Limits: sandbox.Limits{MemoryBytes: 512 << 20, CPUMillis: 500}, ExecutionTimeoutCap: pool.DefaultExecutionTimeoutCap}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("PoolFromJSON (-want +got):\n%s", d)
	}
	// An empty document is the default pool.
	if got, err := PoolFromJSON("default", []byte(`{}`)); err != nil || !reflect.DeepEqual(got, Default()[0]) {
		t.Errorf("empty document: %v %+v", err, got)
	}
}

// TestPoolFromJSONErrorsNameTheField: every property's bad values are refused as Invalid,
// naming the field.
func TestPoolFromJSONErrorsNameTheField(t *testing.T) {
	const lc = "properties.dynamicPoolConfiguration.lifecycleConfiguration"
	for _, tc := range []struct{ doc, field string }{
		{`{"name": "other"}`, "name"},
		{`{"properties": {"containerType": "Cobol"}}`, "properties.containerType"},
		{`{"properties": {"containerType": 3}}`, "properties.containerType"},
		{`{"properties": {"poolManagementType": "Manual"}}`, "properties.poolManagementType"},
		{`{"properties": {"scaleConfiguration": {"maxConcurrentSessions": 0}}}`, "properties.scaleConfiguration.maxConcurrentSessions"},
		{`{"properties": {"scaleConfiguration": {"maxConcurrentSessions": 10001}}}`, "properties.scaleConfiguration.maxConcurrentSessions"},
		{`{"properties": {"scaleConfiguration": {"maxConcurrentSessions": "ten"}}}`, "properties.scaleConfiguration.maxConcurrentSessions"},
		{`{"properties": {"scaleConfiguration": {"maxConcurrentSessions": 2.5}}}`, "properties.scaleConfiguration.maxConcurrentSessions"},
		{`{"properties": {"scaleConfiguration": {"readySessionInstances": -1}}}`, "properties.scaleConfiguration.readySessionInstances"},
		{`{"properties": {"scaleConfiguration": {"readySessionInstances": 1001}}}`, "properties.scaleConfiguration.readySessionInstances"},
		{`{"properties": {"scaleConfiguration": [1]}}`, "properties.scaleConfiguration"},
		{`{"properties": {"dynamicPoolConfiguration": {"cooldownPeriodInSeconds": 0}}}`, "properties.dynamicPoolConfiguration.cooldownPeriodInSeconds"},
		{`{"properties": {"dynamicPoolConfiguration": {"executionType": "Session"}}}`, "properties.dynamicPoolConfiguration.executionType"},
		{`{"properties": {"dynamicPoolConfiguration": {"lifecycleConfiguration": {"cooldownPeriodInSeconds": 86401}}}}`, lc + ".cooldownPeriodInSeconds"},
		{`{"properties": {"dynamicPoolConfiguration": {"lifecycleConfiguration": {"lifecycleType": "Forever"}}}}`, lc + ".lifecycleType"},
		{`{"properties": {"dynamicPoolConfiguration": {"lifecycleConfiguration": {"maxAlivePeriodInSeconds": 0}}}}`, lc + ".maxAlivePeriodInSeconds"},
		{`{"properties": {"sessionNetworkConfiguration": {"status": "Open"}}}`, "properties.sessionNetworkConfiguration.status"},
		{`{"properties": {"sessionNetworkConfiguration": {"status": "EgressSometimes"}}}`, "properties.sessionNetworkConfiguration.status"},
		{`{"sessiond": {"runtime": "docker"}}`, "sessiond.runtime"},
		{`{"sessiond": {"image": 5}}`, "sessiond.image"},
		{`{"sessiond": {"cpu": 100}}`, "sessiond.cpu"},
		{`{"sessiond": {"cpu": "1"}}`, "sessiond.cpu"},
		{`{"sessiond": {"memory": "lots"}}`, "sessiond.memory"},
		{`{"sessiond": {"disk": "1Ki"}}`, "sessiond.disk"},
		{`{"sessiond": {"pids": 3}}`, "sessiond.pids"},
		{`{"properties": {"containerType": "Shell"}, "sessiond": {"warmupCode": "import x"}}`, "sessiond.warmupCode"},
		{`{"sessiond": {"warmupCode": false}}`, "sessiond.warmupCode"},
		{`{"sessiond": {"executionTimeoutCapInSeconds": 3601}}`, "sessiond.executionTimeoutCapInSeconds"},
		// Unknown and duplicate fields, at every level.
		{`{"propertes": {}}`, "propertes"},
		{`{"properties": {"scaleConfiguraton": {}}}`, "properties.scaleConfiguraton"},
		{`{"properties": {"scaleConfiguration": {"maxSessions": 3}}}`, "properties.scaleConfiguration.maxSessions"},
		{`{"sessiond": {"imag": "x"}}`, "sessiond.imag"},
		{`{"sessiond": {"image": "a", "Image": "b"}}`, "sessiond.image"},
	} {
		_, err := PoolFromJSON("good", []byte(tc.doc))
		var fe *FieldError
		if !errkind.Is(err, errkind.Invalid) || !errors.As(err, &fe) || fe.FieldPath() != tc.field {
			t.Errorf("PoolFromJSON(%s) = %v, want Invalid about %s", tc.doc, err, tc.field)
			continue
		}
		if msg, _ := errkind.PublicMessage(err); !strings.HasPrefix(msg, tc.field+": ") {
			t.Errorf("PoolFromJSON(%s): public message %q does not start with the field", tc.doc, msg)
		}
	}
	for _, doc := range []string{``, `[]`, `"pool"`, `{"properties": 1`, `{} {}`, `{"name": "Bad_Name"}`} {
		if _, err := PoolFromJSON("good", []byte(doc)); !errkind.Is(err, errkind.Invalid) {
			t.Errorf("PoolFromJSON(%q) = %v, want Invalid", doc, err)
		}
	}
	if _, err := PoolFromJSON("BAD", []byte(`{}`)); !errkind.Is(err, errkind.Invalid) || !strings.HasPrefix(err.Error(), "name:") {
		t.Errorf("bad name: %v", err)
	}
	big := `{"sessiond": {"warmupCode": "` + strings.Repeat("x", MaxDocumentBytes) + `"}}`
	if _, err := PoolFromJSON("good", []byte(big)); !errkind.Is(err, errkind.LimitExceeded) {
		t.Errorf("oversized document: %v", err)
	}
}

func TestCheckUpdate(t *testing.T) {
	cur := Default()[0]
	for field, change := range map[string]func(*pool.Spec){
		"name":                     func(s *pool.Spec) { s.Name = "other" },
		"properties.containerType": func(s *pool.Spec) { s.ContainerType = pool.Shell },
		"sessiond.runtime":         func(s *pool.Spec) { s.Runtime = "runc" },
	} {
		next := cur
		change(&next)
		var fe *FieldError
		if err := CheckUpdate(cur, next); !errkind.Is(err, errkind.Invalid) || !errors.As(err, &fe) || fe.Path != field {
			t.Errorf("changing %s: %v", field, err)
		}
	}
	next := cur
	next.Image, next.MaxConcurrentSessions, next.ContainerType = "other", 3, "" // "" is PythonLTS
	if err := CheckUpdate(cur, next); err != nil {
		t.Errorf("updatable change refused: %v", err)
	}
}

func FuzzPoolFromJSON(f *testing.F) {
	f.Add(`{"properties": {"containerType": "Shell"}}`)
	f.Add(string(Document(Default()[0])))
	f.Fuzz(func(t *testing.T, doc string) {
		s, err := PoolFromJSON("fuzz", []byte(doc))
		if err != nil {
			return
		}
		// Whatever reads, reads back the same from its own document.
		again, err := PoolFromJSON("fuzz", Document(s))
		if err != nil || !reflect.DeepEqual(again, s) {
			t.Fatalf("%s: round trip gave %+v, %v; want %+v", doc, again, err, s)
		}
	})
}
