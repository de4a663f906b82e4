package image

import "testing"

func TestSameRegistry(t *testing.T) {
	for _, tc := range []struct {
		ref, server string
		want        bool
	}{
		{"alpine", "docker.io", true},
		{"library/alpine:3", "index.docker.io", true},
		{"myregistry.azurecr.io/app:v1", "myregistry.azurecr.io", true},
		{"MyRegistry.azurecr.io/app:v1", "myregistry.azurecr.io", false}, // references are lower-case
		{"localhost:5000/app@sha256:" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "localhost:5000", true},
		{"localhost:5000/app", "localhost:5001", false},
		{"other.example/app", "myregistry.azurecr.io", false},
		{"not a reference", "docker.io", false},
	} {
		if got := SameRegistry(tc.ref, tc.server); got != tc.want {
			t.Errorf("SameRegistry(%q, %q) = %v, want %v", tc.ref, tc.server, got, tc.want)
		}
	}
	if reg, err := RegistryOf("alpine"); reg != "index.docker.io" || err != nil {
		t.Errorf("RegistryOf(alpine) = %q, %v", reg, err)
	}
}
