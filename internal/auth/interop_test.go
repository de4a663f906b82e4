package auth

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestOpenSSLInterop checks the verifier against signatures made by an independent
// implementation, the openssl command: the tests' own minter shares the standard library
// with the verifier, so an encoding mistake made on both sides (say, of ECDSA's R||S)
// would go unnoticed without it.
func TestOpenSSLInterop(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		if os.Getenv("SESSIOND_TEST_REQUIRE") == "1" {
			t.Fatal("openssl is not installed (scripts/install-deps.sh installs it)")
		}
		t.Skip("openssl is not installed")
	}
	p := newIDP(t, rsaKey1(), ecKey1(), ecKey3())
	a, c := newAuth(t, Config{Issuers: []IssuerConfig{{Issuer: p.Issuer}}})
	dir := t.TempDir()
	for _, tc := range []struct {
		alg  string
		key  testKey
		args []string
	}{
		{"RS256", rsaKey1(), []string{"-sha256"}},
		{"RS512", rsaKey1(), []string{"-sha512"}},
		{"PS256", rsaKey1(), []string{"-sha256", "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest"}},
		{"ES256", ecKey1(), []string{"-sha256"}},
		{"ES384", ecKey3(), []string{"-sha384"}},
	} {
		t.Run(tc.alg, func(t *testing.T) {
			der, err := x509.MarshalPKCS8PrivateKey(tc.key.priv)
			if err != nil {
				t.Fatal(err)
			}
			keyFile := filepath.Join(dir, tc.alg+".pem")
			inFile := filepath.Join(dir, tc.alg+".in")
			sigFile := filepath.Join(dir, tc.alg+".sig")
			if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
				t.Fatal(err)
			}
			input := signingInput(t, tc.alg, tc.key.kid, claimsAt(p.Issuer, c.Now()), nil)
			if err := os.WriteFile(inFile, []byte(input), 0o600); err != nil {
				t.Fatal(err)
			}
			args := append(append([]string{"dgst"}, tc.args...), "-sign", keyFile, "-out", sigFile, inFile)
			if out, err := exec.Command(openssl, args...).CombinedOutput(); err != nil {
				t.Fatalf("openssl %v: %v\n%s", args, err, out)
			}
			sig, err := os.ReadFile(sigFile)
			if err != nil {
				t.Fatal(err)
			}
			if ek, ok := tc.key.priv.(*ecdsa.PrivateKey); ok {
				// openssl writes ECDSA signatures as DER; JWS wants R||S (RFC 7518 §3.4).
				var rs struct{ R, S *big.Int }
				if _, err := asn1.Unmarshal(sig, &rs); err != nil {
					t.Fatal(err)
				}
				n := (ek.Curve.Params().BitSize + 7) / 8
				sig = append(rs.R.FillBytes(make([]byte, n)), rs.S.FillBytes(make([]byte, n))...)
			}
			if err := authenticate(a, input+"."+b64.EncodeToString(sig)); err != nil {
				t.Fatalf("token signed by openssl: %v", err)
			}
		})
	}
}
