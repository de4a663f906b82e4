package agentapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sessiond/sessiond/internal/errkind"
)

// Client talks to one sandbox's agent over its unix socket. It is safe for concurrent use.
// Every response is bounded in size and decoded strictly; an agent that misbehaves yields
// errors, never unbounded memory use.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient returns a client for the agent listening on the unix socket at path.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialSocket(ctx, socket)
		},
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       30 * time.Second,
		ResponseHeaderTimeout: 0, // exec responses arrive when the command ends; callers set deadlines
		DisableCompression:    true,
	}
	return &Client{socket: socket, hc: &http.Client{Transport: tr}}
}

// dialSocket connects to the unix socket at path without following a symlink there. The
// socket's directory belongs to the sandbox, whose root could otherwise replace the socket
// with a link to any other socket on the host (another sandbox's agent, a daemon's API).
func dialSocket(ctx context.Context, path string) (net.Conn, error) {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening agent socket: %w", err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("opening agent socket: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return nil, fmt.Errorf("agent socket %s is not a socket (mode %o)", path, st.Mode)
	}
	var d net.Dialer
	return d.DialContext(ctx, "unix", "/proc/self/fd/"+strconv.Itoa(fd))
}

// Socket returns the path of the socket the client dials.
func (c *Client) Socket() string { return c.socket }

// Close releases idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// Health asks the agent for its health. It fails unless the agent answers 200 with a body
// of the expected version.
func (c *Client) Health(ctx context.Context) (Health, error) {
	var h Health
	if err := c.doJSON(ctx, http.MethodGet, PathHealth, nil, nil, &h, MaxSmallResponse); err != nil {
		return Health{}, fmt.Errorf("agent health: %w", err)
	}
	if h.Version != Version {
		return Health{}, errkind.Wrap(errkind.Unavailable, fmt.Errorf("agent health: version %q, want %q", h.Version, Version))
	}
	return h, nil
}

// Exec runs a command in the sandbox and waits for it to end.
func (c *Client) Exec(ctx context.Context, req ExecRequest) (ExecResult, error) {
	var res ExecResult
	if err := c.doJSON(ctx, http.MethodPost, PathExec, nil, req, &res, execResponseLimit(req.OutputLimit)); err != nil {
		return ExecResult{}, fmt.Errorf("agent exec: %w", err)
	}
	return res, nil
}

// ListFiles lists dir (relative to DataDir; "" is DataDir itself).
func (c *Client) ListFiles(ctx context.Context, dir string, recursive bool) (FileList, error) {
	q := url.Values{"path": {dir}}
	if recursive {
		q.Set("recursive", "1")
	}
	var l FileList
	if err := c.doJSON(ctx, http.MethodGet, PathFiles, q, nil, &l, MaxSmallResponse); err != nil {
		return FileList{}, fmt.Errorf("agent list files: %w", err)
	}
	if len(l.Files) > MaxListEntries {
		return FileList{}, errkind.Wrap(errkind.Internal, fmt.Errorf("agent list files: %d entries, above the limit of %d", len(l.Files), MaxListEntries))
	}
	return l, nil
}

// Stat describes one file or directory.
func (c *Client) Stat(ctx context.Context, path string) (FileInfo, error) {
	var fi FileInfo
	q := url.Values{"path": {path}, "stat": {"1"}}
	if err := c.doJSON(ctx, http.MethodGet, PathFiles, q, nil, &fi, MaxSmallResponse); err != nil {
		return FileInfo{}, fmt.Errorf("agent stat file: %w", err)
	}
	return fi, nil
}

// Upload writes body to path, replacing any file there. Parent directories are created.
// At most MaxUpload bytes are accepted; size, when not -1, is sent as Content-Length.
func (c *Client) Upload(ctx context.Context, path string, body io.Reader, size int64) (FileInfo, error) {
	u := "http://agent" + PathFilesContent + "?" + url.Values{"path": {path}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, u, body)
	if err != nil {
		return FileInfo{}, fmt.Errorf("agent upload: %w", err)
	}
	req.ContentLength = size
	resp, err := c.hc.Do(req)
	if err != nil {
		return FileInfo{}, fmt.Errorf("agent upload: %w", transportError(ctx, err))
	}
	defer resp.Body.Close()
	var fi FileInfo
	if err := decodeResponse(resp, &fi, MaxSmallResponse); err != nil {
		return FileInfo{}, fmt.Errorf("agent upload: %w", err)
	}
	return fi, nil
}

// Download opens path for reading. The caller closes the returned body; Size is the
// length the agent announced (the body is cut at that length).
func (c *Client) Download(ctx context.Context, path string) (io.ReadCloser, int64, error) {
	u := "http://agent" + PathFilesContent + "?" + url.Values{"path": {path}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, 0, fmt.Errorf("agent download: %w", err)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, 0, fmt.Errorf("agent download: %w", transportError(ctx, err))
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, 0, fmt.Errorf("agent download: %w", decodeResponse(resp, nil, MaxSmallResponse))
	}
	if resp.ContentLength < 0 {
		resp.Body.Close()
		return nil, 0, errkind.Wrap(errkind.Internal, fmt.Errorf("agent download: response without Content-Length"))
	}
	return struct {
		io.Reader
		io.Closer
	}{io.LimitReader(resp.Body, resp.ContentLength), resp.Body}, resp.ContentLength, nil
}

// Remove deletes a file or an empty directory; with recursive, a directory tree.
func (c *Client) Remove(ctx context.Context, path string, recursive bool) error {
	q := url.Values{"path": {path}}
	if recursive {
		q.Set("recursive", "1")
	}
	if err := c.doJSON(ctx, http.MethodDelete, PathFiles, q, nil, nil, MaxSmallResponse); err != nil {
		return fmt.Errorf("agent remove file: %w", err)
	}
	return nil
}

// Mkdir creates a directory and its parents.
func (c *Client) Mkdir(ctx context.Context, path string) (FileInfo, error) {
	var fi FileInfo
	if err := c.doJSON(ctx, http.MethodPost, PathFilesMkdir, url.Values{"path": {path}}, nil, &fi, MaxSmallResponse); err != nil {
		return FileInfo{}, fmt.Errorf("agent mkdir: %w", err)
	}
	return fi, nil
}

// Logs returns up to tail bytes (0: all that is kept) of the main process's console output.
func (c *Client) Logs(ctx context.Context, tail int) ([]byte, error) {
	u := "http://agent" + PathLogs + "?" + url.Values{"tail": {strconv.Itoa(tail)}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("agent logs: %w", err)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("agent logs: %w", transportError(ctx, err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("agent logs: %w", decodeResponse(resp, nil, MaxSmallResponse))
	}
	b, err := readBounded(resp.Body, LogBufferSize)
	if err != nil {
		return nil, fmt.Errorf("agent logs: %w", err)
	}
	return b, nil
}

// Execute runs code on the sandbox's kernel. Unless req.Async, it waits for the
// execution to end (cancelling ctx interrupts it); a finished execution is returned
// with a nil error whatever its Status. Async requests return at once with StatusRunning.
func (c *Client) Execute(ctx context.Context, req ExecuteRequest) (Execution, error) {
	var ex Execution
	if err := c.doJSON(ctx, http.MethodPost, PathKernelExecutions, nil, req, &ex, executionResponseLimit(req.StreamLimit)); err != nil {
		return Execution{}, fmt.Errorf("agent execute: %w", err)
	}
	return ex, nil
}

// GetExecution returns the state of an execution: StatusRunning until it ends, then
// its result. The agent keeps the last MaxKeptExecutions.
func (c *Client) GetExecution(ctx context.Context, id string) (Execution, error) {
	if id == "" || len(id) > 128 || strings.ContainsAny(id, "/?#%") {
		return Execution{}, errkind.New(errkind.Invalid, "agent get execution: invalid id %q", id)
	}
	var ex Execution
	if err := c.doJSON(ctx, http.MethodGet, PathKernelExecutionPrefix+url.PathEscape(id), nil, nil, &ex, MaxExecutionResponse); err != nil {
		return Execution{}, fmt.Errorf("agent get execution: %w", err)
	}
	return ex, nil
}

// KernelInfo describes the sandbox's kernel.
func (c *Client) KernelInfo(ctx context.Context) (KernelInfo, error) {
	var ki KernelInfo
	if err := c.doJSON(ctx, http.MethodGet, PathKernel, nil, nil, &ki, MaxSmallResponse); err != nil {
		return KernelInfo{}, fmt.Errorf("agent kernel info: %w", err)
	}
	return ki, nil
}

// Interrupt interrupts the running execution, if any.
func (c *Client) Interrupt(ctx context.Context) error {
	if err := c.doJSON(ctx, http.MethodPost, PathKernelInterrupt, nil, nil, nil, MaxSmallResponse); err != nil {
		return fmt.Errorf("agent interrupt: %w", err)
	}
	return nil
}

// RestartKernel replaces the kernel with a fresh one (a running execution fails) and
// returns once the new kernel is ready.
func (c *Client) RestartKernel(ctx context.Context) (KernelInfo, error) {
	var ki KernelInfo
	if err := c.doJSON(ctx, http.MethodPost, PathKernelRestart, nil, nil, &ki, MaxSmallResponse); err != nil {
		return KernelInfo{}, fmt.Errorf("agent restart kernel: %w", err)
	}
	return ki, nil
}

func (c *Client) doJSON(ctx context.Context, method, path string, q url.Values, in, out any, limit int64) error {
	u := "http://agent" + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return errkind.Wrap(errkind.Invalid, fmt.Errorf("encoding request: %w", err))
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return transportError(ctx, err)
	}
	defer resp.Body.Close()
	return decodeResponse(resp, out, limit)
}

// transportError classifies a failure to reach the agent.
func transportError(ctx context.Context, err error) error {
	if ctx.Err() == context.DeadlineExceeded {
		return errkind.Wrap(errkind.Timeout, err)
	}
	return errkind.Wrap(errkind.Unavailable, err)
}

// decodeResponse reads at most limit bytes of resp and decodes it into out (if not nil) on
// success, or into an agent Error otherwise.
func decodeResponse(resp *http.Response, out any, limit int64) error {
	b, err := readBounded(resp.Body, limit)
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		var eb ErrorBody
		if json.Unmarshal(b, &eb) != nil || eb.Error.Kind == "" {
			return errkind.Wrap(errkind.Internal, fmt.Errorf("agent answered %s", resp.Status))
		}
		msg := eb.Error.Message
		if len(msg) > 1024 {
			msg = msg[:1024]
		}
		// The message comes from inside the sandbox: it may be shown to the sandbox's own
		// user (it describes their files), but is never trusted for anything else.
		return &errkind.Error{Kind: errkind.Parse(eb.Error.Kind), Msg: msg, Public: true}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return errkind.Wrap(errkind.Internal, fmt.Errorf("decoding agent response: %w", err))
	}
	return nil
}

func readBounded(r io.Reader, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, errkind.Wrap(errkind.Unavailable, fmt.Errorf("reading agent response: %w", err))
	}
	if int64(len(b)) > limit {
		return nil, errkind.Wrap(errkind.LimitExceeded, fmt.Errorf("agent response above %d bytes", limit))
	}
	return b, nil
}

// execResponseLimit bounds an exec response by what the request let the agent return: both
// streams at their cap, JSON-escaped (at most 6 bytes per byte), plus slack. A hostile agent
// can make the host read no more than that.
func execResponseLimit(outputLimit int) int64 {
	if outputLimit <= 0 || outputLimit > MaxOutputLimit {
		outputLimit = DefaultOutputLimit
	}
	return 2*6*int64(outputLimit) + 1<<20
}

// executionResponseLimit bounds a kernel execution response likewise: the streams at the
// request's cap plus the rich outputs (base64 text, escaped at most 2 bytes per byte).
func executionResponseLimit(streamLimit int) int64 {
	if streamLimit <= 0 || streamLimit > MaxStreamLimit {
		streamLimit = DefaultStreamLimit
	}
	return 2*6*int64(streamLimit) + 2*MaxDisplayBytes + 2<<20
}
