package api

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
)

// Golden wire scripts: testdata/*.txt hold the exact requests a client sends and the
// exact responses it gets, replayed against a real httptest server over real agents (see
// testPools). Run with -rewrite to regenerate the responses; commit the diff only if you
// understand every line of it.
//
// A script is a header of '#' comment lines, then cases:
//
//	=== title
//	# optional comment lines
//	METHOD /path?query
//	Header: value
//	@directive args
//
//	body lines
//	--- STATUS
//	Header: value
//
//	response body
//
// The request body runs up to the "--- " line (trailing blank lines dropped). Directives:
//
//	@crlf              end every body line with CRLF (multipart bodies)
//	@chunked           send the body with Transfer-Encoding: chunked
//	@poll KEY=VALUE    repeat the request while the JSON response's top-level KEY is VALUE
//	@mask PATH REGEXP  the JSON string at dotted PATH must match REGEXP; shown as "<masked>"
//	@repeat-body-line N COUNT  send body line N (from 1) COUNT times (large bodies)
//
// "{{operation-id}}" in a request line or header is the operation-id header of the last
// response that had one.
//
// The response shows the status, the headers in goldenHeaders that are present, and the
// body: JSON re-indented in the order the server wrote it, with variable values replaced
// by placeholders (goldenPlaceholders) after checking their format; any other body as a
// quoted Go string.

var rewrite = flag.Bool("rewrite", false, "rewrite the expected responses of testdata/*.txt")

// goldenHeaders are the response headers scripts show.
var goldenHeaders = []string{"Content-Type", "Allow", "Retry-After", "x-ms-error-code", "operation-id", "Operation-Location"}

var (
	uuidPattern    = regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}`)
	traceIDPattern = regexp.MustCompile(`^[0-9a-f]{32}$`)
	// executionPathPattern finds a generated execution ID in an Operation-Location.
	executionPathPattern = regexp.MustCompile(`/executions/[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\?`)
)

// goldenPlaceholders replace variable JSON values, by member name, after check accepts
// them. A value check refuses stays as it is, so the diff shows it.
var goldenPlaceholders = map[string]struct {
	placeholder string
	check       func(any) bool
}{
	"executionTimeInMilliseconds": {"<ms>", func(v any) bool { f, ok := v.(float64); return ok && f >= 0 }},
	"lastModifiedTime":            {"<time>", isTime},
	"last_modified_time":          {"<time>", isTime},
	"lastModifiedAt":              {"<time>", isTime},
	"createdAt":                   {"<time>", isTime},
	"lastAccessedAt":              {"<time>", isTime},
	"expireAt":                    {"<time>", isTime},
	"expiresAt":                   {"<time>", isTime},
	"lastUpdatedAt":               {"<time>", isTime},
	"traceId":                     {"<trace-id>", func(v any) bool { s, ok := v.(string); return ok && traceIDPattern.MatchString(s) }},
	"etag":                        {"<sandbox-id>", func(v any) bool { s, ok := v.(string); return ok && s != "" }},
	"id":                          {"<uuid>", func(v any) bool { s, ok := v.(string); return ok && uuidPattern.MatchString(s) && len(s) == 36 }},
	"base64_data":                 {"<png>", isPNG},
}

func isTime(v any) bool {
	s, ok := v.(string)
	if !ok {
		return false
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	return err == nil && t.Location() == time.UTC && t.After(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC))
}

func isPNG(v any) bool {
	s, ok := v.(string)
	if !ok {
		return false
	}
	b, err := base64.StdEncoding.DecodeString(s)
	return err == nil && bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n"))
}

type goldenCase struct {
	title    string
	comments []string
	method   string
	target   string
	headers  [][2]string
	crlf     bool
	chunked  bool
	poll     [2]string
	masks    [][2]string
	repeat   [2]int // body line (1-based) and count
	body     []string
	// request is the case's text up to and including the "--- " line's predecessor.
	request  []string
	response string // expected: the "--- " line and what follows, trimmed
}

type goldenScript struct {
	header []string
	cases  []*goldenCase
}

func parseScript(t *testing.T, text string) *goldenScript {
	t.Helper()
	lines := strings.Split(strings.ReplaceAll(text, "\r\n", "\n"), "\n")
	s := &goldenScript{}
	i := 0
	for ; i < len(lines) && !strings.HasPrefix(lines[i], "=== "); i++ {
		s.header = append(s.header, lines[i])
	}
	for i < len(lines) {
		c := &goldenCase{title: strings.TrimPrefix(lines[i], "=== ")}
		c.request = append(c.request, lines[i])
		i++
		for ; i < len(lines) && strings.HasPrefix(lines[i], "#"); i++ {
			c.comments = append(c.comments, lines[i])
			c.request = append(c.request, lines[i])
		}
		if i >= len(lines) {
			t.Fatalf("case %q: no request line", c.title)
		}
		method, target, ok := strings.Cut(lines[i], " ")
		if !ok {
			t.Fatalf("case %q: bad request line %q", c.title, lines[i])
		}
		c.method, c.target = method, target
		c.request = append(c.request, lines[i])
		i++
		for ; i < len(lines) && lines[i] != "" && !strings.HasPrefix(lines[i], "--- "); i++ {
			c.request = append(c.request, lines[i])
			line := lines[i]
			if d, ok := strings.CutPrefix(line, "@"); ok {
				name, arg, _ := strings.Cut(d, " ")
				switch name {
				case "crlf":
					c.crlf = true
				case "chunked":
					c.chunked = true
				case "poll":
					k, v, _ := strings.Cut(arg, "=")
					c.poll = [2]string{k, v}
				case "repeat-body-line":
					if _, err := fmt.Sscan(arg, &c.repeat[0], &c.repeat[1]); err != nil {
						t.Fatalf("case %q: bad directive %q", c.title, line)
					}
				case "mask":
					p, re, _ := strings.Cut(arg, " ")
					if _, err := regexp.Compile(re); err != nil {
						t.Fatalf("case %q: %v", c.title, err)
					}
					c.masks = append(c.masks, [2]string{p, re})
				default:
					t.Fatalf("case %q: unknown directive %q", c.title, line)
				}
				continue
			}
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				t.Fatalf("case %q: bad header line %q", c.title, line)
			}
			c.headers = append(c.headers, [2]string{k, strings.TrimSpace(v)})
		}
		if i < len(lines) && lines[i] == "" {
			c.request = append(c.request, lines[i]) // the blank line that ends the headers
			i++
		}
		for ; i < len(lines) && !strings.HasPrefix(lines[i], "--- "); i++ {
			c.request = append(c.request, lines[i])
			c.body = append(c.body, lines[i])
		}
		var resp []string
		for ; i < len(lines) && !strings.HasPrefix(lines[i], "=== "); i++ {
			resp = append(resp, lines[i])
		}
		c.response = strings.TrimRight(strings.Join(resp, "\n"), "\n")
		s.cases = append(s.cases, c)
	}
	return s
}

func (c *goldenCase) requestBody() []byte {
	body := slices.Clone(c.body)
	for len(body) > 0 && body[len(body)-1] == "" {
		body = body[:len(body)-1]
	}
	if len(body) == 0 && !c.crlf {
		return nil
	}
	if n, count := c.repeat[0], c.repeat[1]; n > 0 && n <= len(body) {
		body = slices.Concat(body[:n-1], slices.Repeat(body[n-1:n], count), body[n:])
	}
	if c.crlf {
		var b bytes.Buffer
		for _, l := range body {
			b.WriteString(l + "\r\n")
		}
		return b.Bytes()
	}
	return []byte(strings.Join(body, "\n"))
}

// TestGolden replays testdata/*.txt.
func TestGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no scripts: %v", err)
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".txt"), func(t *testing.T) {
			t.Parallel()
			runScript(t, file)
		})
	}
}

func runScript(t *testing.T, file string) {
	text, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	script := parseScript(t, string(text))
	pools := newTestPools(t, true)
	// The guard is on, as it should be for a server on loopback without authentication:
	// every client must still pass it.
	srv := httptest.NewServer(New(Config{Pools: pools, MaxUploadBytes: 1 << 20, AllowedHosts: []string{"127.0.0.1", "localhost"}}))
	defer srv.Close()
	var out strings.Builder
	if len(script.header) > 0 {
		out.WriteString(strings.Join(script.header, "\n") + "\n")
	}
	lastOperationID := ""
	for _, c := range script.cases {
		got := runCase(t, srv, c, &lastOperationID)
		if !*rewrite && got != c.response {
			t.Errorf("%s: case %q: response mismatch (-want +got):\n%s", file, c.title, cmp.Diff(c.response, got))
		}
		out.WriteString(strings.Join(c.request, "\n") + "\n" + got + "\n\n")
	}
	if *rewrite {
		if err := os.WriteFile(file, []byte(strings.TrimRight(out.String(), "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// runCase sends a case's request (repeating it while @poll says so) and renders the response.
func runCase(t *testing.T, srv *httptest.Server, c *goldenCase, lastOperationID *string) string {
	t.Helper()
	subst := func(s string) string { return strings.ReplaceAll(s, "{{operation-id}}", *lastOperationID) }
	deadline := time.Now().Add(60 * time.Second)
	for {
		body := c.requestBody()
		var rd io.Reader = bytes.NewReader(body)
		if c.chunked {
			rd = io.MultiReader(bytes.NewReader(body)) // no Len: sent chunked
		}
		req, err := http.NewRequest(c.method, srv.URL+subst(c.target), rd)
		if err != nil {
			t.Fatalf("case %q: %v", c.title, err)
		}
		if body == nil {
			req.Body, req.ContentLength = http.NoBody, 0
		} else if c.chunked {
			req.ContentLength = -1
		}
		for _, h := range c.headers {
			req.Header.Add(h[0], subst(h[1]))
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("case %q: %v", c.title, err)
		}
		rb, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("case %q: reading response: %v", c.title, err)
		}
		if id := resp.Header.Get("operation-id"); id != "" {
			*lastOperationID = id
		}
		if c.poll[0] != "" && time.Now().Before(deadline) {
			var m map[string]any
			if json.Unmarshal(rb, &m) == nil && fmt.Sprint(m[c.poll[0]]) == c.poll[1] {
				time.Sleep(50 * time.Millisecond)
				continue
			}
		}
		return renderResponse(t, c, resp, rb)
	}
}

func renderResponse(t *testing.T, c *goldenCase, resp *http.Response, body []byte) string {
	var b strings.Builder
	fmt.Fprintf(&b, "--- %d\n", resp.StatusCode)
	for _, h := range goldenHeaders {
		for _, v := range resp.Header.Values(h) {
			if h == "operation-id" && uuidPattern.MatchString(v) && len(v) == 36 {
				v = "<uuid>"
			}
			if h == "Operation-Location" {
				v = executionPathPattern.ReplaceAllString(v, "/executions/<uuid>?")
			}
			fmt.Fprintf(&b, "%s: %s\n", h, v)
		}
	}
	if len(body) == 0 {
		return strings.TrimRight(b.String(), "\n")
	}
	b.WriteString("\n")
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		j, err := renderJSON(c, body)
		if err != nil {
			t.Errorf("case %q: response is not JSON: %v\n%s", c.title, err, body)
			b.WriteString(strconv.Quote(string(body)))
		} else {
			b.WriteString(j)
		}
		return b.String()
	}
	if len(body) > 2000 || !utf8.Valid(body) {
		sum := sha256.Sum256(body)
		fmt.Fprintf(&b, "<%d bytes sha256:%s>", len(body), hex.EncodeToString(sum[:]))
		return b.String()
	}
	b.WriteString(strconv.Quote(string(body)))
	return b.String()
}

// renderJSON re-indents a JSON document in its own member order, applying placeholders.
func renderJSON(c *goldenCase, body []byte) (string, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	v, err := decodeOrdered(dec)
	if err != nil {
		return "", err
	}
	if dec.More() {
		return "", fmt.Errorf("trailing data")
	}
	for _, m := range c.masks {
		maskPath(v, strings.Split(m[0], "."), regexp.MustCompile(m[1]))
	}
	maskDirectorySizes(v)
	var b strings.Builder
	writeOrdered(&b, v, "", "")
	return b.String(), nil
}

// ordered is a JSON object with its members in document order.
type ordered []member

type member struct {
	key   string
	value any
}

func decodeOrdered(dec *json.Decoder) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch d := tok.(type) {
	case json.Delim:
		switch d {
		case '{':
			var o ordered
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, err
				}
				v, err := decodeOrdered(dec)
				if err != nil {
					return nil, err
				}
				o = append(o, member{kt.(string), v})
			}
			_, err := dec.Token()
			return o, err
		case '[':
			a := []any{}
			for dec.More() {
				v, err := decodeOrdered(dec)
				if err != nil {
					return nil, err
				}
				a = append(a, v)
			}
			_, err := dec.Token()
			return a, err
		}
	}
	return tok, nil
}

func maskPath(v any, path []string, re *regexp.Regexp) {
	o, ok := v.(ordered)
	if !ok {
		return
	}
	for i := range o {
		if o[i].key != path[0] {
			continue
		}
		if len(path) > 1 {
			maskPath(o[i].value, path[1:], re)
			continue
		}
		if s, ok := o[i].value.(string); ok && re.MatchString(s) {
			o[i].value = placeholder("<masked>")
		}
	}
}

// placeholder is written as it is, unquoted.
type placeholder string

// maskDirectorySizes replaces the sizeInBytes of directories, which depends on the file
// system (4096 on ext4, other values on tmpfs or overlayfs).
func maskDirectorySizes(v any) {
	switch x := v.(type) {
	case ordered:
		isDir := slices.ContainsFunc(x, func(m member) bool { return m.key == "type" && m.value == "Directory" })
		for i := range x {
			if isDir && x[i].key == "sizeInBytes" {
				x[i].value = placeholder("<directory-size>")
				continue
			}
			maskDirectorySizes(x[i].value)
		}
	case []any:
		for _, e := range x {
			maskDirectorySizes(e)
		}
	}
}

func writeOrdered(b *strings.Builder, v any, key, indent string) {
	switch x := v.(type) {
	case ordered:
		if len(x) == 0 {
			b.WriteString("{}")
			return
		}
		b.WriteString("{\n")
		for i, m := range x {
			fmt.Fprintf(b, "%s  %s: ", indent, marshalPlain(m.key))
			writeOrdered(b, m.value, m.key, indent+"  ")
			if i < len(x)-1 {
				b.WriteString(",")
			}
			b.WriteString("\n")
		}
		b.WriteString(indent + "}")
	case []any:
		if len(x) == 0 {
			b.WriteString("[]")
			return
		}
		b.WriteString("[\n")
		for i, e := range x {
			b.WriteString(indent + "  ")
			writeOrdered(b, e, "", indent+"  ")
			if i < len(x)-1 {
				b.WriteString(",")
			}
			b.WriteString("\n")
		}
		b.WriteString(indent + "]")
	case placeholder:
		b.WriteString(string(x))
	default:
		if p, ok := goldenPlaceholders[key]; ok {
			var plain any = x
			if n, ok := x.(json.Number); ok {
				plain, _ = n.Float64()
			}
			if p.check(plain) {
				b.WriteString(p.placeholder)
				return
			}
		}
		if n, ok := x.(json.Number); ok {
			b.WriteString(n.String())
			return
		}
		b.WriteString(marshalPlain(x))
	}
}

// marshalPlain encodes a JSON scalar without escaping <, > and &.
func marshalPlain(v any) string {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.Encode(v)
	return strings.TrimSuffix(buf.String(), "\n")
}
