package api

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/pool"
)

// Files (azure-api.md §3.1.3–§3.1.5, §3.2.5): a session's files live under /mnt/data and
// are reached through its agent's files API. File operations allocate a session for an
// unknown identifier, as the live service does (§13.3): a new session simply has no files.
// The legacy generation wraps each file in {"$id","properties":{filename,size,
// lastModifiedTime}}; the new one is flat {name,type,contentType,sizeInBytes,
// lastModifiedAt,directory}.

// Agent calls are bounded, so that a hung agent cannot pin a request, and the lease it
// holds, for ever. A call that runs out of time is a Timeout (504).
const (
	// metadataTimeout bounds a call that moves no file data: list, stat, remove (and
	// getting an execution's state, executions.go). A recursive listing stats at most
	// agentapi.MaxListEntries entries and a recursive remove walks one tree of a local
	// file system: seconds at worst.
	metadataTimeout = 30 * time.Second
	// transferTimeout bounds an upload or a download, bodies included: the largest file
	// (DefaultMaxUploadBytes) at a slow client's pace, and the agent's own bound on one
	// transfer.
	transferTimeout = 30 * time.Minute
)

// agentContext returns the context for an agent call of r: metadataTimeout, or
// transferTimeout for a transfer (the Server's, which tests shorten).
func (s *Server) agentContext(r *http.Request, transfer bool) (context.Context, context.CancelFunc) {
	d := s.metadataTimeout
	if transfer {
		d = s.transferTimeout
	}
	return context.WithTimeout(r.Context(), d)
}

// agentError describes err, the failure of the agent call action made under ctx. If
// ctx's deadline passed, it is a Timeout whatever the agent client made of it (a body cut
// off by the deadline reads as a broken connection).
func agentError(ctx context.Context, action string, err error) error {
	err = fmt.Errorf("%s: %w", action, err)
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return &errkind.Error{Kind: errkind.Timeout, Public: true, Err: err,
			Msg: "The session's sandbox did not complete the operation in time."}
	}
	return err
}

// Legacy shapes.

type legacyFileList struct {
	ID    string            `json:"$id"`
	Value []legacyFileEntry `json:"value"`
}

type legacyFileEntry struct {
	ID         string               `json:"$id"`
	Properties legacyFileProperties `json:"properties"`
}

type legacyFileProperties struct {
	ID string `json:"$id"`
	// Filename is relative to /mnt/data (LangChain's integration test expects "test1.txt"
	// for an upload to /mnt/data/test1.txt).
	Filename         string `json:"filename"`
	Size             int64  `json:"size"`
	LastModifiedTime string `json:"lastModifiedTime"`
	// LastModifiedTimeSnake is the pre-GA name, which LangChain.js still types.
	LastModifiedTimeSnake string `json:"last_modified_time"`
}

func legacyList(files []agentapi.FileInfo) legacyFileList {
	l := legacyFileList{ID: "1", Value: []legacyFileEntry{}}
	for i, fi := range files {
		t := formatTime(fi.ModTime)
		l.Value = append(l.Value, legacyFileEntry{
			ID: strconv.Itoa(2 + 2*i),
			Properties: legacyFileProperties{ID: strconv.Itoa(3 + 2*i), Filename: fi.Path, Size: fi.Size,
				LastModifiedTime: t, LastModifiedTimeSnake: t},
		})
	}
	return l
}

// New shapes.

type fileResource struct {
	Name        string `json:"name"`
	Type        string `json:"type"` // "File" or "Directory"
	ContentType string `json:"contentType"`
	SizeInBytes int64  `json:"sizeInBytes"`
	// LastModifiedAt is RFC 3339 in UTC.
	LastModifiedAt string `json:"lastModifiedAt"`
	// Directory is the entry's directory relative to the request's path ("" directly in it).
	Directory string `json:"directory"`
}

type fileList struct {
	Value []fileResource `json:"value"`
}

func resource(fi agentapi.FileInfo, dir string) fileResource {
	res := fileResource{Name: fi.Name, Type: "File", ContentType: contentTypeOf(fi.Name), SizeInBytes: fi.Size,
		LastModifiedAt: formatTime(fi.ModTime), Directory: relativeTo(fi.Path, dir)}
	if fi.IsDir {
		res.Type, res.ContentType = "Directory", defaultContentType
	}
	if res.ContentType == "" {
		res.ContentType = defaultContentType
	}
	return res
}

func formatTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// requestDir returns the request's path query parameter relative to /mnt/data.
func requestDir(c *call) (string, error) {
	dir, _, err := dataPath("path", c.query.get("path"))
	return dir, err
}

// session leases the call's session, allocating one for a new identifier.
func session(r *http.Request, c *call) (*pool.Lease, error) {
	return c.pool.Acquire(r.Context(), c.identifier)
}

// listFilesLegacy serves legacy GET files: the files (not directories) directly in
// /mnt/data, or in the path parameter's directory.
func (s *Server) listFilesLegacy(w http.ResponseWriter, r *http.Request) error {
	c := callOf(r)
	dir, err := requestDir(c)
	if err != nil {
		return err
	}
	files, err := s.listDir(r, c, dir, false)
	if err != nil {
		return err
	}
	regular := files[:0]
	for _, fi := range files {
		if !fi.IsDir {
			regular = append(regular, fi)
		}
	}
	return writeJSON(w, http.StatusOK, legacyList(regular))
}

// listFiles serves GET files: the entries of /mnt/data or of the path parameter's
// directory; with recursive=true every entry below it, each with its directory.
func (s *Server) listFiles(w http.ResponseWriter, r *http.Request) error {
	c := callOf(r)
	dir, err := requestDir(c)
	if err != nil {
		return err
	}
	recursive, err := boolParam(c, "recursive")
	if err != nil {
		return err
	}
	files, err := s.listDir(r, c, dir, recursive)
	if err != nil {
		return err
	}
	l := fileList{Value: make([]fileResource, 0, len(files))}
	for _, fi := range files {
		l.Value = append(l.Value, resource(fi, dir))
	}
	return writeJSON(w, http.StatusOK, l)
}

func (s *Server) listDir(r *http.Request, c *call, dir string, recursive bool) ([]agentapi.FileInfo, error) {
	lease, err := session(r, c)
	if err != nil {
		return nil, err
	}
	defer lease.Release()
	ctx, cancel := s.agentContext(r, false)
	defer cancel()
	l, err := lease.Agent.ListFiles(ctx, dir, recursive)
	if err != nil {
		return nil, agentError(ctx, "listing files", err)
	}
	return l.Files, nil
}

func boolParam(c *call, name string) (bool, error) {
	v := c.query.get(name)
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, errInvalid(name, "The %s query parameter must be true or false; got %q.", name, v)
	}
	return b, nil
}

// fileGet serves GET files/{path...}, which carries three operations (see routes): the
// legacy download files/content/{name}, the new download files/{name}/content, and a
// file's metadata, files/{name}. legacy is the generation of the api-version.
func (s *Server) fileGet(legacy bool) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		c := callOf(r)
		name, download := splitFileGet(r.PathValue("path"), legacy)
		switch {
		case download:
			return s.download(w, r, c, name)
		case legacy:
			return s.fileInfoLegacy(w, r, c, name)
		}
		return s.fileInfo(w, r, c, name)
	}
}

// splitFileGet tells a download from a metadata request by the rest of a GET files/...
// path: a name followed by /content is the new download, content/ followed by a name the
// legacy one, anything else a file's metadata. The generation of the api-version breaks
// the tie of content/.../content.
func splitFileGet(rest string, legacy bool) (name string, download bool) {
	newName, isNew := strings.CutSuffix(rest, "/content")
	oldName, isOld := strings.CutPrefix(rest, "content/")
	isNew, isOld = isNew && newName != "", isOld && oldName != ""
	switch {
	case isNew && (!isOld || !legacy):
		return newName, true
	case isOld:
		return oldName, true
	}
	return rest, false
}

// stat resolves name against the path parameter and describes the file.
func (s *Server) stat(r *http.Request, c *call, name string) (agentapi.FileInfo, string, error) {
	dir, err := requestDir(c)
	if err != nil {
		return agentapi.FileInfo{}, "", err
	}
	rel, err := filePath("name", dir, name)
	if err != nil {
		return agentapi.FileInfo{}, "", err
	}
	lease, err := session(r, c)
	if err != nil {
		return agentapi.FileInfo{}, "", err
	}
	defer lease.Release()
	ctx, cancel := s.agentContext(r, false)
	defer cancel()
	fi, err := lease.Agent.Stat(ctx, rel)
	if err != nil {
		return agentapi.FileInfo{}, "", agentError(ctx, "describing a file", err)
	}
	return fi, dir, nil
}

// fileInfoLegacy serves legacy GET files/{name}: the list shape with one element, as the
// BYOC image answers it (§3.1).
func (s *Server) fileInfoLegacy(w http.ResponseWriter, r *http.Request, c *call, name string) error {
	fi, _, err := s.stat(r, c, name)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, legacyList([]agentapi.FileInfo{fi}))
}

// fileInfo serves GET files/{name}.
func (s *Server) fileInfo(w http.ResponseWriter, r *http.Request, c *call, name string) error {
	fi, dir, err := s.stat(r, c, name)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, resource(fi, dir))
}

// download streams a file's bytes, with a Content-Type from its extension or, failing
// that, sniffed from its first bytes (§13.13).
//
// The bytes were written by code in the sandbox and are served from the API's origin, so
// they must never be treated as a page of that origin: nosniff stops a browser from
// reading, say, HTML into a file labelled text/plain, and the CSP sandbox directive makes
// an HTML or SVG file opened in a browser a unique opaque origin with scripts disabled.
// Both headers are set before anything else, so that they are on every response.
func (s *Server) download(w http.ResponseWriter, r *http.Request, c *call, name string) error {
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "sandbox")
	dir, err := requestDir(c)
	if err != nil {
		return err
	}
	rel, err := filePath("name", dir, name)
	if err != nil {
		return err
	}
	lease, err := session(r, c)
	if err != nil {
		return err
	}
	defer lease.Release()
	ctx, cancel := s.agentContext(r, true)
	defer cancel()
	body, size, err := lease.Agent.Download(ctx, rel)
	if err != nil {
		return agentError(ctx, "downloading a file", err)
	}
	defer body.Close()
	br := bufio.NewReaderSize(body, 512)
	ct := contentTypeOf(rel)
	if ct == "" {
		head, _ := br.Peek(512)
		ct = http.DetectContentType(head)
	}
	h.Set("Content-Type", ct)
	h.Set("Content-Length", strconv.FormatInt(size, 10))
	w.WriteHeader(http.StatusOK)
	if _, err := io.Copy(w, br); err != nil {
		// The status is sent; the client sees a body shorter than its Content-Length.
		return agentError(ctx, "sending a file", err)
	}
	return nil
}

// deleteFileLegacy serves legacy DELETE files/{name}: 200 with the BYOC image's message.
func (s *Server) deleteFileLegacy(w http.ResponseWriter, r *http.Request) error {
	if err := s.remove(r); err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]string{"message": "file deleted successfully"})
}

// deleteFile serves DELETE files/{name}: 204. A directory is removed only when empty,
// unless recursive=true.
func (s *Server) deleteFile(w http.ResponseWriter, r *http.Request) error {
	if err := s.remove(r); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) remove(r *http.Request) error {
	c := callOf(r)
	dir, err := requestDir(c)
	if err != nil {
		return err
	}
	rel, err := filePath("name", dir, r.PathValue("path"))
	if err != nil {
		return err
	}
	recursive, err := boolParam(c, "recursive")
	if err != nil {
		return err
	}
	lease, err := session(r, c)
	if err != nil {
		return err
	}
	defer lease.Release()
	ctx, cancel := s.agentContext(r, false)
	defer cancel()
	if err := lease.Agent.Remove(ctx, rel, recursive); err != nil {
		return agentError(ctx, "deleting a file", err)
	}
	return nil
}

// uploadLegacy serves POST files/upload: the list shape with the one uploaded file.
func (s *Server) uploadLegacy(w http.ResponseWriter, r *http.Request) error {
	fi, _, err := s.receive(w, r)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, legacyList([]agentapi.FileInfo{fi}))
}

// upload serves POST files: the uploaded file's resource.
func (s *Server) upload(w http.ResponseWriter, r *http.Request) error {
	fi, dir, err := s.receive(w, r)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, resource(fi, dir))
}

// receive streams an upload's file part into the session: to the part's filename,
// resolved against the path parameter (default /mnt/data). Directories in the name are
// created. The name is checked and the file part found before a session is allocated.
func (s *Server) receive(w http.ResponseWriter, r *http.Request) (agentapi.FileInfo, string, error) {
	c := callOf(r)
	dir, err := requestDir(c)
	if err != nil {
		return agentapi.FileInfo{}, "", err
	}
	limit := s.cfg.MaxUploadBytes
	up, err := openUpload(w, r, limit)
	if err != nil {
		return agentapi.FileInfo{}, "", err
	}
	rel, err := filePath("filename", dir, up.filename)
	if err != nil {
		return agentapi.FileInfo{}, "", err
	}
	lease, err := session(r, c)
	if err != nil {
		return agentapi.FileInfo{}, "", err
	}
	defer lease.Release()
	part := &limitedPart{r: up.part, max: limit}
	ctx, cancel := s.agentContext(r, true)
	defer cancel()
	fi, err := lease.Agent.Upload(ctx, rel, part, -1)
	switch {
	case err == nil && !part.exceeded:
		return fi, dir, nil
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return agentapi.FileInfo{}, "", agentError(ctx, "uploading a file", err)
	case part.exceeded:
		return agentapi.FileInfo{}, "", errTooLarge("uploaded file", limit, err)
	case up.body.err != nil:
		return agentapi.FileInfo{}, "", bodyError(up.body, limit, "The upload ended before its file part did.")
	case part.err != nil:
		return agentapi.FileInfo{}, "", errInvalid("file", "The multipart body is malformed: the file part does not end with a boundary.")
	case errkind.Is(err, errkind.LimitExceeded):
		return agentapi.FileInfo{}, "", errUploadRefused(err)
	case errors.Is(err, errFileTooLarge):
		return agentapi.FileInfo{}, "", errTooLarge("uploaded file", limit, err)
	}
	return agentapi.FileInfo{}, "", fmt.Errorf("uploading a file: %w", err)
}
