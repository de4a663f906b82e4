package agent

import (
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/jupyter"
)

// executionIDRE is the form of execution IDs (agentapi.ExecuteRequest.ID).
var executionIDRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)

// maxExecuteRequest caps the body of an execute request: the code, JSON-escaped, and
// the other fields.
const maxExecuteRequest = 6*agentapi.MaxCodeBytes + 64<<10

func (a *Agent) handleExecute(w http.ResponseWriter, r *http.Request) error {
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(execBodyTimeout))
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxExecuteRequest))
	if err != nil {
		return bodyError("reading execute request", err)
	}
	// As for exec: the body is read, and r.Context() must now follow the client for as
	// long as the execution runs.
	_ = rc.SetReadDeadline(time.Time{})
	var req agentapi.ExecuteRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return errkind.New(errkind.Invalid, "decoding execute request: %v", err)
	}
	e, err := newExecution(req)
	if err != nil {
		return err
	}
	s := a.kernel
	if err := s.submit(e); err != nil {
		return err
	}
	if req.Async {
		_ = rc.SetWriteDeadline(time.Now().Add(responseSlack))
		return writeJSON(w, http.StatusAccepted, s.snapshot(e))
	}
	select {
	case <-e.done:
	case <-r.Context().Done():
		// The client went away: stop the execution; nobody reads the answer.
		s.cancel(e)
		return errkind.Wrap(errkind.Unavailable, r.Context().Err())
	}
	s.mu.Lock()
	res, failed := e.res, e.err
	s.mu.Unlock()
	if failed != nil {
		return failed
	}
	_ = rc.SetWriteDeadline(time.Now().Add(responseSlack))
	return writeJSON(w, http.StatusOK, res)
}

// newExecution validates req and resolves its defaults.
func newExecution(req agentapi.ExecuteRequest) (*execution, error) {
	if req.ID == "" {
		req.ID = jupyter.NewID()
	}
	if !executionIDRE.MatchString(req.ID) {
		return nil, errkind.New(errkind.Invalid, "execution id %q is not 1-128 characters of [A-Za-z0-9._-]", clip(req.ID, 200))
	}
	if len(req.Code) > agentapi.MaxCodeBytes {
		return nil, errkind.New(errkind.LimitExceeded, "code of %d bytes is above the limit of %d", len(req.Code), agentapi.MaxCodeBytes)
	}
	e := &execution{
		timeout: agentapi.DefaultExecuteTimeout * time.Second,
		limit:   agentapi.DefaultStreamLimit,
		done:    make(chan struct{}),
		cancelc: make(chan struct{}, 1),
	}
	switch maxS := int(agentapi.MaxExecTimeout / time.Second); {
	case req.TimeoutSeconds < 0:
		return nil, errkind.New(errkind.Invalid, "negative timeoutSeconds %d", req.TimeoutSeconds)
	case req.TimeoutSeconds > maxS:
		e.timeout = agentapi.MaxExecTimeout
	case req.TimeoutSeconds > 0:
		e.timeout = time.Duration(req.TimeoutSeconds) * time.Second
	}
	switch {
	case req.StreamLimit < 0:
		return nil, errkind.New(errkind.Invalid, "negative streamLimit %d", req.StreamLimit)
	case req.StreamLimit > agentapi.MaxStreamLimit:
		return nil, errkind.New(errkind.Invalid, "streamLimit %d is above the maximum of %d", req.StreamLimit, agentapi.MaxStreamLimit)
	case req.StreamLimit > 0:
		e.limit = req.StreamLimit
	}
	e.req = req
	return e, nil
}

func (a *Agent) handleGetExecution(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if !executionIDRE.MatchString(id) {
		return errkind.New(errkind.Invalid, "execution id %q is not 1-128 characters of [A-Za-z0-9._-]", clip(id, 200))
	}
	e := a.kernel.lookup(id)
	if e == nil {
		return errkind.New(errkind.NotFound, "no execution %q", id)
	}
	return writeJSON(w, http.StatusOK, a.kernel.snapshot(e))
}

func (a *Agent) handleKernelInfo(w http.ResponseWriter, r *http.Request) error {
	return writeJSON(w, http.StatusOK, a.kernel.kernelInfo())
}

func (a *Agent) handleInterrupt(w http.ResponseWriter, r *http.Request) error {
	a.kernel.interruptRunning()
	return writeJSON(w, http.StatusOK, a.kernel.kernelInfo())
}

func (a *Agent) handleRestart(w http.ResponseWriter, r *http.Request) error {
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(kernelStartTimeout + responseSlack))
	if err := a.kernel.restart(r.Context()); err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, a.kernel.kernelInfo())
}

// handleKernelLogs serves GET /v1/logs from the kernel's console when the sandbox has
// no main command (as handleLogs does for the main command's).
func (a *Agent) handleKernelLogs(w http.ResponseWriter, r *http.Request) error {
	tail := 0
	if v := r.URL.Query().Get("tail"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return errkind.New(errkind.Invalid, "tail=%q is not a byte count", v)
		}
		tail = n
	}
	b := a.kernel.logs.tail(tail)
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
	return nil
}
