package agent

import (
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strings"
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
	if strings.IndexByte(req.Code, 0) >= 0 {
		// Python refuses such source, and ipykernel then never answers the request: the
		// execution would hang until its timeout.
		return nil, errkind.New(errkind.Invalid, "the code contains a NUL character, which Python source cannot")
	}
	timeout, limit, err := executeLimits.resolve(int64(req.TimeoutSeconds), req.StreamLimit)
	if err != nil {
		return nil, err
	}
	return &execution{
		req:     req,
		timeout: timeout,
		limit:   limit,
		done:    make(chan struct{}),
		cancelc: make(chan struct{}, 1),
	}, nil
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
