package agent

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
)

// tcpServer serves each connection accepted on 127.0.0.1 with handle, in the test
// process: under the in-process agent, the sandbox's loopback is the host's.
func tcpServer(t *testing.T, handle func(c *net.TCPConn)) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				handle(c.(*net.TCPConn))
			})
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().(*net.TCPAddr).Port
}

// echo copies what it reads back until end of file, then closes.
func echo(c *net.TCPConn) { io.Copy(c, c) }

// closedPort returns a loopback port nothing listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return port
}

func dialTunnel(t *testing.T, ta *testAgent, port int) net.Conn {
	t.Helper()
	c, err := ta.client.DialTunnel(ctxFor(t, 10*time.Second), port)
	if err != nil {
		t.Fatalf("DialTunnel(%d): %v", port, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func closeWrite(t *testing.T, c net.Conn) {
	t.Helper()
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
}

// TestTunnelEcho: bytes reach the target and come back, and the client's half-close
// reaches the target as end of file (the echo server only closes after it).
func TestTunnelEcho(t *testing.T) {
	t.Parallel()
	ta := startAgent(t, nil)
	c := dialTunnel(t, ta, tcpServer(t, echo))
	payload := strings.Repeat("0123456789", 100_000)
	go func() {
		io.WriteString(c, payload)
		c.(interface{ CloseWrite() error }).CloseWrite()
	}()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading the echo: %v", err)
	}
	if string(b) != payload {
		t.Errorf("echo: %d bytes, want the %d sent", len(b), len(payload))
	}
}

// TestTunnelHalfCloseFromTarget: the target sends first and half-closes; the client
// reads end of file and can still send, and the target receives it.
func TestTunnelHalfCloseFromTarget(t *testing.T) {
	t.Parallel()
	ta := startAgent(t, nil)
	got := make(chan string, 1)
	port := tcpServer(t, func(c *net.TCPConn) {
		io.WriteString(c, "banner")
		c.CloseWrite()
		b, _ := io.ReadAll(c)
		got <- string(b)
	})
	c := dialTunnel(t, ta, port)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "banner" {
		t.Fatalf("read %q, %v; want the banner then end of file", b, err)
	}
	io.WriteString(c, "late reply")
	closeWrite(t, c)
	select {
	case s := <-got:
		if s != "late reply" {
			t.Errorf("target received %q, want %q", s, "late reply")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the target never saw end of file")
	}
}

func TestTunnelNoListener(t *testing.T) {
	t.Parallel()
	ta := startAgent(t, nil)
	port := closedPort(t)
	_, err := ta.client.DialTunnel(ctxFor(t, 10*time.Second), port)
	msg, _ := errkind.PublicMessage(err)
	if !errkind.Is(err, errkind.Unavailable) || !strings.Contains(msg, "nothing listens on port "+strconv.Itoa(port)) {
		t.Errorf("DialTunnel to a closed port: %v (kind %v, public %q); want unavailable, nothing listens", err, errkind.Of(err), msg)
	}
	// On the wire: 503 with the agent's error body.
	status, body := rawTunnelRequest(t, ta, "port="+strconv.Itoa(port), true)
	if status != http.StatusServiceUnavailable || body.Error.Kind != "unavailable" {
		t.Errorf("status %d body %+v, want 503 unavailable", status, body)
	}
}

// rawTunnelRequest sends a tunnel request by hand and returns the status and error body.
func rawTunnelRequest(t *testing.T, ta *testAgent, query string, upgrade bool) (int, agentapi.ErrorBody) {
	t.Helper()
	hc := unixHTTPClient(ta.cfg.Socket)
	defer hc.CloseIdleConnections()
	req, _ := http.NewRequestWithContext(ctxFor(t, 10*time.Second), http.MethodGet, "http://agent"+agentapi.PathTunnel+"?"+query, nil)
	if upgrade {
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "tcp")
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var eb agentapi.ErrorBody
	json.NewDecoder(resp.Body).Decode(&eb)
	return resp.StatusCode, eb
}

func TestTunnelBadRequests(t *testing.T) {
	t.Parallel()
	ta := startAgent(t, nil)
	port := strconv.Itoa(tcpServer(t, echo))
	for _, tc := range []struct {
		query   string
		upgrade bool
	}{
		{"", true},
		{"port=0", true},
		{"port=65536", true},
		{"port=-1", true},
		{"port=http", true},
		{"port=" + port, false},
	} {
		status, body := rawTunnelRequest(t, ta, tc.query, tc.upgrade)
		if status != http.StatusBadRequest || body.Error.Kind != "invalid" || body.Error.Message == "" {
			t.Errorf("query %q upgrade %v: status %d body %+v, want 400 invalid", tc.query, tc.upgrade, status, body)
		}
	}
	for _, p := range []int{0, -5, 70000} {
		if _, err := ta.client.DialTunnel(ctxFor(t, 5*time.Second), p); !errkind.Is(err, errkind.Invalid) {
			t.Errorf("DialTunnel(%d) = %v, want invalid", p, err)
		}
	}
}

// TestTunnelCap: the agent refuses tunnels above MaxTunnels, and a closed tunnel frees
// its place.
func TestTunnelCap(t *testing.T) {
	t.Parallel()
	ta := startAgent(t, func(c *Config) { c.MaxTunnels = 2 })
	port := tcpServer(t, echo)
	first := dialTunnel(t, ta, port)
	dialTunnel(t, ta, port)
	_, err := ta.client.DialTunnel(ctxFor(t, 5*time.Second), port)
	if !errkind.Is(err, errkind.LimitExceeded) {
		t.Fatalf("third tunnel with a cap of 2: %v, want limit exceeded", err)
	}
	if msg, _ := errkind.PublicMessage(err); !strings.Contains(msg, "maximum of 2 tunnels") {
		t.Errorf("message %q does not name the cap", msg)
	}
	first.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := ta.client.DialTunnel(ctxFor(t, 5*time.Second), port)
		if err == nil {
			c.Close()
			break
		}
		if !errkind.Is(err, errkind.LimitExceeded) || time.Now().After(deadline) {
			t.Fatalf("tunnel after closing one: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if New(Config{}).cfg.MaxTunnels != DefaultMaxTunnels {
		t.Errorf("default cap is not DefaultMaxTunnels")
	}
}

// fullListener returns the port of a loopback listener whose accept queue is full, so a
// further connect waits (Linux drops the SYN) instead of being refused.
func fullListener(t *testing.T) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	port := sa.(*unix.SockaddrInet4).Port
	for range 16 {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), 200*time.Millisecond)
		if err != nil {
			return port // this connect waited: the queue is full
		}
		t.Cleanup(func() { c.Close() })
	}
	t.Fatal("the accept queue never filled")
	return 0
}

func TestTunnelDialTimeout(t *testing.T) {
	t.Parallel()
	ta := startAgent(t, func(c *Config) { c.TunnelDialTimeout = 300 * time.Millisecond })
	port := fullListener(t)
	start := time.Now()
	_, err := ta.client.DialTunnel(ctxFor(t, 10*time.Second), port)
	if !errkind.Is(err, errkind.Timeout) {
		t.Fatalf("tunnel to a listener that never accepts: %v (kind %v), want timeout", err, errkind.Of(err))
	}
	if msg, _ := errkind.PublicMessage(err); !strings.Contains(msg, "took longer than 300ms") {
		t.Errorf("message %q does not say what timed out", msg)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the timeout took %v", d)
	}
	// The client's own deadline ends the handshake too.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	ta2 := startAgent(t, func(c *Config) { c.TunnelDialTimeout = time.Minute })
	if _, err := ta2.client.DialTunnel(ctx, port); !errkind.Is(err, errkind.Timeout) {
		t.Errorf("DialTunnel past its context's deadline: %v, want timeout", err)
	}
}

// TestTunnelClosedOnStop: open tunnels do not keep the agent from stopping, and their
// clients see the stream end.
func TestTunnelClosedOnStop(t *testing.T) {
	t.Parallel()
	ta := startAgent(t, nil)
	port := tcpServer(t, echo)
	c := dialTunnel(t, ta, port)
	io.WriteString(c, "x")
	buf := make([]byte, 1)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := ta.stop(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > ta.cfg.StopGrace {
		t.Errorf("stopping with an open tunnel took %v", d)
	}
	if _, err := c.Read(buf); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("read on a tunnel of a stopped agent: %v, want end of file", err)
	}
}
