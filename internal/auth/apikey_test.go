package auth

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/sessiond/sessiond/internal/errkind"
)

func TestNewAPIKey(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		key, hash, err := NewAPIKey()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(key, APIKeyPrefix) || len(key) != len(APIKeyPrefix)+43 || strings.ContainsAny(key, ".+/=") {
			t.Fatalf("key %q: want %s and 43 base64url characters", key, APIKeyPrefix)
		}
		sum := sha256.Sum256([]byte(key))
		if hash != "sha256:"+hex.EncodeToString(sum[:]) || hash != HashAPIKey(key) {
			t.Fatalf("hash %q is not the key's", hash)
		}
		if seen[key] {
			t.Fatal("NewAPIKey repeated a key")
		}
		seen[key] = true
	}
}

func TestAPIKeys(t *testing.T) {
	executor, executorHash, _ := NewAPIKey()
	admin, adminHash, _ := NewAPIKey()
	revoked, revokedHash, _ := NewAPIKey()
	a, _ := newAuth(t, Config{APIKeys: []APIKeyConfig{
		{Name: "executor", Hash: executorHash, Roles: []string{"SessionExecutor"}, Pools: []string{"a"}},
		{Name: "admin", Hash: adminHash, Roles: []string{"Contributor", "SessionExecutor"}},
		{Name: "gone", Hash: revokedHash, Roles: []string{"Contributor"}, Revoked: true},
	}})

	p, err := a.Check(request("api-key", executor), "a", SessionExecutor)
	if err != nil {
		t.Fatal(err)
	}
	if p.Method != MethodAPIKey || p.Name != "executor" || p.Issuer != "" {
		t.Errorf("principal %+v", p)
	}
	_, err = a.Check(request("api-key", executor), "b", SessionExecutor)
	wantErr(t, err, errkind.Forbidden, "on session pool 'b'")
	_, err = a.Check(request("api-key", executor), "a", Reader)
	wantErr(t, err, errkind.Forbidden, "Reader")
	_, err = a.Check(request("api-key", executor), "", SessionExecutor)
	wantErr(t, err, errkind.Forbidden, "on every session pool")

	for _, pool := range []string{"a", "z", ""} {
		for _, r := range []Role{Contributor, Reader, SessionExecutor} {
			if _, err := a.Check(request("Authorization", "Bearer "+admin), pool, r); err != nil {
				t.Errorf("admin key, pool %q, role %s: %v", pool, r, err)
			}
		}
	}

	_, err = a.Authenticate(context.Background(), request("api-key", revoked))
	wantErr(t, err, errkind.Unauthenticated, "has been revoked")
	for name, key := range map[string]string{
		"unknown":         "sdk_" + strings.Repeat("A", 43),
		"one char off":    executor[:len(executor)-1] + "x",
		"prefix of a key": executor[:20],
		"hash as key":     executorHash,
		"oversized":       executor + strings.Repeat("A", maxAPIKeyBytes),
	} {
		_, err := a.Authenticate(context.Background(), request("api-key", key))
		wantErr(t, err, errkind.Unauthenticated, "The API key is not valid.")
		if strings.Contains(err.Error(), key) {
			t.Errorf("%s: the error repeats the key", name)
		}
	}
	// A bearer that is not a JWT is taken for a key, and a JWT is not.
	_, err = a.Authenticate(context.Background(), bearer("a.b"))
	wantErr(t, err, errkind.Unauthenticated, "API key is not valid")
	_, err = a.Authenticate(context.Background(), bearer("a.b.c"))
	wantErr(t, err, errkind.Unauthenticated, "access token is not valid")
}

func TestMatchKeyUsesEveryKey(t *testing.T) {
	// matchKey must not stop at the first match; a configuration cannot have two keys
	// with one hash, so this shows the loop runs to the end.
	keys := []apiKey{{name: "a", hash: sha256.Sum256([]byte("k"))}, {name: "b", hash: sha256.Sum256([]byte("k"))}}
	if k := matchKey(keys, "k"); k == nil || k.name != "b" {
		t.Errorf("matchKey = %v, want the last match", k)
	}
	if k := matchKey(keys, "j"); k != nil {
		t.Errorf("matchKey(wrong) = %v", k)
	}
}
