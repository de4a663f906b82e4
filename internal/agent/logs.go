package agent

import (
	"net/http"
	"strconv"
	"sync"

	"github.com/sessiond/sessiond/internal/errkind"
)

// handleLogs serves GET /v1/logs?tail=N: the last N bytes (0: all that is kept) of the
// console output of the main process, or, in a sandbox without one, of the kernel. With
// neither the body is empty.
func (a *Agent) handleLogs(w http.ResponseWriter, r *http.Request) error {
	tail := 0
	if v := r.URL.Query().Get("tail"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return errkind.New(errkind.Invalid, "tail=%q is not a byte count", v)
		}
		tail = n
	}
	var b []byte
	if console := a.console(); console != nil {
		b = console.tail(tail)
	}
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b) // the status is sent; a failed write means the client left
	return nil
}

// console returns the ring GET /v1/logs reads: the main command's, else the kernel's, else
// nil.
func (a *Agent) console() *ring {
	switch {
	case a.main != nil:
		return a.main.logs
	case a.kernel != nil:
		return a.kernel.logs
	}
	return nil
}

// ring keeps the last len(buf) bytes written to it. It is safe for concurrent use.
type ring struct {
	mu sync.Mutex
	// buf is allocated once, at its final size. Guarded by mu.
	buf []byte
	// next is where the next byte goes. Guarded by mu.
	next int
	// full is set once buf has wrapped, so all of it holds output. Guarded by mu.
	full bool
}

func newRing(size int) *ring { return &ring{buf: make([]byte, size)} }

// Write keeps p, overwriting the oldest bytes. It never fails.
func (r *ring) Write(p []byte) (int, error) {
	n := len(p)
	r.mu.Lock()
	defer r.mu.Unlock()
	size := len(r.buf)
	if n >= size {
		copy(r.buf, p[n-size:])
		r.next, r.full = 0, true
		return n, nil
	}
	c := copy(r.buf[r.next:], p)
	copy(r.buf, p[c:])
	if r.next+n >= size {
		r.full = true
	}
	r.next = (r.next + n) % size
	return n, nil
}

// tail returns a copy of the last n bytes kept, or of all of them if n is 0 or more than
// is kept.
func (r *ring) tail(n int) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	kept := r.next
	if r.full {
		kept = len(r.buf)
	}
	if n <= 0 || n > kept {
		n = kept
	}
	out := make([]byte, n)
	if start := r.next - n; start >= 0 {
		copy(out, r.buf[start:r.next])
	} else {
		c := copy(out, r.buf[len(r.buf)+start:])
		copy(out[c:], r.buf[:r.next])
	}
	return out
}
