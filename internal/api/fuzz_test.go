package api

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/pool"
)

// Native fuzzers for everything a client sends: identifiers, execution bodies, multipart
// uploads, file paths, and whole requests. Run one with, e.g.,
// go test -run '^$' -fuzz FuzzRequest ./internal/api/

func FuzzIdentifier(f *testing.F) {
	for _, s := range []string{"abcd", "8c6a2cbe-6f0a-4bd2-9f1e-2d3c4b5a6978", "abc", "has space", "héllo", "a|b{c}", "\x00\x00\x00\x00", strings.Repeat("z", 129)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		err := validateIdentifier(id)
		if err != nil {
			if status, d, _ := describe(err); status != 400 || d.Target != "identifier" {
				t.Fatalf("%q: %d %+v", id, status, d)
			}
			return
		}
		if len(id) < minIdentifierLen || len(id) > maxIdentifierLen {
			t.Fatalf("accepted %q of length %d", id, len(id))
		}
		for _, c := range []byte(id) {
			if !identifierChar(rune(c)) {
				t.Fatalf("accepted %q with %q", id, c)
			}
		}
	})
}

func FuzzExecutionBody(f *testing.F) {
	for _, s := range []string{
		`{"properties":{"codeInputType":"inline","executionType":"synchronous","code":"1+1"}}`,
		`{"codeInputType":"Inline","executionType":"Asynchronous","code":"x","timeoutInSeconds":"30","outputStreamsMaxLength":5}`,
		`{"identifier":"x","codeInputType":"Inline","executionType":"Synchronous","timeoutInSeconds":100,"pythonCode":"p"}`,
		`{"shellCommand":"ls","stdin":"x","execCommandAndArgs":["a"]}`,
		`{"codeInputType":"InlineBase64","code":"cHJpbnQoMSk="}`,
		`{"code":1e400,"timeoutInSeconds":-1e300}`,
		`[1,2]`, `null`, `{"properties":null}`, `{"properties":"x"}`,
	} {
		f.Add([]byte(s), false, false)
	}
	specs := []pool.Spec{testSpec("python", pool.PythonLTS), testSpec("shell", pool.Shell)}
	f.Fuzz(func(t *testing.T, body []byte, shell, legacy bool) {
		f, err := objectFields(body)
		if err != nil {
			return
		}
		if inner, ok := f.raw("properties"); ok {
			if f, err = objectFields(inner); err != nil {
				return
			}
		}
		spec := specs[0]
		if shell {
			spec = specs[1]
		}
		c := &call{spec: spec, poolName: spec.Name, apiVersion: "2025-10-02-preview"}
		x, err := parseExecRequest(f, httptest.NewRequest("POST", "/", nil), c, legacy)
		if err != nil {
			if status, _, _ := describe(err); status != 400 {
				t.Fatalf("%q: status %d for %v", body, status, err)
			}
			return
		}
		capSeconds := int(pool.DefaultExecutionTimeoutCap / time.Second)
		switch {
		case x.timeout < 1 || x.timeout > capSeconds:
			t.Fatalf("%q: timeout %d", body, x.timeout)
		case x.streamLimit < 0 || x.streamLimit > agentapi.MaxStreamLimit:
			t.Fatalf("%q: stream limit %d", body, x.streamLimit)
		case len(x.code) > agentapi.MaxCodeBytes:
			t.Fatalf("%q: code of %d bytes", body, len(x.code))
		case legacy && x.async:
			t.Fatalf("%q: legacy execution is asynchronous", body)
		case shell && (x.shell == "") == (x.argv == nil):
			t.Fatalf("%q: shell %q argv %q", body, x.shell, x.argv)
		case !validExecutionID(x.id):
			t.Fatalf("%q: id %q", body, x.id)
		}
	})
}

func FuzzMultipart(f *testing.F) {
	f.Add("multipart/form-data; boundary=b", []byte("--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.txt\"\r\n\r\nhello\r\n--b--\r\n"))
	f.Add("application/json", []byte("--sk\r\nContent-Disposition: form-data; name=\"file\"; filename=\"/mnt/data/x\"\r\nContent-Type: application/octet-stream\r\n\r\nx\r\n--sk--\r\n"))
	f.Add(`multipart/form-data; boundary="g-u-i-d"`, []byte("--g-u-i-d\r\nContent-Disposition: form-data; name=file; filename=r.csv; filename*=utf-8''r.csv\r\n\r\na,b\r\n--g-u-i-d--\r\n"))
	f.Add("multipart/form-data; boundary=b", []byte("--b\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nv\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; filename=x\r\n\r\n"))
	f.Add("", []byte("--b\r\n\r\n"))
	f.Fuzz(func(t *testing.T, contentType string, body []byte) {
		const limit = 64
		r := httptest.NewRequest("POST", "/", bytes.NewReader(body))
		r.Header.Set("Content-Type", contentType)
		up, err := openUpload(httptest.NewRecorder(), r, limit)
		if err != nil {
			if status, _, _ := describe(err); status != 400 && status != 413 {
				t.Fatalf("status %d for %v", status, err)
			}
			return
		}
		if up.filename == "" {
			t.Fatal("a file part without a filename")
		}
		part := &limitedPart{r: up.part, max: limit}
		n, _ := io.Copy(io.Discard, part)
		if n > limit || (part.exceeded && n > limit) {
			t.Fatalf("read %d bytes past the limit of %d", n, limit)
		}
		if rel, err := filePath("filename", "", up.filename); err == nil {
			checkRelative(t, rel)
		}
	})
}

func FuzzPaths(f *testing.F) {
	for _, s := range []string{"x.txt", "/mnt/data/x", "/mnt/data", "a//b/./c", "../x", "/etc/passwd", "a\x00b", "sub/é.csv", "/mnt/datax", "content/x/content"} {
		f.Add(s, "")
	}
	f.Add("x", "test-directory")
	f.Add("/mnt/data/x", "/mnt/data/d")
	f.Fuzz(func(t *testing.T, name, dir string) {
		if rel, _, err := dataPath("path", name); err == nil {
			checkRelative(t, rel)
		}
		d, _, err := dataPath("path", dir)
		if err != nil {
			return
		}
		rel, err := filePath("name", d, name)
		if err != nil {
			return
		}
		if rel == "" {
			t.Fatalf("filePath(%q, %q) named /mnt/data itself", d, name)
		}
		checkRelative(t, rel)
		if got := relativeTo(rel, d); strings.HasPrefix(got, "/") {
			t.Fatalf("relativeTo(%q, %q) = %q", rel, d, got)
		}
		for _, legacy := range []bool{false, true} {
			splitFileGet(name, legacy)
		}
	})
}

// checkRelative fails unless rel is a clean path below /mnt/data.
func checkRelative(t *testing.T, rel string) {
	t.Helper()
	if rel == "" {
		return
	}
	if strings.HasPrefix(rel, "/") || !utf8.ValidString(rel) || len(rel) > maxPathBytes {
		t.Fatalf("path %q", rel)
	}
	for _, seg := range strings.Split(rel, "/") {
		if seg == "" || seg == "." || seg == ".." || strings.ContainsAny(seg, "\x00\n\r") {
			t.Fatalf("path %q has segment %q", rel, seg)
		}
	}
}

// FuzzRequest sends arbitrary requests through the whole handler, over pools that have no
// sandboxes: routing, normalization, query parsing, validation and the envelope must
// never panic, and every error must be the envelope.
func FuzzRequest(f *testing.F) {
	f.Add("POST", "/pools/python/code/execute", "api-version=2024-02-02-preview&identifier=abcd", "application/json", []byte(`{"properties":{"code":"1"}}`))
	f.Add("POST", "/subscriptions/s/resourceGroups/r/sessionPools/python/executions", "api-version=2025-10-02-preview&identifier=a|b%zz+c", "application/json", []byte(`{"code":"1","timeoutInSeconds":"x"}`))
	f.Add("GET", "/pools/python/files/content/..%2Fx/content", "api-version=v&identifier=abcd&path=/mnt/data", "", []byte(nil))
	f.Add("DELETE", "/pools/shell//identifier/abcd/files/", "api-version=2024-08-02-preview", "", []byte(nil))
	f.Add("POST", "/pools/python/files", "api-version=1&identifier=abcd", "multipart/form-data; boundary=b", []byte("--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n\r\nx\r\n--b--\r\n"))
	f.Add("POST", "/pools/custom/.management/listSessions", "api-version=1&skip=99999999999999999999", "", []byte(nil))
	f.Add("PUT", "/pools/python/python/execute/x", "", "", []byte(nil))
	srv := New(Config{Pools: stubPools{
		"python": {spec: testSpec("python", pool.PythonLTS)},
		"shell":  {spec: testSpec("shell", pool.Shell)},
		"custom": {spec: testSpec("custom", pool.CustomContainer)},
	}, MaxUploadBytes: 1 << 10})
	f.Fuzz(func(t *testing.T, method, path, rawQuery, contentType string, body []byte) {
		if !validMethod(method) || !strings.HasPrefix(path, "/") {
			return
		}
		req, err := http.NewRequest(method, "http://sessiond"+path, bytes.NewReader(body))
		if err != nil {
			return
		}
		req.URL.RawQuery = rawQuery
		req.RequestURI = req.URL.RequestURI()
		req.Header.Set("Content-Type", contentType)
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, req)
		if w.Code >= 300 && w.Code < 400 {
			return // ServeMux's own redirects of unclean paths
		}
		if w.Code >= 400 && w.Header().Get("x-ms-error-code") == "" {
			t.Fatalf("%s %s?%s: %d without the envelope: %s", method, path, rawQuery, w.Code, w.Body.Bytes())
		}
		if w.Code == 500 {
			t.Fatalf("%s %s?%s: internal error: %s", method, path, rawQuery, w.Body.Bytes())
		}
	})
}

func validMethod(m string) bool {
	if m == "" {
		return false
	}
	for _, c := range m {
		if c < 'A' || c > 'Z' {
			return false
		}
	}
	return true
}
