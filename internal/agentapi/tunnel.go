package agentapi

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sessiond/sessiond/internal/errkind"
)

// Tunnels: raw TCP connections from the host to a port on the sandbox's loopback, carried
// over the agent socket, so that ingress into a sandbox needs no IP networking on the host.
//
// The host sends
//
//	GET /v1/tunnel?port=N HTTP/1.1
//	Connection: Upgrade
//	Upgrade: tcp
//
// The agent connects to 127.0.0.1:N (then [::1]:N if that is refused) inside the sandbox.
// On success it answers 101 Switching Protocols with "Upgrade: tcp", and from the next byte
// on the connection carries the TCP stream both ways, half-closes included: a CloseWrite on
// either end reaches the other as end of file. Otherwise it answers with an ErrorBody:
// invalid (400) for a bad port or a request that is no upgrade, unavailable (503) when
// nothing listens on the port, timeout (504) when the connect does not complete within the
// agent's dial timeout, limit_exceeded when the sandbox has its maximum of tunnels open.
const (
	PathTunnel = "/v1/tunnel" // GET with Upgrade; ?port=
	// TunnelProtocol is the Upgrade token of a tunnel.
	TunnelProtocol = "tcp"
	// MaxTunnelHandshake caps what the Client reads of the agent's answer to a tunnel
	// request before the stream begins (status line, headers and an error body).
	MaxTunnelHandshake = 64 << 10
)

// ValidPort reports whether port is a TCP port a tunnel or probe may name.
func ValidPort(port int) bool { return port >= 1 && port <= 65535 }

// DialTunnel opens a tunnel to port on the sandbox's loopback. ctx bounds the whole
// handshake, including the agent's connect inside the sandbox; once DialTunnel returns, the
// connection no longer depends on ctx. The returned connection also has CloseWrite() error,
// which half-closes the stream towards the sandbox.
//
// Errors: Invalid for a port outside 1–65535; Unavailable when the agent cannot be reached
// or nothing listens on port; Timeout when ctx expires; LimitExceeded when the sandbox has
// its maximum of tunnels open. An error from the agent carries its message as public.
func (c *Client) DialTunnel(ctx context.Context, port int) (net.Conn, error) {
	if !ValidPort(port) {
		return nil, errkind.New(errkind.Invalid, "agent tunnel: port %d is outside 1-65535", port)
	}
	conn, err := dialSocket(ctx, c.socket)
	if err != nil {
		return nil, fmt.Errorf("agent tunnel to port %d: %w", port, transportError(ctx, err))
	}
	t, err := handshake(ctx, conn, port)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("agent tunnel to port %d: %w", port, err)
	}
	return t, nil
}

// handshake sends the tunnel request on conn and reads the agent's answer, within ctx.
func handshake(ctx context.Context, conn net.Conn, port int) (*tunnelConn, error) {
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	// A cancelled ctx interrupts the handshake by moving the deadline into the past.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	req := "GET " + PathTunnel + "?port=" + strconv.Itoa(port) + " HTTP/1.1\r\n" +
		"Host: agent\r\nConnection: Upgrade\r\nUpgrade: " + TunnelProtocol + "\r\n\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		return nil, handshakeError(ctx, err)
	}
	lr := &io.LimitedReader{R: conn, N: MaxTunnelHandshake}
	br := bufio.NewReader(lr)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		if lr.N <= 0 {
			return nil, errkind.Wrap(errkind.Internal, fmt.Errorf("agent answer above %d bytes", MaxTunnelHandshake))
		}
		return nil, handshakeError(ctx, err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer resp.Body.Close()
		if err := decodeResponse(resp, nil, MaxTunnelHandshake); err != nil {
			return nil, err
		}
		return nil, errkind.Wrap(errkind.Internal, fmt.Errorf("agent answered %s to a tunnel request", resp.Status))
	}
	if !strings.EqualFold(resp.Header.Get("Upgrade"), TunnelProtocol) {
		return nil, errkind.Wrap(errkind.Internal, fmt.Errorf("agent switched to protocol %q, want %q", resp.Header.Get("Upgrade"), TunnelProtocol))
	}
	if !stop() {
		// ctx ended as the answer arrived; the deadline may already be in the past.
		return nil, handshakeError(ctx, ctx.Err())
	}
	if err := conn.SetDeadline(time.Time{}); err != nil {
		return nil, errkind.Wrap(errkind.Unavailable, err)
	}
	// Bytes the sandbox sent right after the agent's answer may sit in br.
	pending, _ := br.Peek(br.Buffered())
	uc, _ := conn.(closeWriter)
	return &tunnelConn{Conn: conn, pending: append([]byte(nil), pending...), cw: uc}, nil
}

func handshakeError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		if ctx.Err() == context.DeadlineExceeded {
			return errkind.Wrap(errkind.Timeout, err)
		}
		return errkind.Wrap(errkind.Unavailable, fmt.Errorf("%w: %w", ctx.Err(), err))
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return errkind.Wrap(errkind.Timeout, err)
	}
	return errkind.Wrap(errkind.Unavailable, fmt.Errorf("reading the agent's answer: %w", err))
}

type closeWriter interface{ CloseWrite() error }

// tunnelConn is an established tunnel: the agent connection, read first from what the
// handshake buffered.
type tunnelConn struct {
	net.Conn
	pending []byte      // read before Conn; owned by the single reader
	cw      closeWriter // Conn's half-close, if it has one
}

func (t *tunnelConn) Read(p []byte) (int, error) {
	if len(t.pending) > 0 {
		n := copy(p, t.pending)
		t.pending = t.pending[n:]
		return n, nil
	}
	return t.Conn.Read(p)
}

// CloseWrite half-closes the tunnel: the sandbox side reads end of file, and can still
// answer.
func (t *tunnelConn) CloseWrite() error {
	if t.cw == nil {
		return errors.New("agent tunnel: half-close not supported")
	}
	return t.cw.CloseWrite()
}
