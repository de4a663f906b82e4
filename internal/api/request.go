package api

import (
	"bytes"
	"encoding/json"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Identifiers (azure-api.md §6): 4 to 128 characters from the union of the character sets
// Microsoft documents (Learn and the 2025-10-02-preview swagger): ASCII letters, digits and
// identifierSpecials. Case-sensitive.
const (
	minIdentifierLen   = 4
	maxIdentifierLen   = 128
	identifierSpecials = "_-|}{[]:\"';<>?/.,@#$%^&*()+=!~`"
)

// identifierRule is the rule as error messages state it.
const identifierRule = "identifiers are 4 to 128 characters long and use only letters, digits and " + identifierSpecials

// validateIdentifier checks a session identifier, naming the broken rule.
func validateIdentifier(id string) error {
	if id == "" {
		return errInvalid("identifier", "The identifier query parameter is required.")
	}
	for i := 0; i < len(id); {
		c, size := utf8.DecodeRuneInString(id[i:])
		if !identifierChar(c) {
			return errInvalid("identifier", "The identifier has the character %q at position %d, which is not allowed: %s.",
				c, utf8.RuneCountInString(id[:i])+1, identifierRule)
		}
		i += size
	}
	if n := len(id); n < minIdentifierLen || n > maxIdentifierLen {
		return errInvalid("identifier", "The identifier is %d characters long: %s.", n, identifierRule)
	}
	return nil
}

func identifierChar(c rune) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	case c < 0x80:
		return strings.ContainsRune(identifierSpecials, c)
	}
	return false
}

// isLegacyVersion reports whether an api-version selects the legacy generation of the
// paths both generations share: a date before 2024-10-02 (2024-02-02-preview,
// 2024-08-02-preview). Anything else, including a string that is not a date, is current.
func isLegacyVersion(v string) bool {
	d, ok := versionDate(v)
	return ok && d < "2024-10-02"
}

// versionAtLeast reports whether an api-version's date is date or later; a version that is
// not a date counts as the newest.
func versionAtLeast(v, date string) bool {
	d, ok := versionDate(v)
	return !ok || d >= date
}

// versionDate returns the YYYY-MM-DD an api-version starts with.
func versionDate(v string) (string, bool) {
	if len(v) < 10 || v[4] != '-' || v[7] != '-' {
		return "", false
	}
	for i, c := range v[:10] {
		if i != 4 && i != 7 && (c < '0' || c > '9') {
			return "", false
		}
	}
	return v[:10], true
}

// maxJSONBody bounds a JSON request body, read whole: room for the largest code
// (agentapi.MaxCodeBytes, 4 MiB) JSON-escaped. A Shell pool's stdin is bounded by it too,
// below agentapi.MaxStdin.
const maxJSONBody = 16 << 20

// readJSONBody reads a request's JSON body (at most maxJSONBody bytes). The body is taken
// as JSON whatever its Content-Type says, unless it says one of the types a web page may
// send another site without a preflight (text/plain, application/x-www-form-urlencoded,
// multipart/form-data): those are refused, so that a cross-site form cannot post code
// (guard.go). Real clients send application/json, some with a charset, some nothing at
// all (azure-api.md §9); curl -d sends x-www-form-urlencoded and is told what to send.
// 400 with SessionRequestValidationFailed, like every other malformed request and like
// an upload that is not multipart, rather than 415, which no client handles apart.
func readJSONBody(r *http.Request) ([]byte, error) {
	if ct := r.Header.Get("Content-Type"); formContentType(ct) {
		return nil, errInvalid("Content-Type", "The request body must be JSON, sent as Content-Type: application/json; got Content-Type %.100q.", ct)
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, maxJSONBody+1))
	if err != nil {
		return nil, errInvalid("body", "The request body could not be read.")
	}
	if len(b) > maxJSONBody {
		return nil, errTooLarge("request body", maxJSONBody, nil)
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, errInvalid("body", "The request body is empty; a JSON object is required.")
	}
	return b, nil
}

// formContentType reports whether a Content-Type is one a form or a no-cors fetch may
// send: text/plain, application/x-www-form-urlencoded or multipart/*, with any
// parameters, in any case.
func formContentType(ct string) bool {
	mt, _, _ := strings.Cut(ct, ";")
	mt = strings.ToLower(strings.TrimSpace(mt))
	return mt == "text/plain" || mt == "application/x-www-form-urlencoded" || strings.HasPrefix(mt, "multipart/")
}

// fields are the members of a JSON object, by lower-cased name: field names match
// case-insensitively, unknown fields are ignored, and a type error names its field.
// Numbers may be sent as strings and booleans as "true"/"false", as loosely typed clients
// do.
type fields map[string]json.RawMessage

// objectFields decodes a JSON object.
func objectFields(b []byte) (fields, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil || m == nil {
		return nil, errInvalid("body", "The request body is not a valid JSON object.")
	}
	f := make(fields, len(m))
	for k, v := range m {
		k = strings.ToLower(k)
		if _, dup := f[k]; !dup || string(f[k]) == "null" {
			f[k] = v
		}
	}
	return f, nil
}

// raw returns the named member unless it is absent or null.
func (f fields) raw(name string) (json.RawMessage, bool) {
	v, ok := f[strings.ToLower(name)]
	if !ok || string(v) == "null" {
		return nil, false
	}
	return v, true
}

// str returns a string member.
func (f fields) str(name string) (string, bool, error) {
	v, ok := f.raw(name)
	if !ok {
		return "", false, nil
	}
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		return "", false, errInvalid(name, "The field %s must be a string.", name)
	}
	return s, true, nil
}

// int returns an integer member (a JSON number without fraction, or a numeric string).
func (f fields) int(name string) (int64, bool, error) {
	v, ok := f.raw(name)
	if !ok {
		return 0, false, nil
	}
	s := string(v)
	if uq, err := strconv.Unquote(s); err == nil {
		s = strings.TrimSpace(uq)
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return n, true, nil
	}
	if x, err := strconv.ParseFloat(s, 64); err == nil && x == math.Trunc(x) && math.Abs(x) < 1<<53 {
		return int64(x), true, nil
	}
	return 0, false, errInvalid(name, "The field %s must be an integer.", name)
}

// bool returns a boolean member (true/false, or a string that says so).
func (f fields) bool(name string) (bool, bool, error) {
	v, ok := f.raw(name)
	if !ok {
		return false, false, nil
	}
	s := string(v)
	if uq, err := strconv.Unquote(s); err == nil {
		s = strings.TrimSpace(uq)
	}
	b, err := strconv.ParseBool(s)
	if err != nil {
		return false, false, errInvalid(name, "The field %s must be a boolean.", name)
	}
	return b, true, nil
}

// strings returns an array-of-strings member.
func (f fields) strings(name string) ([]string, bool, error) {
	v, ok := f.raw(name)
	if !ok {
		return nil, false, nil
	}
	var ss []string
	if err := json.Unmarshal(v, &ss); err != nil {
		return nil, false, errInvalid(name, "The field %s must be an array of strings.", name)
	}
	return ss, true, nil
}

// parseEnum matches v case-insensitively against the allowed values of field and returns
// the canonical spelling ("" for "").
func parseEnum(field, v string, allowed ...string) (string, error) {
	if v == "" {
		return "", nil
	}
	for _, a := range allowed {
		if strings.EqualFold(strings.TrimSpace(v), a) {
			return a, nil
		}
	}
	return "", errInvalid(field, "The field %s has the value %q; allowed values are %s (in any case).", field, v, strings.Join(allowed, ", "))
}
