package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
)

// Tunnel limits; Config.MaxTunnels and Config.TunnelDialTimeout override them.
const (
	// DefaultMaxTunnels caps the tunnels open at once in one sandbox. Each holds two
	// descriptors in the agent (which shares the sandbox's RLIMIT_NOFILE, 4096 by default)
	// and two goroutines. The host's proxy keeps a few idle tunnels per sandbox for
	// keep-alive; the rest are in-flight requests and WebSockets.
	DefaultMaxTunnels = 512
	// DefaultTunnelDialTimeout bounds the connect to the sandbox's loopback. A listening
	// port answers at once; only a listener whose accept queue is full makes it wait.
	DefaultTunnelDialTimeout = 5 * time.Second
)

// tunnels counts the open tunnels against the cap.
type tunnels struct {
	mu sync.Mutex
	// n is the number of open tunnels. Guarded by mu.
	n int
}

func (s *tunnels) acquire(max int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n >= max {
		return false
	}
	s.n++
	return true
}

func (s *tunnels) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n--
}

// handleTunnel serves GET /v1/tunnel?port=N (agentapi.PathTunnel): it connects to port N
// on the sandbox's loopback, switches the connection to a raw byte stream and splices the
// two until both directions are closed or the agent stops.
func (a *Agent) handleTunnel(w http.ResponseWriter, r *http.Request) error {
	v := r.URL.Query().Get("port")
	port, err := strconv.Atoi(v)
	if err != nil || !agentapi.ValidPort(port) {
		return errkind.New(errkind.Invalid, "tunnel: port=%q is not a TCP port (1-65535)", v)
	}
	if !headerHasToken(r.Header, "Connection", "upgrade") || !strings.EqualFold(r.Header.Get("Upgrade"), agentapi.TunnelProtocol) {
		return errkind.New(errkind.Invalid, "tunnel: the request must ask for Connection: Upgrade, Upgrade: %s", agentapi.TunnelProtocol)
	}
	if !a.tunnels.acquire(a.cfg.MaxTunnels) {
		return errkind.New(errkind.LimitExceeded, "tunnel: the sandbox has its maximum of %d tunnels open", a.cfg.MaxTunnels)
	}
	defer a.tunnels.release()

	target, err := dialLoopback(r.Context(), port, a.cfg.TunnelDialTimeout)
	if err != nil {
		return err
	}
	rc, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		target.Close()
		return fmt.Errorf("tunnel: taking over the connection: %w", err)
	}
	conn, ok := rc.(halfCloser) // a *net.UnixConn: the agent serves a unix socket
	if !ok {
		rc.Close()
		target.Close()
		a.log.Error("tunnel: the connection cannot be half-closed", "type", fmt.Sprintf("%T", rc))
		return nil
	}
	// The server's deadlines were set for a request; a tunnel lasts as long as its ends.
	conn.SetDeadline(time.Time{})
	// Nothing may have been sent after the request, but what was goes to the target.
	var early []byte
	if n := brw.Reader.Buffered(); n > 0 {
		early, _ = brw.Reader.Peek(n)
	}
	const switched = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + agentapi.TunnelProtocol + "\r\n\r\n"
	if _, err := io.WriteString(conn, switched); err != nil {
		conn.Close()
		target.Close()
		return nil // the client left; there is no one to tell
	}
	if len(early) > 0 {
		if _, err := target.Write(early); err != nil {
			conn.Close()
			target.Close()
			return nil
		}
	}
	splice(r.Context(), conn, target)
	return nil
}

// headerHasToken reports whether the comma-separated header name holds token (any case).
func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for f := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(f), token) {
				return true
			}
		}
	}
	return false
}

// dialLoopback connects to port on 127.0.0.1, or on ::1 when nothing listens on the first.
func dialLoopback(ctx context.Context, port int, timeout time.Duration) (*net.TCPConn, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	var first error
	for _, host := range []string{"127.0.0.1", "::1"} {
		c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err == nil {
			return c.(*net.TCPConn), nil
		}
		if first == nil {
			first = err
		}
		if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.EADDRNOTAVAIL) && !errors.Is(err, syscall.ENETUNREACH) {
			break
		}
	}
	var ne net.Error
	if ctx.Err() != nil || errors.As(first, &ne) && ne.Timeout() {
		return nil, &errkind.Error{Kind: errkind.Timeout, Public: true, Err: first,
			Msg: fmt.Sprintf("tunnel: connecting to port %d in the sandbox took longer than %v", port, timeout)}
	}
	if errors.Is(first, syscall.ECONNREFUSED) {
		return nil, &errkind.Error{Kind: errkind.Unavailable, Public: true, Err: first,
			Msg: fmt.Sprintf("tunnel: nothing listens on port %d in the sandbox", port)}
	}
	return nil, &errkind.Error{Kind: errkind.Unavailable, Public: true, Err: first,
		Msg: fmt.Sprintf("tunnel: cannot connect to port %d in the sandbox: %v", port, first)}
}

type halfCloser interface {
	net.Conn
	CloseWrite() error
}

// splice copies between a and b both ways. End of file from one side half-closes the
// other, so each side can still answer after the other is done sending; a failed write or
// read ends both directions. It returns when both directions are done, or when ctx ends,
// and closes both connections.
func splice(ctx context.Context, a, b halfCloser) {
	var once sync.Once
	closeBoth := func() { once.Do(func() { a.Close(); b.Close() }) }
	stop := context.AfterFunc(ctx, closeBoth)
	defer stop()
	var wg sync.WaitGroup
	pipe := func(dst, src halfCloser) {
		if _, err := io.Copy(dst, src); err != nil {
			closeBoth()
			return
		}
		if dst.CloseWrite() != nil {
			closeBoth()
		}
	}
	wg.Go(func() { pipe(b, a) })
	wg.Go(func() { pipe(a, b) })
	wg.Wait()
	closeBoth()
}
