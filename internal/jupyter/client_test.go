package jupyter_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/go-zeromq/zmq4/security/null"
	"github.com/google/go-cmp/cmp"

	"github.com/sessiond/sessiond/internal/jupyter"
	"github.com/sessiond/sessiond/internal/jupyter/jupytertest"
)

func startFake(t *testing.T, k *jupytertest.Kernel, opts jupyter.Options) *jupyter.Client {
	t.Helper()
	if err := k.Start(nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := jupyter.Dial(ctx, k.ConnectionInfo(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

// collector records the iopub messages of an execution.
type collector struct {
	mu   sync.Mutex
	msgs []*jupyter.Message
}

func (c *collector) add(m *jupyter.Message) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.msgs = append(c.msgs, m)
}

func (c *collector) types() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ts []string
	for _, m := range c.msgs {
		ts = append(ts, m.Header.MsgType)
	}
	return ts
}

func execute(t *testing.T, c *jupyter.Client, code string) (jupyter.ExecuteReply, *collector) {
	t.Helper()
	col := &collector{}
	ex, err := c.Execute(jupyter.ExecuteRequest{Code: code, StoreHistory: true}, col.add)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-ex.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("execution never finished")
	}
	r, err := ex.Reply()
	if err != nil {
		t.Fatal(err)
	}
	return r, col
}

func TestFakeKernel(t *testing.T) {
	t.Parallel()
	c := startFake(t, &jupytertest.Kernel{}, jupyter.Options{})
	for _, tc := range []struct {
		code       string
		wantStatus string
		wantTypes  []string
	}{
		{"print:hello\n", "ok", []string{"execute_input", "stream"}},
		{"1+1", "ok", []string{"execute_input", "execute_result"}},
		{"raise:ValueError", "error", []string{"execute_input", "error"}},
		{"", "ok", []string{"execute_input"}},
	} {
		r, col := execute(t, c, tc.code)
		if r.Status != tc.wantStatus {
			t.Errorf("%q: status %q, want %q", tc.code, r.Status, tc.wantStatus)
		}
		if diff := cmp.Diff(tc.wantTypes, col.types()); diff != "" {
			t.Errorf("%q: iopub messages (-want +got):\n%s", tc.code, diff)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ki, err := c.KernelInfo(ctx)
	if err != nil || ki.Implementation != "fake" {
		t.Errorf("KernelInfo = %+v, %v", ki, err)
	}
	if err := c.Heartbeat(ctx); err != nil {
		t.Errorf("Heartbeat: %v", err)
	}
	if err := c.Shutdown(ctx, false); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

// TestForgedMessagesDropped checks that iopub messages with a bad signature, or signed
// with another key, never reach the execution.
func TestForgedMessagesDropped(t *testing.T) {
	t.Parallel()
	k := &jupytertest.Kernel{}
	k.Execute = func(x *jupytertest.Exec) {
		forger := jupyter.NewCodec("not the key")
		bad, _ := forger.EncodeContent([][]byte{[]byte("t")}, jupyter.NewHeader("stream", "s"), x.Parent(), jupyter.Stream{Name: "stdout", Text: "forged"})
		k.PublishRaw(bad)
		good, _ := k.Codec().EncodeContent([][]byte{[]byte("t")}, jupyter.NewHeader("stream", "s"), x.Parent(), jupyter.Stream{Name: "stdout", Text: "x"})
		good[len(good)-1] = []byte(`{"name":"stdout","text":"tampered"}`)
		k.PublishRaw(good)
		k.PublishRaw([][]byte{[]byte("<IDS|MSG>"), []byte("zz")})
		x.Stream("stdout", "real")
	}
	c := startFake(t, k, jupyter.Options{})
	_, col := execute(t, c, "x")
	if diff := cmp.Diff([]string{"execute_input", "stream"}, col.types()); diff != "" {
		t.Errorf("iopub messages (-want +got):\n%s", diff)
	}
	if got := c.Dropped(); got != 3 {
		t.Errorf("Dropped() = %d, want 3", got)
	}
}

func TestTruncatedStream(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("é", 3000) // 6000 bytes of UTF-8
	k := &jupytertest.Kernel{Execute: func(x *jupytertest.Exec) { x.Stream("stderr", long) }}
	c := startFake(t, k, jupyter.Options{MaxContent: 1001})
	_, col := execute(t, c, "x")
	col.mu.Lock()
	defer col.mu.Unlock()
	m := col.msgs[len(col.msgs)-1]
	s, truncated, err := jupyter.ParseStream(m)
	if err != nil || !truncated || s.Name != "stderr" {
		t.Fatalf("ParseStream = %+v, %v, %v", s, truncated, err)
	}
	if !strings.HasPrefix(long, s.Text) || len(s.Text) < 900 || len(s.Text) > 1001 {
		t.Errorf("truncated text of %d bytes is not a prefix near the bound", len(s.Text))
	}
}

func TestKernelGoneMidExecution(t *testing.T) {
	t.Parallel()
	started := make(chan struct{})
	k := &jupytertest.Kernel{Execute: func(x *jupytertest.Exec) {
		close(started)
		<-x.Done()
	}}
	c := startFake(t, k, jupyter.Options{})
	ex, err := c.Execute(jupyter.ExecuteRequest{Code: "hang"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	<-started
	k.Close()
	select {
	case <-ex.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("execution not done after the kernel went away")
	}
	if _, err := ex.Reply(); err == nil {
		t.Error("Reply succeeded after the kernel went away")
	}
	<-c.Broken()
	if _, err := c.Execute(jupyter.ExecuteRequest{Code: "x"}, nil); err == nil {
		t.Error("Execute succeeded on a broken client")
	}
}

// hostileServer accepts connections on loopback and runs serve on each.
func hostileServer(t *testing.T, serve func(net.Conn)) jupyter.ConnectionInfo {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer nc.Close()
				serve(nc)
			})
		}
	})
	p := ln.Addr().(*net.TCPAddr).Port
	info, err := jupyter.NewConnectionInfo(jupyter.Ports{Shell: p, IOPub: p, Stdin: p, Control: p, HB: p})
	if err != nil {
		t.Fatal(err)
	}
	return info
}

func greeting() []byte {
	g := make([]byte, 64)
	g[0], g[9], g[10], g[11] = 0xff, 0x7f, 3, 0
	copy(g[12:], "NULL")
	return g
}

// TestHostileHandshake checks that a peer announcing a huge frame or sending malformed
// metadata during the handshake makes Dial fail, without a panic or a huge allocation.
func TestHostileHandshake(t *testing.T) {
	t.Parallel()
	for name, after := range map[string][]byte{
		"huge frame":     {0x06, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00},
		"short property": append([]byte{0x04, 0x08, 0x05}, "READY\x09S"...),
		"not ready":      append([]byte{0x04, 0x05, 0x04}, "PING"...),
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			info := hostileServer(t, func(nc net.Conn) {
				nc.Write(append(greeting(), after...))
				nc.SetReadDeadline(time.Now().Add(5 * time.Second))
				var b [256]byte
				for {
					if _, err := nc.Read(b[:]); err != nil {
						return
					}
				}
			})
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			if c, err := jupyter.Dial(ctx, info, jupyter.Options{}); err == nil {
				c.Close()
				t.Fatal("Dial succeeded against a hostile peer")
			}
		})
	}
}

// TestHostileFrames checks that a kernel announcing an enormous frame after a proper
// handshake breaks the client instead of exhausting memory.
func TestHostileFrames(t *testing.T) {
	t.Parallel()
	info := hostileServer(t, func(nc net.Conn) {
		zc, err := zmq4.Open(nc, null.Security(), zmq4.Router, nil, true, nil)
		if err != nil {
			return
		}
		_ = zc
		nc.Write([]byte{0x02, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
		nc.Write(make([]byte, 1<<20))
		time.Sleep(200 * time.Millisecond)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// A fake kernel serves control and iopub; the hostile server plays shell.
	k := &jupytertest.Kernel{}
	if err := k.Start(nil); err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	ki := k.ConnectionInfo()
	ki.ShellPort = info.ShellPort
	c, err := jupyter.Dial(ctx, ki, jupyter.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case <-c.Broken():
	case <-ctx.Done():
		t.Fatal("client not broken by a 2^63-byte frame")
	}
	if err := c.Err(); err == nil || errors.Is(err, jupyter.ErrClosed) {
		t.Errorf("Err() = %v, want a read error", err)
	}
}

func TestCodecRoundTrip(t *testing.T) {
	t.Parallel()
	c := jupyter.NewCodec("k")
	in := &jupyter.Message{
		Identities: [][]byte{[]byte("id")},
		Header:     jupyter.NewHeader("stream", "s"),
		Parent:     jupyter.NewHeader("execute_request", "s"),
		Content:    json.RawMessage(`{"name":"stdout","text":"x"}`),
	}
	frames, err := c.Encode(in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := c.Decode(frames)
	if err != nil {
		t.Fatal(err)
	}
	in.Metadata = json.RawMessage("{}")
	if diff := cmp.Diff(in, out); diff != "" {
		t.Errorf("round trip (-in +out):\n%s", diff)
	}
}

func TestCodecRejects(t *testing.T) {
	t.Parallel()
	c := jupyter.NewCodec("k")
	sign := func(h, p, md, ct string) [][]byte {
		return [][]byte{[]byte("<IDS|MSG>"), []byte(c.Sign([]byte(h), []byte(p), []byte(md), []byte(ct))), []byte(h), []byte(p), []byte(md), []byte(ct)}
	}
	h := `{"msg_id":"1","msg_type":"stream"}`
	for _, tc := range []struct {
		name   string
		frames [][]byte
	}{
		{"no delimiter", [][]byte{[]byte("a")}},
		{"too few frames", [][]byte{[]byte("<IDS|MSG>"), []byte("sig")}},
		{"bad signature hex", append([][]byte{[]byte("<IDS|MSG>"), []byte("zz")}, sign(h, "{}", "{}", "{}")[2:]...)},
		{"wrong signature", append([][]byte{[]byte("<IDS|MSG>"), []byte(strings.Repeat("0", 64))}, sign(h, "{}", "{}", "{}")[2:]...)},
		{"header not object", sign(`[]`, "{}", "{}", "{}")},
		{"no msg_type", sign(`{"msg_id":"1"}`, "{}", "{}", "{}")},
		{"parent not JSON", sign(h, "{", "{}", "{}")},
		{"metadata not object", sign(h, "{}", "1", "{}")},
		{"content not JSON", sign(h, "{}", "{}", `{"a":}`)},
		{"content not object", sign(h, "{}", "{}", `"s"`)},
		{"header field of wrong type", sign(`{"msg_id":1,"msg_type":"x"}`, "{}", "{}", "{}")},
		{"too many identities", append(make([][]byte, 17), sign(h, "{}", "{}", "{}")...)},
	} {
		if m, err := c.Decode(tc.frames); err == nil {
			t.Errorf("%s: Decode accepted %+v", tc.name, m)
		} else if !errors.Is(err, jupyter.ErrBadMessage) {
			t.Errorf("%s: error %v does not wrap ErrBadMessage", tc.name, err)
		}
	}
}

// TestFakeKernelIPC runs the client against the fake kernel on unix sockets.
func TestFakeKernelIPC(t *testing.T) {
	t.Parallel()
	info, err := jupyter.NewIPCConnectionInfo(filepath.Join(t.TempDir(), "k"))
	if err != nil {
		t.Fatal(err)
	}
	k := &jupytertest.Kernel{}
	if err := k.Start(&info); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := jupyter.Dial(ctx, k.ConnectionInfo(), jupyter.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if r, col := execute(t, c, "1+1"); r.Status != "ok" || len(col.types()) != 2 {
		t.Errorf("1+1: status %q, iopub %v", r.Status, col.types())
	}
	if err := c.Heartbeat(ctx); err != nil {
		t.Errorf("Heartbeat: %v", err)
	}
}

func TestConnectionValidate(t *testing.T) {
	good, err := jupyter.NewIPCConnectionInfo("/run/k/k-0123")
	if err != nil {
		t.Fatal(err)
	}
	if n, addr := good.Endpoint(good.ShellPort); n != "unix" || addr != "/run/k/k-0123-1" || good.URL(good.HBPort) != "ipc:///run/k/k-0123-5" {
		t.Errorf("endpoints: %s %s %s", n, addr, good.URL(good.HBPort))
	}
	tcp, err := jupyter.NewConnectionInfo(jupyter.Ports{Shell: 1, IOPub: 2, Stdin: 3, Control: 4, HB: 5})
	if err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(*jupyter.ConnectionInfo){
		"relative ipc prefix":  func(c *jupyter.ConnectionInfo) { c.IP = "k" },
		"unclean ipc prefix":   func(c *jupyter.ConnectionInfo) { c.IP = "/run/../etc/k" },
		"socket path too long": func(c *jupyter.ConnectionInfo) { c.IP = "/" + strings.Repeat("d", 110) },
		"unknown transport":    func(c *jupyter.ConnectionInfo) { c.Transport = "udp" },
		"ipc port 0":           func(c *jupyter.ConnectionInfo) { c.HBPort = 0 },
		"empty key":            func(c *jupyter.ConnectionInfo) { c.Key = "" },
	} {
		c := good
		mod(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: Validate accepted %+v", name, c)
		}
	}
	for name, mod := range map[string]func(*jupyter.ConnectionInfo){
		"non-loopback tcp": func(c *jupyter.ConnectionInfo) { c.IP = "10.0.0.1" },
		"tcp path as ip":   func(c *jupyter.ConnectionInfo) { c.IP = "/run/k" },
	} {
		c := tcp
		mod(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: Validate accepted %+v", name, c)
		}
	}
}
