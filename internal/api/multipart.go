package api

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"strings"
)

// Uploads (azure-api.md §3.1.3, §3.2.5, §9.1) are multipart/form-data with the file in the
// part named "file". The part is streamed to the sandbox as it arrives, never buffered:
// a file above the limit is cut off (the agent then discards what it received) and the
// request answered 413.
//
// Real clients bend the format: Semantic Kernel Python sends a multipart body labelled
// application/json with no boundary parameter, so the boundary is taken from the body's
// first line; AutoGen sends it chunked; .NET quotes the boundary and leaves name and
// filename unquoted; langchain4j labels the part application/json. All are accepted.

// multipartSlack is what a multipart body may carry beyond the file: boundaries, part
// headers, other small fields.
const multipartSlack = 1 << 20

// maxBoundarySniff bounds the first line read to find an undeclared boundary (RFC 2046
// allows 70 characters; clients stay well below 200).
const maxBoundarySniff = 256

// upload is the file part of an upload request, positioned at the start of its data.
type upload struct {
	// filename is the part's filename parameter as sent (not reduced to a base name).
	filename string
	part     *multipart.Part
	// body remembers the request body's read error, to tell an oversized or broken
	// request from a failure of the sandbox.
	body *readErr
}

// openUpload reads an upload request up to the start of its file part's data.
func openUpload(w http.ResponseWriter, r *http.Request, limit int64) (*upload, error) {
	if r.ContentLength > limit+multipartSlack {
		return nil, errTooLarge("upload", limit, nil)
	}
	body := &readErr{r: http.MaxBytesReader(w, r.Body, limit+multipartSlack)}
	br := bufio.NewReaderSize(body, 4096)
	boundary, err := multipartBoundary(r.Header.Get("Content-Type"), br)
	if err != nil {
		return nil, err
	}
	mr := multipart.NewReader(br, boundary)
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			return nil, errInvalid("file", "The upload has no part named \"file\".")
		}
		if err != nil {
			return nil, bodyError(body, limit, "The multipart body is malformed.")
		}
		filename := partFilename(p)
		if p.FormName() == "file" || filename != "" {
			if filename == "" {
				return nil, errInvalid("file", "The part named \"file\" has no filename.")
			}
			return &upload{filename: filename, part: p, body: body}, nil
		}
		// Another form field: NextPart skips the rest of it.
	}
}

// multipartBoundary returns the boundary declared by contentType or, failing that, the
// one the body starts with ("--boundary\r\n"), peeked without consuming it.
func multipartBoundary(contentType string, br *bufio.Reader) (string, error) {
	mt, params, err := mime.ParseMediaType(contentType)
	if err == nil && strings.HasPrefix(mt, "multipart/") && params["boundary"] != "" {
		return params["boundary"], nil
	}
	head, _ := br.Peek(maxBoundarySniff)
	head = bytes.TrimLeft(head, "\r\n") // blank lines before the first boundary are preamble
	line, _, ok := bytes.Cut(head, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	boundary, isBoundary := bytes.CutPrefix(line, []byte("--"))
	boundary = bytes.TrimRight(boundary, " \t")
	if !ok || !isBoundary || len(boundary) == 0 || len(boundary) > 200 {
		return "", errInvalid("Content-Type", "The upload must be multipart/form-data with the file in a part named \"file\".")
	}
	return string(boundary), nil
}

// partFilename returns the filename parameter of a part's Content-Disposition, decoding
// filename* (RFC 7578/5987) where given, and falling back to a plain scan of the header
// when a client's quoting defeats the parser.
func partFilename(p *multipart.Part) string {
	cd := p.Header.Get("Content-Disposition")
	if _, params, err := mime.ParseMediaType(cd); err == nil {
		return params["filename"]
	}
	i := indexASCIIFold(cd, "filename=")
	if i < 0 {
		return ""
	}
	v := cd[i+len("filename="):]
	if strings.HasPrefix(v, `"`) {
		if end := strings.IndexByte(v[1:], '"'); end >= 0 {
			return v[1 : 1+end]
		}
		return ""
	}
	v, _, _ = strings.Cut(v, ";")
	return strings.TrimSpace(v)
}

// indexASCIIFold is strings.Index ignoring ASCII case. (Lower-casing s first would move
// byte offsets: some non-ASCII letters change length.)
func indexASCIIFold(s, substr string) int {
	for i := 0; i+len(substr) <= len(s); i++ {
		if strings.EqualFold(s[i:i+len(substr)], substr) {
			return i
		}
	}
	return -1
}

// bodyError classifies a failure while reading a request body.
func bodyError(body *readErr, limit int64, msg string) error {
	var mbe *http.MaxBytesError
	if errors.As(body.err, &mbe) {
		return errTooLarge("upload", limit, body.err)
	}
	return errInvalid("body", "%s", msg)
}

// readErr remembers the first error of its reader other than io.EOF.
type readErr struct {
	r   io.Reader
	err error
}

func (e *readErr) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF && e.err == nil {
		e.err = err
	}
	return n, err
}

// errFileTooLarge stops a file part's stream at the limit.
var errFileTooLarge = errors.New("file above the upload limit")

// limitedPart passes on at most max bytes of a file part and remembers why it stopped.
type limitedPart struct {
	r        io.Reader
	max, n   int64
	exceeded bool
	err      error // a read error other than io.EOF (a malformed or cut-short body)
}

func (l *limitedPart) Read(p []byte) (int, error) {
	if l.exceeded {
		return 0, errFileTooLarge
	}
	n, err := l.r.Read(p)
	l.n += int64(n)
	if l.n > l.max {
		l.exceeded = true
		return 0, errFileTooLarge
	}
	if err != nil && err != io.EOF && l.err == nil {
		l.err = err
	}
	return n, err
}
