package auth

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"strings"
	"time"

	// Hash implementations the algorithms below name.
	_ "crypto/sha256"
	_ "crypto/sha512"
)

// Tokens are verified with the standard library's crypto rather than a JOSE library: the
// surface sessiond accepts is small (compact JWS, nine asymmetric algorithms, RSA and EC
// keys), and keeping it in this file makes each defence visible and tested here: the
// algorithm table below is an allow-list with no "none" and no HMAC, so a token can never
// choose a symmetric algorithm and be checked with a public key as the secret; each
// algorithm names the key type and curve it needs, and a key of another type is never
// tried; every size is bounded before anything is decoded. It also adds no dependency to
// the control plane. TestOpenSSLInterop checks the verifier against signatures made by an
// independent implementation.

// MaxTokenBytes bounds a bearer token. Entra ID tokens are 1-3 KiB (more with many group
// ids, which it caps by moving them out of the token); anything larger is refused before
// it is decoded.
const MaxTokenBytes = 16 << 10

// algorithm is one accepted JWS "alg".
type algorithm struct {
	hash  crypto.Hash
	kind  keyKind
	curve elliptic.Curve // for ECDSA
	pss   bool           // RSASSA-PSS rather than PKCS #1 v1.5
}

type keyKind int

const (
	kindRSA keyKind = iota + 1
	kindEC
)

// algorithms is the allow-list of JWS algorithms (RFC 7518 §3).
var algorithms = map[string]algorithm{
	"RS256": {hash: crypto.SHA256, kind: kindRSA},
	"RS384": {hash: crypto.SHA384, kind: kindRSA},
	"RS512": {hash: crypto.SHA512, kind: kindRSA},
	"PS256": {hash: crypto.SHA256, kind: kindRSA, pss: true},
	"PS384": {hash: crypto.SHA384, kind: kindRSA, pss: true},
	"PS512": {hash: crypto.SHA512, kind: kindRSA, pss: true},
	"ES256": {hash: crypto.SHA256, kind: kindEC, curve: elliptic.P256()},
	"ES384": {hash: crypto.SHA384, kind: kindEC, curve: elliptic.P384()},
	"ES512": {hash: crypto.SHA512, kind: kindEC, curve: elliptic.P521()},
}

// jwsHeader is the protected header of a token.
type jwsHeader struct {
	Alg  string          `json:"alg"`
	Kid  string          `json:"kid"`
	Crit json.RawMessage `json:"crit"`
}

// token is a parsed, not yet verified, JWT.
type token struct {
	header       jwsHeader
	claims       claims
	raw          map[string]any // every claim, for role mappings
	signingInput []byte         // header "." payload, as received
	signature    []byte
}

// claims are the registered claims sessiond checks.
type claims struct {
	Issuer    string       `json:"iss"`
	Subject   string       `json:"sub"`
	Audience  audience     `json:"aud"`
	Expiry    *numericDate `json:"exp"`
	NotBefore *numericDate `json:"nbf"`
	IssuedAt  *numericDate `json:"iat"`
}

// audience is the "aud" claim: one string or an array of them (RFC 7519 §4.1.3).
type audience []string

func (a *audience) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*a = audience{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return errors.New(`"aud" must be a string or an array of strings`)
	}
	*a = many
	return nil
}

// numericDate is a time in seconds since the epoch, possibly fractional (RFC 7519 §2).
type numericDate struct{ time.Time }

// maxNumericDate is the end of year 9999: later dates are refused rather than overflowing.
const maxNumericDate = 253402300799

func (d *numericDate) UnmarshalJSON(b []byte) error {
	var f float64
	if err := json.Unmarshal(b, &f); err != nil {
		return errors.New("a date claim must be a number of seconds")
	}
	if f < 0 || f > maxNumericDate || math.IsNaN(f) {
		return fmt.Errorf("date claim %v is out of range", f)
	}
	sec, frac := math.Modf(f)
	d.Time = time.Unix(int64(sec), int64(frac*1e9))
	return nil
}

var b64 = base64.RawURLEncoding.Strict()

// parseToken splits and decodes a compact JWS and its claims. It checks the form only;
// verify checks the signature and validate the claims.
func parseToken(s string) (*token, error) {
	if len(s) > MaxTokenBytes {
		return nil, fmt.Errorf("token is %d bytes, more than the limit of %d", len(s), MaxTokenBytes)
	}
	h, rest, ok1 := strings.Cut(s, ".")
	p, sig, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || strings.Contains(sig, ".") {
		return nil, errors.New("token is not a compact JWS (three dot-separated parts)")
	}
	hb, err := b64.DecodeString(h)
	if err != nil {
		return nil, fmt.Errorf("decoding token header: %w", err)
	}
	t := &token{signingInput: []byte(s[:len(h)+1+len(p)])}
	if err := strictUnmarshal(hb, &t.header); err != nil {
		return nil, fmt.Errorf("decoding token header: %w", err)
	}
	if t.header.Crit != nil {
		// RFC 7515 §4.1.11: extensions we do not implement must make the token invalid.
		return nil, errors.New(`token header has "crit" extensions, which are not supported`)
	}
	if _, ok := algorithms[t.header.Alg]; !ok {
		return nil, fmt.Errorf("token algorithm %.20q is not accepted (want RS256/384/512, PS256/384/512 or ES256/384/512)", t.header.Alg)
	}
	pb, err := b64.DecodeString(p)
	if err != nil {
		return nil, fmt.Errorf("decoding token payload: %w", err)
	}
	if err := strictUnmarshal(pb, &t.claims); err != nil {
		return nil, fmt.Errorf("decoding token claims: %w", err)
	}
	if err := strictUnmarshal(pb, &t.raw); err != nil {
		return nil, fmt.Errorf("decoding token claims: %w", err)
	}
	if t.signature, err = b64.DecodeString(sig); err != nil {
		return nil, fmt.Errorf("decoding token signature: %w", err)
	}
	return t, nil
}

// strictUnmarshal decodes one JSON value and refuses anything after it.
func strictUnmarshal(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	if err := d.Decode(v); err != nil {
		return err
	}
	if d.More() {
		return errors.New("trailing data after the JSON value")
	}
	return nil
}

// verify checks t's signature with key, which must be of the type and curve t's
// algorithm names.
func (t *token) verify(key crypto.PublicKey) error {
	alg := algorithms[t.header.Alg]
	h := alg.hash.New()
	h.Write(t.signingInput)
	digest := h.Sum(nil)
	switch k := key.(type) {
	case *rsa.PublicKey:
		if alg.kind != kindRSA {
			return errKeyMismatch
		}
		if alg.pss {
			return rsa.VerifyPSS(k, alg.hash, digest, t.signature, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
		}
		return rsa.VerifyPKCS1v15(k, alg.hash, digest, t.signature)
	case *ecdsa.PublicKey:
		if alg.kind != kindEC || k.Curve != alg.curve {
			return errKeyMismatch
		}
		// RFC 7518 §3.4: R and S as fixed-size big-endian integers, concatenated.
		n := (alg.curve.Params().BitSize + 7) / 8
		if len(t.signature) != 2*n {
			return fmt.Errorf("ECDSA signature is %d bytes, want %d", len(t.signature), 2*n)
		}
		r := new(big.Int).SetBytes(t.signature[:n])
		s := new(big.Int).SetBytes(t.signature[n:])
		if !ecdsa.Verify(k, digest, r, s) {
			return errors.New("ECDSA verification failed")
		}
		return nil
	}
	return errKeyMismatch
}

var errKeyMismatch = errors.New("key type does not match the token's algorithm")

// validate checks t's time claims against now, allowing skew either way, and that its
// audience is one of auds (each without a trailing slash).
func (c *claims) validate(now time.Time, skew time.Duration, auds []string) error {
	if c.Expiry == nil {
		return errNoExpiry
	}
	if now.After(c.Expiry.Add(skew)) {
		return errExpired
	}
	if c.NotBefore != nil && now.Add(skew).Before(c.NotBefore.Time) {
		return errNotYetValid
	}
	if c.IssuedAt != nil && now.Add(skew).Before(c.IssuedAt.Time) {
		return errIssuedInFuture
	}
	for _, a := range c.Audience {
		for _, want := range auds {
			if strings.TrimSuffix(a, "/") == want {
				return nil
			}
		}
	}
	return errAudience
}

// Claim errors; their text is shown to clients, after "The access token is not valid: ".
var (
	errNoExpiry       = errors.New(`it has no expiry ("exp" claim)`)
	errExpired        = errors.New("it has expired")
	errNotYetValid    = errors.New(`it is not valid yet ("nbf" claim)`)
	errIssuedInFuture = errors.New(`it was issued in the future ("iat" claim); check the clocks`)
	errAudience       = errors.New(`its audience ("aud" claim) is not accepted by this server`)
)
