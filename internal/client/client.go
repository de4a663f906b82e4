// Package client is a Go client of a sessiond server: its management API (/v1/: pools,
// sessions, executions) and the new generation of its data plane (executions and files of
// api-version 2025-10-02-preview). The sessiond CLI is built on it, and tests use it to
// drive a real server.
//
// It speaks HTTP only and imports nothing of sessiond's but the wire shapes it decodes.
// A Client is safe for concurrent use.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// DataPlaneVersion is the api-version the client's data-plane calls use.
const DataPlaneVersion = "2025-10-02-preview"

// maxResponseBytes bounds a JSON response (a file download is streamed, not bounded).
const maxResponseBytes = 64 << 20

// Client calls one sessiond server.
type Client struct {
	// Endpoint is the server's base URL, e.g. http://127.0.0.1:8080.
	Endpoint string
	// Token, if set, is sent as "Authorization: Bearer"; else APIKey, if set, as
	// "api-key".
	Token, APIKey string
	// HTTP makes the requests; nil means http.DefaultClient. Executions may take
	// minutes: give it no overall timeout shorter than the pool's execution cap, and
	// bound calls with their contexts instead.
	HTTP *http.Client
}

// Error is an error answer of the server: the Azure error envelope.
type Error struct {
	StatusCode int
	Code       string
	Message    string
	// Target is the field or parameter at fault, if the server named one.
	Target  string
	TraceID string
}

func (e *Error) Error() string {
	s := e.Message
	if s == "" {
		s = http.StatusText(e.StatusCode)
	}
	if e.Code != "" {
		s += " (" + e.Code + ")"
	}
	return s
}

// IsNotFound reports whether err is a 404 answer.
func IsNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.StatusCode == http.StatusNotFound
}

// request is one call.
type request struct {
	method, path string
	query        url.Values
	body         io.Reader
	contentType  string
}

// do sends req and returns the response if its status is 2xx; otherwise the error
// envelope as an *Error. The caller closes the body.
func (c *Client) do(ctx context.Context, req request) (*http.Response, error) {
	u := strings.TrimRight(c.Endpoint, "/") + req.path
	if len(req.query) > 0 {
		u += "?" + req.query.Encode()
	}
	hr, err := http.NewRequestWithContext(ctx, req.method, u, req.body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", req.method, req.path, err)
	}
	if req.contentType != "" {
		hr.Header.Set("Content-Type", req.contentType)
	}
	hr.Header.Set("Accept", "application/json")
	switch {
	case c.Token != "":
		hr.Header.Set("Authorization", "Bearer "+c.Token)
	case c.APIKey != "":
		hr.Header.Set("api-key", c.APIKey)
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(hr)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("cannot reach sessiond at %s: %w", c.Endpoint, err)
	}
	if resp.StatusCode < 300 {
		return resp, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var env struct {
		Error struct{ Code, Message, Target, TraceID string }
	}
	e := &Error{StatusCode: resp.StatusCode}
	if json.Unmarshal(b, &env) == nil && env.Error.Message != "" {
		e.Code, e.Message, e.Target, e.TraceID = env.Error.Code, env.Error.Message, env.Error.Target, env.Error.TraceID
	} else {
		e.Message = strings.TrimSpace(string(b))
		if len(e.Message) > 500 {
			e.Message = e.Message[:500]
		}
	}
	return nil, e
}

// call sends req and decodes a JSON answer into out (nil: the body is discarded). It
// returns the status.
func (c *Client) call(ctx context.Context, req request, out any) (int, error) {
	resp, err := c.do(ctx, req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if out == nil {
		io.Copy(io.Discard, io.LimitReader(resp.Body, maxResponseBytes))
		return resp.StatusCode, nil
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	if err != nil {
		return 0, fmt.Errorf("%s %s: reading the answer: %w", req.method, req.path, err)
	}
	if len(b) > maxResponseBytes {
		return 0, fmt.Errorf("%s %s: the answer is larger than %d bytes", req.method, req.path, maxResponseBytes)
	}
	if err := json.Unmarshal(b, out); err != nil {
		return 0, fmt.Errorf("%s %s: decoding the answer: %w", req.method, req.path, err)
	}
	return resp.StatusCode, nil
}

func jsonBody(v any) (io.Reader, error) {
	if raw, ok := v.(json.RawMessage); ok {
		return bytes.NewReader(raw), nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return bytes.NewReader(b), nil
}

// Management API.

// Pool is a pool as the management API returns it: an ARM Microsoft.App/sessionPools
// resource with sessiond's own properties and a read-only status.
type Pool struct {
	ID         string         `json:"id"`
	Name       string         `json:"name"`
	Type       string         `json:"type"`
	Properties map[string]any `json:"properties"`
	Sessiond   map[string]any `json:"sessiond,omitempty"`
	Status     PoolStatus     `json:"status"`
}

// PoolStatus is a pool's read-only status.
type PoolStatus struct {
	Source    string `json:"source"`
	Runtime   string `json:"runtime,omitempty"`
	Ready     int    `json:"ready"`
	Pending   int    `json:"pending"`
	Allocated int    `json:"allocated"`
	Deleting  int    `json:"deleting"`
	Waiting   int    `json:"waiting"`
	Outdated  int    `json:"outdated"`
	Message   string `json:"message,omitempty"`
	CreatedAt string `json:"createdAt,omitempty"`
	UpdatedAt string `json:"updatedAt,omitempty"`
}

// ProvisioningState returns properties.provisioningState.
func (p Pool) ProvisioningState() string {
	s, _ := p.Properties["provisioningState"].(string)
	return s
}

// ManagementEndpoint returns properties.poolManagementEndpoint: what Azure clients are
// given.
func (p Pool) ManagementEndpoint() string {
	s, _ := p.Properties["poolManagementEndpoint"].(string)
	return s
}

func poolPath(name string) string { return "/v1/pools/" + url.PathEscape(name) }

// ListPools lists the pools the caller may read.
func (c *Client) ListPools(ctx context.Context) ([]Pool, error) {
	var out struct{ Value []Pool }
	_, err := c.call(ctx, request{method: "GET", path: "/v1/pools"}, &out)
	return out.Value, err
}

// GetPool returns one pool.
func (c *Client) GetPool(ctx context.Context, name string) (Pool, error) {
	var p Pool
	_, err := c.call(ctx, request{method: "GET", path: poolPath(name)}, &p)
	return p, err
}

// PutPool creates the pool from doc (a pool document, {"properties", "sessiond"}: a
// json.RawMessage or any value that encodes to one), or replaces its definition;
// created reports which.
func (c *Client) PutPool(ctx context.Context, name string, doc any) (p Pool, created bool, err error) {
	body, err := jsonBody(doc)
	if err != nil {
		return p, false, fmt.Errorf("encoding the pool document: %w", err)
	}
	status, err := c.call(ctx, request{method: "PUT", path: poolPath(name), body: body, contentType: "application/json"}, &p)
	return p, status == http.StatusCreated, err
}

// PatchPool applies a JSON merge patch (RFC 7396) to the pool's document.
func (c *Client) PatchPool(ctx context.Context, name string, patch any) (Pool, error) {
	var p Pool
	body, err := jsonBody(patch)
	if err != nil {
		return p, fmt.Errorf("encoding the patch: %w", err)
	}
	_, err = c.call(ctx, request{method: "PATCH", path: poolPath(name), body: body, contentType: "application/merge-patch+json"}, &p)
	return p, err
}

// DeletePool deletes the pool and its sessions.
func (c *Client) DeletePool(ctx context.Context, name string) error {
	_, err := c.call(ctx, request{method: "DELETE", path: poolPath(name)}, nil)
	return err
}

// Session is an allocated session as the management API returns it.
type Session struct {
	Identifier     string `json:"identifier"`
	SandboxID      string `json:"sandboxId"`
	State          string `json:"state"`
	CreatedAt      string `json:"createdAt"`
	LastAccessedAt string `json:"lastAccessedAt"`
	ExpiresAt      string `json:"expiresAt"`
}

func sessionPath(pool, identifier string) string {
	return poolPath(pool) + "/sessions/" + url.PathEscape(identifier)
}

// ListSessions lists a pool's sessions, by identifier.
func (c *Client) ListSessions(ctx context.Context, pool string) ([]Session, error) {
	var out struct{ Value []Session }
	_, err := c.call(ctx, request{method: "GET", path: poolPath(pool) + "/sessions"}, &out)
	return out.Value, err
}

// GetSession returns one session, without touching it.
func (c *Client) GetSession(ctx context.Context, pool, identifier string) (Session, error) {
	var s Session
	_, err := c.call(ctx, request{method: "GET", path: sessionPath(pool, identifier)}, &s)
	return s, err
}

// StopSession destroys a session.
func (c *Client) StopSession(ctx context.Context, pool, identifier string) error {
	_, err := c.call(ctx, request{method: "POST", path: sessionPath(pool, identifier) + "/stop"}, nil)
	return err
}

// GetExecution returns an execution of a session (the management API's route; it needs
// the SessionExecutor role).
func (c *Client) GetExecution(ctx context.Context, pool, identifier, id string) (Execution, error) {
	var e Execution
	_, err := c.call(ctx, request{method: "GET", path: sessionPath(pool, identifier) + "/executions/" + url.PathEscape(id)}, &e)
	return e, err
}

// Event is one of a pool's recent lifecycle events (GET /v1/pools/{pool}/events).
type Event struct {
	Seq        uint64    `json:"seq"`
	Time       time.Time `json:"time"`
	Pool       string    `json:"pool"`
	Category   string    `json:"category"` // Session or Pool
	Kind       string    `json:"kind"`
	Identifier string    `json:"identifier,omitempty"`
	SandboxID  string    `json:"sandboxId,omitempty"`
	Reason     string    `json:"reason,omitempty"`
	Message    string    `json:"message,omitempty"`
}

// EventQuery selects events; zero fields select everything kept.
type EventQuery struct {
	Identifier, Category string
	// Tail keeps the last Tail events; After keeps those after sequence number After.
	Tail  int
	After uint64
}

// Events returns a pool's recent events, oldest first.
func (c *Client) Events(ctx context.Context, pool string, q EventQuery) ([]Event, error) {
	v := url.Values{}
	if q.Identifier != "" {
		v.Set("identifier", q.Identifier)
	}
	if q.Category != "" {
		v.Set("category", q.Category)
	}
	if q.Tail > 0 {
		v.Set("tail", strconv.Itoa(q.Tail))
	}
	if q.After > 0 {
		v.Set("after", strconv.FormatUint(q.After, 10))
	}
	var out struct{ Value []Event }
	_, err := c.call(ctx, request{method: "GET", path: poolPath(pool) + "/events", query: v}, &out)
	return out.Value, err
}

// SessionLogs is a session's console output (a custom container's stdout and stderr).
type SessionLogs struct {
	Pool       string   `json:"pool"`
	Identifier string   `json:"identifier"`
	Lines      []string `json:"lines"`
	Truncated  bool     `json:"truncated"`
}

// SessionLogs returns the last tail lines (0: the server's default) of a session's console.
func (c *Client) SessionLogs(ctx context.Context, pool, identifier string, tail int) (SessionLogs, error) {
	v := url.Values{}
	if tail > 0 {
		v.Set("tail", strconv.Itoa(tail))
	}
	var out SessionLogs
	_, err := c.call(ctx, request{method: "GET", path: sessionPath(pool, identifier) + "/logs", query: v}, &out)
	return out, err
}

// Data plane.

// ExecuteRequest is the body of POST executions.
type ExecuteRequest struct {
	// Code is Python on code-interpreter pools, a bash command line on Shell pools.
	Code string `json:"code,omitempty"`
	// ExecutionType is "Synchronous" (the default) or "Asynchronous".
	ExecutionType string `json:"executionType,omitempty"`
	// TimeoutInSeconds bounds the execution (0: the server's default).
	TimeoutInSeconds int `json:"timeoutInSeconds,omitempty"`
}

// Execution is an execution resource.
type Execution struct {
	ID            string           `json:"id"`
	Identifier    string           `json:"identifier"`
	ExecutionType string           `json:"executionType,omitempty"`
	Status        string           `json:"status"`
	Result        *ExecutionResult `json:"result,omitempty"`
	Error         *struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	} `json:"error,omitempty"`
}

// ExecutionResult is a finished execution's output.
type ExecutionResult struct {
	Stdout string `json:"stdout"`
	Stderr string `json:"stderr"`
	// ExecutionResult is the value of the last expression, as JSON (code-interpreter
	// pools only).
	ExecutionResult             json.RawMessage `json:"executionResult,omitempty"`
	ExecutionTimeInMilliseconds int64           `json:"executionTimeInMilliseconds"`
}

// Succeeded reports whether the execution finished successfully: status Succeeded, or
// exit status 0 on a Shell pool.
func (e Execution) Succeeded() bool { return e.Status == "Succeeded" || e.Status == "0" }

// Running reports whether an asynchronous execution is still running.
func (e Execution) Running() bool { return e.Status == "Running" }

// dataPath is the data-plane path of op in pool.
func dataPath(pool, op string) string { return "/pools/" + url.PathEscape(pool) + "/" + op }

func dataQuery(identifier string) url.Values {
	return url.Values{"api-version": {DataPlaneVersion}, "identifier": {identifier}}
}

// Execute runs code in identifier's session of pool (allocating the session if it has
// none).
func (c *Client) Execute(ctx context.Context, pool, identifier string, req ExecuteRequest) (Execution, error) {
	var e Execution
	body, err := jsonBody(req)
	if err != nil {
		return e, err
	}
	_, err = c.call(ctx, request{method: "POST", path: dataPath(pool, "executions"), query: dataQuery(identifier),
		body: body, contentType: "application/json"}, &e)
	return e, err
}

// File is a file of a session (in /mnt/data).
type File struct {
	Name           string `json:"name"`
	Type           string `json:"type"`
	ContentType    string `json:"contentType"`
	SizeInBytes    int64  `json:"sizeInBytes"`
	LastModifiedAt string `json:"lastModifiedAt"`
	Directory      string `json:"directory,omitempty"`
}

// filePath escapes a file name segment by segment: names may contain '/'.
func filePath(name string) string {
	segs := strings.Split(name, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	return strings.Join(segs, "/")
}

// ListFiles lists the session's files.
func (c *Client) ListFiles(ctx context.Context, pool, identifier string) ([]File, error) {
	var out struct{ Value []File }
	_, err := c.call(ctx, request{method: "GET", path: dataPath(pool, "files"), query: dataQuery(identifier)}, &out)
	return out.Value, err
}

// UploadFile uploads r as the session's file name (relative to /mnt/data; directories
// are created). The body streams: r is not buffered.
func (c *Client) UploadFile(ctx context.Context, pool, identifier, name string, r io.Reader) (File, error) {
	var f File
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	done := make(chan struct{})
	go func() {
		defer close(done)
		part, err := mw.CreateFormFile("file", name)
		if err == nil {
			_, err = io.Copy(part, r)
		}
		if err == nil {
			err = mw.Close()
		}
		pw.CloseWithError(err)
	}()
	_, err := c.call(ctx, request{method: "POST", path: dataPath(pool, "files"), query: dataQuery(identifier),
		body: pr, contentType: mw.FormDataContentType()}, &f)
	pr.CloseWithError(errors.New("the upload ended")) // unblocks the writer if the request ended early
	<-done
	return f, err
}

// DownloadFile writes the session's file name to w and returns the bytes written.
func (c *Client) DownloadFile(ctx context.Context, pool, identifier, name string, w io.Writer) (int64, error) {
	resp, err := c.do(ctx, request{method: "GET", path: dataPath(pool, "files/"+filePath(name)+"/content"), query: dataQuery(identifier)})
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(w, resp.Body)
	if err != nil {
		return n, fmt.Errorf("downloading %s: %w", name, err)
	}
	return n, nil
}

// DeleteFile deletes the session's file name.
func (c *Client) DeleteFile(ctx context.Context, pool, identifier, name string) error {
	_, err := c.call(ctx, request{method: "DELETE", path: dataPath(pool, "files/"+filePath(name)), query: dataQuery(identifier)}, nil)
	return err
}
