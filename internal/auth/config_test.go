package auth

import (
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// exampleYAML is the configuration documented for operators (README): it must decode and
// validate as written.
const exampleYAML = `
issuers:
- issuer: https://sts.windows.net/00000000-0000-0000-0000-000000000000/
  jwksURI: https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000/discovery/keys
- issuer: https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000/v2.0
- issuer: https://idp.example.com/realms/main
  audiences: [sessiond]
audiences: [https://dynamicsessions.io, https://acasessions.io]
clockSkew: 60s
roleClaims: [roles, groups]
mappings:
- claim: oid
  value: 7d3c3f52-1a0e-4a55-9d38-4f8e2f3c11e1
  role: SessionExecutor
  pools: [default]
- value: sessiond-admins
  role: Contributor
apiKeys:
- name: ci
  hash: sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
  roles: [SessionExecutor]
  pools: [default]
- name: old-laptop
  hash: sha256:60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752
  revoked: true
`

func TestConfigExample(t *testing.T) {
	var c Config
	if err := yaml.Unmarshal([]byte(exampleYAML), &c); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.ClockSkew != time.Minute || len(c.Issuers) != 3 || c.Issuers[2].Audiences[0] != "sessiond" ||
		c.Mappings[0].Claim != "oid" || !c.APIKeys[1].Revoked || !c.Enabled() {
		t.Errorf("decoded %+v", c)
	}
	if _, err := New(c, nil); err != nil {
		t.Fatal(err)
	}
}

func TestConfigDefaults(t *testing.T) {
	c := Config{}.withDefaults()
	if c.ClockSkew != 60*time.Second || c.KeyRefetchInterval != 30*time.Second || c.KeyMaxAge != time.Hour ||
		c.KeyFetchTimeout != 10*time.Second || !*c.BuiltinRoleValues ||
		strings.Join(c.Audiences, " ") != "https://dynamicsessions.io https://acasessions.io" ||
		strings.Join(c.RoleClaims, " ") != "roles groups" {
		t.Errorf("defaults: %+v", c)
	}
	if (Config{}).Enabled() {
		t.Error("the zero Config is enabled")
	}
}

func TestConfigValidate(t *testing.T) {
	good := HashAPIKey("k")
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"issuer missing", `issuers: [{jwksURI: "https://a/keys"}]`, "issuers[0].issuer: a URL is required"},
		{"issuer http", `issuers: [{issuer: "http://idp.example"}]`, "issuers[0].issuer: \"http://idp.example\" must use https"},
		{"issuer relative", `issuers: [{issuer: "/tenant"}]`, "issuers[0].issuer: \"/tenant\" must be an absolute URL"},
		{"issuer twice", `issuers: [{issuer: "https://a"}, {issuer: "https://a"}]`, "issuers[1].issuer: \"https://a\" is listed twice"},
		{"jwksURI ftp", `issuers: [{issuer: "https://a", jwksURI: "ftp://a/keys"}]`, "issuers[0].jwksURI: \"ftp://a/keys\" must use https"},
		{"issuer audience empty", `issuers: [{issuer: "https://a", audiences: [""]}]`, "issuers[0].audiences[0]: an audience must not be empty"},
		{"audience empty", `audiences: [" "]`, "audiences[0]: an audience must not be empty"},
		{"skew too large", `clockSkew: 6m`, "clockSkew: 6m0s is outside 0 to 5m0s"},
		{"skew negative", `clockSkew: -1s`, "clockSkew: -1s is outside"},
		{"role claim empty", `roleClaims: [roles, ""]`, "roleClaims[1]: a claim name is required"},
		{"mapping no value", `mappings: [{role: Reader}]`, "mappings[0].value: a claim value is required"},
		{"mapping bad role", `mappings: [{value: x, role: Owner}]`, `mappings[0].role: unknown role "Owner"`},
		{"mapping unknown issuer", `mappings: [{value: x, role: Reader, issuer: "https://b"}]`, `mappings[0].issuer: "https://b" is not one of the issuers`},
		{"mapping empty pool", `mappings: [{value: x, role: Reader, pools: [""]}]`, "mappings[0].pools[0]: a pool name must not be empty"},
		{"key no name", `apiKeys: [{hash: "` + good + `", roles: [Reader]}]`, "apiKeys[0].name: a name is required"},
		{"key name twice", `apiKeys: [{name: a, hash: "` + good + `", roles: [Reader]}, {name: a, hash: "` + HashAPIKey("j") + `", roles: [Reader]}]`, `apiKeys[1].name: "a" is used twice`},
		{"key plain text", `apiKeys: [{name: a, hash: "sdk_secret", roles: [Reader]}]`, `apiKeys[0].hash: must be "sha256:" followed by 64 hex digits`},
		{"key short hash", `apiKeys: [{name: a, hash: "sha256:abcd", roles: [Reader]}]`, `apiKeys[0].hash: must be "sha256:"`},
		{"key hash twice, other case", `apiKeys: [{name: a, hash: "` + good + `", roles: [Reader]}, {name: b, hash: "sha256:` + strings.ToUpper(good[7:]) + `", roles: [Reader]}]`, "apiKeys[1].hash: the same hash is listed twice"},
		{"key same hash", `apiKeys: [{name: a, hash: "` + good + `", roles: [Reader]}, {name: b, hash: "` + good + `", roles: [Reader]}]`, "apiKeys[1].hash: the same hash is listed twice"},
		{"key no roles", `apiKeys: [{name: a, hash: "` + good + `"}]`, "apiKeys[0].roles: a key needs at least one role"},
		{"key bad role", `apiKeys: [{name: a, hash: "` + good + `", roles: [Reader, Admin]}]`, `apiKeys[0].roles[1]: unknown role "Admin"`},
		{"refetch negative", `keyRefetchInterval: -1s`, "keyRefetchInterval: must not be negative"},
		{"max age negative", `keyMaxAge: -1s`, "keyMaxAge: must not be negative"},
		{"fetch timeout too long", `keyFetchTimeout: 2m`, "keyFetchTimeout: 2m0s is outside 0 to 1m0s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c Config
			if err := yaml.Unmarshal([]byte(tc.yaml), &c); err != nil {
				t.Fatal(err)
			}
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate() = %v, want %q", err, tc.want)
			}
			if _, err := New(c, nil); err == nil {
				t.Error("New accepted an invalid configuration")
			}
		})
	}
	// Accepted edge cases.
	for _, y := range []string{
		`issuers: [{issuer: "http://127.0.0.1:8080/tenant"}, {issuer: "http://localhost/x"}, {issuer: "http://[::1]/"}]`,
		`clockSkew: 5m`,
		`apiKeys: [{name: a, hash: "` + good + `", revoked: true}]`,
		`apiKeys: [{name: a, hash: "sha256:` + strings.ToUpper(good[7:]) + `", roles: [sessionexecutor]}]`,
	} {
		var c Config
		if err := yaml.Unmarshal([]byte(y), &c); err != nil {
			t.Fatal(err)
		}
		if err := c.Validate(); err != nil {
			t.Errorf("%s: %v", y, err)
		}
	}
}

func TestParseRole(t *testing.T) {
	for in, want := range map[string]Role{"SessionExecutor": SessionExecutor, "contributor": Contributor, "READER": Reader} {
		if got, err := ParseRole(in); err != nil || got != want {
			t.Errorf("ParseRole(%q) = %q, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "Owner", "Azure ContainerApps Session Executor"} {
		if _, err := ParseRole(in); err == nil {
			t.Errorf("ParseRole(%q) accepted", in)
		}
	}
}
