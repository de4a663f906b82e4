package probe

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
)

// maxResponseHead caps what an httpGet attempt reads of the answer's status line and
// headers; the body is not read.
const maxResponseHead = 64 << 10

// userAgent is the User-Agent of httpGet probes unless the probe sets its own.
const userAgent = "sessiond-probe/1"

// Check makes one attempt of p (with defaults applied) against the sandbox behind c,
// bounded by p.TimeoutSeconds and ctx. It returns nil on success. A failure is an
// Unavailable or Timeout error whose public message says what the container did (the
// status it answered, nothing listening on the port, no answer in time).
func Check(ctx context.Context, c *agentapi.Client, p Probe) error {
	p = p.WithDefaults()
	timeout := seconds(p.TimeoutSeconds)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := c.DialTunnel(ctx, p.Port())
	if err != nil {
		return err
	}
	defer conn.Close()
	if p.HTTPGet == nil {
		return nil // the connection was accepted
	}
	return httpGet(ctx, conn, p.HTTPGet, timeout)
}

// httpGet sends one GET over conn and checks the status of the answer.
func httpGet(ctx context.Context, conn net.Conn, h *HTTPGet, timeout time.Duration) error {
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	failed := func(what string, err error) error {
		var ne net.Error
		if ctx.Err() != nil || errors.As(err, &ne) && ne.Timeout() {
			return &errkind.Error{Kind: errkind.Timeout, Public: true, Err: err,
				Msg: fmt.Sprintf("GET %s on port %d: no answer within %v", h.Path, h.Port, timeout)}
		}
		return &errkind.Error{Kind: errkind.Unavailable, Public: true, Err: err,
			Msg: fmt.Sprintf("GET %s on port %d: %s", h.Path, h.Port, what)}
	}
	host := h.Host
	if host == "" {
		host = net.JoinHostPort("127.0.0.1", strconv.Itoa(h.Port))
	}
	if h.Scheme == SchemeHTTPS {
		tc := tls.Client(conn, &tls.Config{
			// As in Kubernetes: the probe asks whether the container answers, not who
			// it is; its certificate is usually self-signed.
			InsecureSkipVerify: true,
			ServerName:         hostOnly(host),
		})
		if err := tc.HandshakeContext(ctx); err != nil {
			return failed("TLS handshake failed", err)
		}
		conn = tc
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+host+h.Path, nil)
	if err != nil {
		return errkind.Wrap(errkind.Invalid, fmt.Errorf("building the probe request: %w", err))
	}
	req.Header.Set("User-Agent", userAgent)
	req.Header.Set("Accept", "*/*")
	for _, hd := range h.HTTPHeaders {
		if http.CanonicalHeaderKey(hd.Name) == "Host" {
			req.Host = hd.Value
			continue
		}
		req.Header.Add(hd.Name, hd.Value)
	}
	req.Close = true
	if err := req.Write(conn); err != nil {
		return failed("the connection failed", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(io.LimitReader(conn, maxResponseHead)), req)
	if err != nil {
		return failed("no valid HTTP answer", err)
	}
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 399 {
		// The code only: the reason phrase is the container's to choose.
		return errkind.New(errkind.Unavailable, "GET %s on port %d answered %d", h.Path, h.Port, resp.StatusCode)
	}
	return nil
}

// hostOnly strips the port of a Host header value.
func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return hostport
}
