package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
)

// APIKeyPrefix starts every key NewAPIKey makes, so that a leaked key is recognizable
// (secret scanners, logs) and never mistaken for a JWT.
const APIKeyPrefix = "sdk_"

// maxAPIKeyBytes bounds a presented key before it is hashed.
const maxAPIKeyBytes = 512

// NewAPIKey returns a new random API key (APIKeyPrefix and 256 random bits in base64url)
// and its hash for APIKeyConfig.Hash. Only the hash belongs in the configuration; the key
// is shown once to whoever will use it.
func NewAPIKey() (key, hash string, err error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", "", fmt.Errorf("generating an API key: %w", err)
	}
	key = APIKeyPrefix + base64.RawURLEncoding.EncodeToString(b)
	return key, HashAPIKey(key), nil
}

// HashAPIKey returns key's hash in the form APIKeyConfig.Hash takes: "sha256:" and the
// lowercase hex SHA-256 of the key's bytes.
func HashAPIKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hashPrefix + hex.EncodeToString(sum[:])
}

// apiKey is a configured key, ready for matching.
type apiKey struct {
	name    string
	hash    [sha256.Size]byte
	revoked bool
	grants  []grant
}

// matchKey returns the configured key whose hash is key's, or nil. It compares against
// every configured key in constant time, so the time taken tells nothing about which
// key, or how much of one, matched.
func matchKey(keys []apiKey, key string) *apiKey {
	sum := sha256.Sum256([]byte(key))
	var match *apiKey
	for i := range keys {
		if subtle.ConstantTimeCompare(sum[:], keys[i].hash[:]) == 1 {
			match = &keys[i]
		}
	}
	return match
}
