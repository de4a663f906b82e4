package config

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sessiond/sessiond/internal/pool"
	"github.com/sessiond/sessiond/internal/probe"
	"github.com/sessiond/sessiond/internal/sandbox"
)

func TestParseCustomContainer(t *testing.T) {
	// The ARM example of a custom-container pool (azure-api.md §5.5), as JSON, with
	// credentials and secrets.
	in := `{"pools": [{"name": "testsessionpool", "properties": {
	  "environmentId": "/subscriptions/x/resourceGroups/rg/providers/Microsoft.App/managedEnvironments/env",
	  "poolManagementType": "Dynamic", "containerType": "CustomContainer",
	  "scaleConfiguration": {"maxConcurrentSessions": 500, "readySessionInstances": 100},
	  "dynamicPoolConfiguration": {"lifecycleConfiguration": {"lifecycleType": "OnContainerExit", "maxAlivePeriodInSeconds": 86400}},
	  "customContainerTemplate": {
	    "containers": [{"name": "testinitcontainer", "image": "repo/testcontainer:v4",
	      "command": ["/bin/sh"], "args": ["-c", "while true; do echo hello; sleep 10; done"],
	      "env": [{"name": "MODE", "value": "prod"}, {"name": "TOKEN", "secretRef": "token"}],
	      "resources": {"cpu": 0.25, "memory": "0.5Gi"},
	      "probes": [{"type": "Liveness", "httpGet": {"path": "/health", "port": 8080}, "periodSeconds": 5}]}],
	    "ingress": {"targetPort": 80},
	    "registryCredentials": {"server": "repo.example", "username": "puller", "passwordSecretRef": "registry-password"}},
	  "secrets": [{"name": "token", "value": "t0k"}, {"name": "registry-password", "value": "pw"}],
	  "sessionNetworkConfiguration": {"status": "EgressDisabled"},
	  "managedIdentitySettings": [{"identity": "system", "lifecycle": "Main"}]}}]}`
	got, err := Parse(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := pool.Spec{
		Name: "testsessionpool", ContainerType: pool.CustomContainer, MaxConcurrentSessions: 500, ReadySessionInstances: 100,
		LifecycleType: pool.LifecycleOnContainerExit, MaxAlivePeriod: 24 * time.Hour, Image: "repo/testcontainer:v4",
		Limits: sandbox.Limits{CPUMillis: 250, MemoryBytes: 512 << 20}, ExecutionTimeoutCap: pool.DefaultExecutionTimeoutCap,
		Container: &pool.ContainerSpec{
			Image: "repo/testcontainer:v4", Command: []string{"/bin/sh"}, Args: []string{"-c", "while true; do echo hello; sleep 10; done"},
			Env:        []pool.EnvVar{{Name: "MODE", Value: "prod"}, {Name: "TOKEN", SecretRef: "token"}},
			TargetPort: 80,
			Probes:     []probe.Probe{{Type: probe.Liveness, HTTPGet: &probe.HTTPGet{Path: "/health", Port: 8080}, PeriodSeconds: 5}},
			Registry:   &pool.RegistryCredentials{Server: "repo.example", Username: "puller", PasswordSecretRef: "registry-password"},
			Secrets:    map[string]string{"token": "t0k", "registry-password": "pw"},
		},
	}
	if d := cmp.Diff(want, got[0]); d != "" {
		t.Errorf("Parse (-want +got):\n%s", d)
	}
}

func TestParseCustomContainerDefaults(t *testing.T) {
	got, err := Parse(strings.NewReader(`
pools:
- name: app
  properties:
    containerType: CustomContainer
    dynamicPoolConfiguration: {lifecycleConfiguration: {lifecycleType: OnContainerExit}}
    customContainerTemplate:
      containers: [{image: "localhost:5000/app:v1"}]
      ingress: {targetPort: 8080}
  sessiond: {insecureRegistry: true, cpu: 2}
`))
	if err != nil {
		t.Fatal(err)
	}
	s := got[0]
	if s.MaxAlivePeriod != DefaultMaxAlivePeriod || s.CooldownPeriod != 0 || s.Limits.CPUMillis != 2000 ||
		!s.Container.InsecureRegistry || s.Image != "localhost:5000/app:v1" || s.WarmupCode != "" {
		t.Errorf("Parse = %+v, container %+v", s, s.Container)
	}
}

func TestParseCustomContainerErrors(t *testing.T) {
	const pre = `pools: [{name: good, properties: {containerType: CustomContainer, `
	tmpl := func(s string) string { return pre + `customContainerTemplate: {` + s + `}}}]` }
	ok := `containers: [{image: app}], ingress: {targetPort: 80}`
	for _, tc := range []struct{ in, want string }{
		{pre + `}}]`, "properties.customContainerTemplate: required"},
		{tmpl(`ingress: {targetPort: 80}`), "properties.customContainerTemplate.containers: 0 containers"},
		{tmpl(`containers: [{image: a}, {image: b}], ingress: {targetPort: 80}`), "2 containers"},
		{tmpl(`containers: [{name: x}], ingress: {targetPort: 80}`), "containers[0].image: required"},
		{tmpl(`containers: [{image: "a b"}], ingress: {targetPort: 80}`), "containers[0].image"},
		{tmpl(`containers: [{image: app}]`), "ingress.targetPort: required"},
		{tmpl(`containers: [{image: app}], ingress: {targetPort: 70000}`), "properties.customContainerTemplate.ingress.targetPort"},
		{tmpl(`containers: [{image: app, env: [{name: X, secretRef: nope}]}], ingress: {targetPort: 80}`), "properties.customContainerTemplate.containers[0].env[0].secretRef"},
		{tmpl(`containers: [{image: app, probes: [{type: Readiness, tcpSocket: {port: 1}}]}], ingress: {targetPort: 80}`), "containers[0].probes[0]"},
		{tmpl(`containers: [{image: app, probes: [{type: Startup, tcpSocket: {port: 1}, failureThreshold: 11}]}], ingress: {targetPort: 80}`), "failureThreshold"},
		{tmpl(`containers: [{image: app, resources: {cpu: 100}}], ingress: {targetPort: 80}`), "containers[0].resources.cpu"},
		{tmpl(`containers: [{image: app, resources: {memory: lots}}], ingress: {targetPort: 80}`), "containers[0].resources.memory"},
		{tmpl(`containers: [{image: app, imagePullPolicy: Always}], ingress: {targetPort: 80}`), "imagePullPolicy"},
		{tmpl(ok + `, registryCredentials: {server: r, username: u, passwordSecretRef: pw}`), "registryCredentials.passwordSecretRef"},
		{tmpl(ok + `, registryCredentials: {server: r, identity: system}`), "registryCredentials.identity"},
		{pre + `secrets: [{name: Bad_Name, value: x}], customContainerTemplate: {` + ok + `}}}]`, "properties.secrets[0].name"},
		{pre + `secrets: [{name: s, value: x}, {name: s, value: y}], customContainerTemplate: {` + ok + `}}}]`, "declared twice"},
		{pre + `secrets: [{name: s, keyVaultUrl: "https://v"}], customContainerTemplate: {` + ok + `}}}]`, "properties.secrets[0].keyVaultUrl"},
		{pre + `customContainerTemplate: {` + ok + `}, dynamicPoolConfiguration: {lifecycleConfiguration: {lifecycleType: OnContainerExit, cooldownPeriodInSeconds: 300}}}}]`, "cooldownPeriodInSeconds: not allowed"},
		{pre + `customContainerTemplate: {` + ok + `}}, sessiond: {image: python}}]`, "sessiond.image"},
		{pre + `customContainerTemplate: {containers: [{image: app, resources: {cpu: 1}}], ingress: {targetPort: 80}}}, sessiond: {cpu: 1}}]`, "resources.cpu: sessiond.cpu is set too"},
		{`pools: [{name: good, properties: {dynamicPoolConfiguration: {lifecycleConfiguration: {lifecycleType: OnContainerExit}}}}]`, "CustomContainer pools only"},
		{`pools: [{name: good, properties: {customContainerTemplate: {` + ok + `}}}]`, "properties.customContainerTemplate: only CustomContainer"},
		{`pools: [{name: good, sessiond: {insecureRegistry: true}}]`, "sessiond.insecureRegistry"},
	} {
		_, err := Parse(strings.NewReader(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%s) = %v, want an error containing %q", tc.in, err, tc.want)
		}
	}
}
