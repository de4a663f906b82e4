package image

import (
	"github.com/google/go-containerregistry/pkg/name"

	"github.com/sessiond/sessiond/internal/errkind"
)

// RegistryOf returns the registry host of image reference ref, in the canonical form that
// SameRegistry compares ("index.docker.io" for Docker Hub's short forms).
func RegistryOf(ref string) (string, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return "", errkind.New(errkind.Invalid, "invalid image reference %q: %v", ref, err)
	}
	return r.Context().RegistryStr(), nil
}

// SameRegistry reports whether server, a registry host as users write it in credentials
// ("docker.io", "myregistry.azurecr.io", "localhost:5000"), names the registry of image
// reference ref.
func SameRegistry(ref, server string) bool {
	reg, err := RegistryOf(ref)
	if err != nil {
		return false
	}
	s, err := name.NewRegistry(server)
	return err == nil && s.RegistryStr() == reg
}
