package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
)

// handlerFunc is an HTTP handler that returns its error instead of writing it.
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

// handle adapts h: it counts the request in flight and writes h's error as an
// agentapi.ErrorBody with the status of its kind.
func (a *Agent) handle(h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !a.reqs.enter() {
			a.writeError(w, r, errkind.New(errkind.Unavailable, "the agent is shutting down"))
			return
		}
		defer a.reqs.leave()
		if err := h(w, r); err != nil {
			a.writeError(w, r, err)
		}
	})
}

// statusOf is the one mapping from error kinds to agent HTTP statuses.
func statusOf(k errkind.Kind) int {
	switch k {
	case errkind.NotFound:
		return http.StatusNotFound
	case errkind.Invalid:
		return http.StatusBadRequest
	case errkind.LimitExceeded:
		return http.StatusRequestEntityTooLarge
	case errkind.AlreadyExists:
		return http.StatusConflict
	case errkind.Unavailable:
		return http.StatusServiceUnavailable
	case errkind.Timeout:
		return http.StatusGatewayTimeout
	}
	return http.StatusInternalServerError
}

func (a *Agent) writeError(w http.ResponseWriter, r *http.Request, err error) {
	kind := errkind.Of(err)
	msg, ok := errkind.PublicMessage(err)
	if !ok {
		// The only client is the host, and the message describes the sandbox's own
		// state; the host decides what its users see.
		msg = err.Error()
	}
	if kind == errkind.Internal {
		a.log.Warn("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	body := agentapi.ErrorBody{Error: agentapi.Error{Kind: kind.String(), Message: msg}}
	if err := writeJSON(w, statusOf(kind), body); err != nil {
		a.log.Debug("writing error response", "err", err)
	}
}

// writeJSON writes v as the whole response. HTML escaping is off: it would turn every
// '<' of a command's output into six bytes.
func writeJSON(w http.ResponseWriter, status int, v any) error {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("encoding response: %w", err)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(b.Len()))
	w.WriteHeader(status)
	// A failed write means the client went away; the status is sent, nothing is left to
	// report.
	_, _ = w.Write(b.Bytes())
	return nil
}

// bodyError classifies a failure to read a request body.
func bodyError(action string, err error) error {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return &errkind.Error{Kind: errkind.LimitExceeded, Msg: fmt.Sprintf("%s: body above the limit of %d bytes", action, mbe.Limit), Public: true, Err: err}
	}
	return errkind.Wrap(errkind.Invalid, fmt.Errorf("%s: %w", action, err))
}

// requests counts request handlers in flight, so that Serve can wait for them after a
// forced close of the server (which does not wait), and refuses new ones after that.
type requests struct {
	mu sync.Mutex
	// n is the number of handlers running. Guarded by mu.
	n int
	// closed is set by closeAndWait. Guarded by mu.
	closed bool
	// idle is closed when closed is set and n is zero. Guarded by mu.
	idle chan struct{}
}

func (q *requests) enter() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return false
	}
	q.n++
	return true
}

func (q *requests) leave() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.n--
	if q.n == 0 && q.closed {
		close(q.idle)
	}
}

// closeAndWait refuses new requests and waits until none runs or ctx is done. It reports
// whether all handlers returned.
func (q *requests) closeAndWait(ctx context.Context) bool {
	q.mu.Lock()
	q.closed = true
	q.idle = make(chan struct{})
	if q.n == 0 {
		close(q.idle)
	}
	idle := q.idle
	q.mu.Unlock()
	select {
	case <-idle:
		return true
	case <-ctx.Done():
		return false
	}
}
