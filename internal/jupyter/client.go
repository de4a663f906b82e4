package jupyter

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zeromq/zmq4"
)

// ErrClosed is returned for requests on a closed client and reported by requests that
// were pending when it was closed.
var ErrClosed = errors.New("jupyter client closed")

// Options configure a Client.
type Options struct {
	// MaxContent bounds the content frame of one received message; 0 means
	// DefaultMaxContent.
	MaxContent int
	// Session names the client's session in message headers; empty means a random one.
	Session string
}

// Client is a connection to one kernel: its shell, control and iopub channels (and,
// once Heartbeat is called, its heartbeat). Replies and iopub messages are matched to
// requests by parent msg_id; anything else the kernel sends is discarded, as are
// messages that fail verification. It is safe for concurrent use.
//
// A Client owns one reader goroutine per channel, stopped by Close. When a channel
// fails (the kernel died or sent something that is not ZMTP) the client is broken:
// every pending and later request fails, and Broken is closed; make a new Client.
type Client struct {
	info       ConnectionInfo
	codec      *Codec
	session    string
	maxContent int

	shell, control, iopub *conn
	wg                    sync.WaitGroup
	dropped               atomic.Int64

	mu sync.Mutex
	// calls are the requests waiting for their reply (and idle status). Guarded by mu.
	calls map[string]*call
	// err is why the client is broken; set once. Guarded by mu.
	err    error
	broken chan struct{} // closed when err is set

	hbMu sync.Mutex
	// hb is the heartbeat connection, dialled on first use. Guarded by hbMu.
	hb *conn
}

// call is one request in flight.
type call struct {
	msgID    string
	wantIdle bool           // complete only once iopub reports idle for it
	onIOPub  func(*Message) // receives the request's other iopub messages; may be nil
	done     chan struct{}  // closed on completion
	// Set before done is closed; guarded by Client.mu until then.
	reply *Message
	idle  bool
	err   error
}

// Dial connects to the kernel described by info, retrying refused connections (the
// kernel may still be starting) until ctx is done. The kernel may not publish to the
// new iopub subscription at once; call WaitReady before relying on iopub.
func Dial(ctx context.Context, info ConnectionInfo, opts Options) (*Client, error) {
	if err := info.Validate(); err != nil {
		return nil, err
	}
	c := &Client{
		info:       info,
		codec:      NewCodec(info.Key),
		session:    opts.Session,
		maxContent: opts.MaxContent,
		calls:      make(map[string]*call),
		broken:     make(chan struct{}),
	}
	if c.session == "" {
		c.session = NewID()
	}
	if c.maxContent <= 0 {
		c.maxContent = DefaultMaxContent
	}
	var err error
	if c.shell, err = dialRetry(ctx, info, info.ShellPort, zmq4.Dealer); err != nil {
		return nil, fmt.Errorf("connecting to the kernel's shell: %w", err)
	}
	if c.control, err = dialRetry(ctx, info, info.ControlPort, zmq4.Dealer); err != nil {
		c.shell.close()
		return nil, fmt.Errorf("connecting to the kernel's control: %w", err)
	}
	if c.iopub, err = dialRetry(ctx, info, info.IOPubPort, zmq4.Sub); err != nil {
		c.shell.close()
		c.control.close()
		return nil, fmt.Errorf("connecting to the kernel's iopub: %w", err)
	}
	// Subscribe to every topic (ZMTP 3.0 subscription message).
	if err := c.iopub.send([][]byte{{1}}); err != nil {
		c.closeConns()
		return nil, fmt.Errorf("subscribing to the kernel's iopub: %w", err)
	}
	c.wg.Add(3)
	go c.readLoop(c.shell, "shell")
	go c.readLoop(c.control, "control")
	go c.readLoop(c.iopub, "iopub")
	return c, nil
}

// dialRetry dials the kernel's socket at port until it succeeds or ctx is done.
func dialRetry(ctx context.Context, info ConnectionInfo, port int, typ zmq4.SocketType) (*conn, error) {
	network, addr := info.Endpoint(port)
	delay := 5 * time.Millisecond
	for {
		c, err := dialConn(ctx, network, addr, typ)
		if err == nil {
			return c, nil
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		case <-t.C:
		}
		delay = min(2*delay, 100*time.Millisecond)
	}
}

func (c *Client) closeConns() {
	c.shell.close()
	c.control.close()
	c.iopub.close()
	c.hbMu.Lock()
	if c.hb != nil {
		c.hb.close()
		c.hb = nil
	}
	c.hbMu.Unlock()
}

// Close disconnects from the kernel, fails pending requests with ErrClosed and waits
// for the client's goroutines to stop. It does not stop the kernel. It is idempotent.
func (c *Client) Close() error {
	c.fail(ErrClosed)
	c.closeConns()
	c.wg.Wait()
	return nil
}

// Broken is closed once the client can no longer be used (a channel failed, or Close).
func (c *Client) Broken() <-chan struct{} { return c.broken }

// Err returns why the client is broken, or nil.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Dropped returns how many received messages were discarded because they failed
// verification or were malformed.
func (c *Client) Dropped() int64 { return c.dropped.Load() }

// fail breaks the client with err (the first error wins) and completes every pending
// request with it.
func (c *Client) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return
	}
	c.err = err
	close(c.broken)
	for id, cl := range c.calls {
		cl.err = err
		close(cl.done)
		delete(c.calls, id)
	}
}

func (c *Client) readLoop(cn *conn, channel string) {
	defer c.wg.Done()
	for {
		w, err := cn.readMessage(c.codec.mac, c.maxContent)
		if err != nil {
			c.fail(fmt.Errorf("reading the kernel's %s channel: %w", channel, err))
			return
		}
		m, err := w.decode()
		if err != nil {
			c.dropped.Add(1)
			continue
		}
		if channel == "iopub" {
			c.dispatchIOPub(m)
		} else {
			c.dispatchReply(m)
		}
	}
}

// dispatchReply hands a shell or control reply to its request.
func (c *Client) dispatchReply(m *Message) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cl, ok := c.calls[m.Parent.MsgID]
	if !ok || cl.reply != nil {
		return
	}
	cl.reply = m
	if !cl.wantIdle || cl.idle {
		c.completeLocked(cl)
	}
}

// dispatchIOPub notes idle statuses and passes other messages of a request to its
// onIOPub, in the order they arrived.
func (c *Client) dispatchIOPub(m *Message) {
	c.mu.Lock()
	cl, ok := c.calls[m.Parent.MsgID]
	if !ok {
		c.mu.Unlock()
		return
	}
	if m.Header.MsgType == "status" {
		var st Status
		if m.Decode(&st) == nil && st.ExecutionState == "idle" {
			cl.idle = true
			if cl.reply != nil {
				c.completeLocked(cl)
			}
		}
		c.mu.Unlock()
		return
	}
	f := cl.onIOPub
	c.mu.Unlock()
	if f != nil {
		f(m)
	}
}

// completeLocked finishes cl. Preconditions: c.mu is held and cl is in c.calls.
func (c *Client) completeLocked(cl *call) {
	delete(c.calls, cl.msgID)
	close(cl.done)
}

// forget drops cl if it is still pending.
func (c *Client) forget(cl *call) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.calls[cl.msgID] == cl {
		delete(c.calls, cl.msgID)
	}
}

// request sends a request of msgType on cn and registers it.
func (c *Client) request(cn *conn, msgType string, content any, wantIdle bool, onIOPub func(*Message)) (*call, error) {
	h := NewHeader(msgType, c.session)
	frames, err := c.codec.EncodeContent(nil, h, Header{}, content)
	if err != nil {
		return nil, err
	}
	cl := &call{msgID: h.MsgID, wantIdle: wantIdle, onIOPub: onIOPub, done: make(chan struct{})}
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, fmt.Errorf("sending %s: %w", msgType, err)
	}
	c.calls[cl.msgID] = cl
	c.mu.Unlock()
	if err := cn.send(frames); err != nil {
		c.forget(cl)
		err = fmt.Errorf("sending %s: %w", msgType, err)
		c.fail(err)
		return nil, err
	}
	return cl, nil
}

// wait waits for cl's completion or ctx.
func (c *Client) wait(ctx context.Context, cl *call) (*Message, error) {
	select {
	case <-cl.done:
	case <-ctx.Done():
		c.forget(cl)
		return nil, ctx.Err()
	}
	if cl.err != nil {
		return nil, cl.err
	}
	return cl.reply, nil
}

// KernelInfo asks the kernel for its kernel_info_reply.
func (c *Client) KernelInfo(ctx context.Context) (KernelInfo, error) {
	return c.kernelInfo(ctx, false)
}

func (c *Client) kernelInfo(ctx context.Context, wantIdle bool) (KernelInfo, error) {
	cl, err := c.request(c.shell, "kernel_info_request", struct{}{}, wantIdle, nil)
	if err != nil {
		return KernelInfo{}, err
	}
	m, err := c.wait(ctx, cl)
	if err != nil {
		return KernelInfo{}, fmt.Errorf("kernel info: %w", err)
	}
	var ki KernelInfo
	if err := m.Decode(&ki); err != nil {
		return KernelInfo{}, fmt.Errorf("kernel info: %w", err)
	}
	return ki, nil
}

// WaitReady asks for kernel info until the reply and the kernel's idle status on iopub
// both arrive, which proves that the kernel runs and publishes to this client. It
// returns the kernel info, or ctx's error.
func (c *Client) WaitReady(ctx context.Context) (KernelInfo, error) {
	attempt := 500 * time.Millisecond
	for {
		actx, cancel := context.WithTimeout(ctx, attempt)
		ki, err := c.kernelInfo(actx, true)
		cancel()
		if err == nil {
			return ki, nil
		}
		if ctx.Err() != nil {
			return KernelInfo{}, fmt.Errorf("waiting for the kernel: %w", ctx.Err())
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			return KernelInfo{}, fmt.Errorf("waiting for the kernel: %w", err)
		}
	}
}

// Shutdown asks the kernel to shut down (or to restart, if it supports that) over the
// control channel and waits for its reply. The kernel process may take a moment more to
// exit.
func (c *Client) Shutdown(ctx context.Context, restart bool) error {
	cl, err := c.request(c.control, "shutdown_request", map[string]bool{"restart": restart}, false, nil)
	if err != nil {
		return err
	}
	if _, err := c.wait(ctx, cl); err != nil {
		return fmt.Errorf("kernel shutdown: %w", err)
	}
	return nil
}

// Heartbeat pings the kernel's heartbeat channel and waits for the echo.
func (c *Client) Heartbeat(ctx context.Context) error {
	c.hbMu.Lock()
	defer c.hbMu.Unlock()
	if err := c.Err(); err != nil {
		return fmt.Errorf("heartbeat: %w", err)
	}
	if c.hb == nil {
		network, addr := c.info.Endpoint(c.info.HBPort)
		hb, err := dialConn(ctx, network, addr, zmq4.Req)
		if err != nil {
			return fmt.Errorf("heartbeat: connecting: %w", err)
		}
		c.hb = hb
	}
	payload := []byte(NewID())
	err := func() error {
		if d, ok := ctx.Deadline(); ok {
			_ = c.hb.nc.SetDeadline(d)
		}
		if err := c.hb.send([][]byte{{}, payload}); err != nil {
			return err
		}
		got, err := c.hb.readRaw(4, 256)
		if err != nil {
			return err
		}
		if len(got) == 0 || string(got[len(got)-1]) != string(payload) {
			return errors.New("the kernel echoed something else")
		}
		return c.hb.nc.SetDeadline(time.Time{})
	}()
	if err != nil {
		c.hb.close()
		c.hb = nil
		return fmt.Errorf("heartbeat: %w", err)
	}
	return nil
}

// Execution is an execute_request in flight.
type Execution struct {
	c  *Client
	cl *call
}

// Execute sends an execute_request. out, if not nil, receives every iopub message of
// the request other than its status (execute_input, stream, display_data,
// execute_result, error, ...) in order, from the client's iopub goroutine: it must not
// block, and it may still be called for a moment after Release.
//
// The execution is done once its execute_reply and its idle status have both arrived
// (all its output precedes idle on iopub), or when the client breaks.
func (c *Client) Execute(req ExecuteRequest, out func(*Message)) (*Execution, error) {
	if req.UserExpressions == nil {
		req.UserExpressions = map[string]string{}
	}
	cl, err := c.request(c.shell, "execute_request", req, true, out)
	if err != nil {
		return nil, err
	}
	return &Execution{c: c, cl: cl}, nil
}

// MsgID is the msg_id of the execute_request.
func (e *Execution) MsgID() string { return e.cl.msgID }

// Done is closed when the execution finished or the client broke.
func (e *Execution) Done() <-chan struct{} { return e.cl.done }

// Reply returns the execute_reply. Call it after Done is closed.
func (e *Execution) Reply() (ExecuteReply, error) {
	select {
	case <-e.cl.done:
	default:
		return ExecuteReply{}, errors.New("execute reply: not done")
	}
	if e.cl.err != nil {
		return ExecuteReply{}, fmt.Errorf("execute reply: %w", e.cl.err)
	}
	var r ExecuteReply
	if err := e.cl.reply.Decode(&r); err != nil {
		return ExecuteReply{}, fmt.Errorf("execute reply: %w", err)
	}
	return r, nil
}

// Release stops matching the kernel's messages to the execution, when the caller gives
// up on it before it is done.
func (e *Execution) Release() { e.c.forget(e.cl) }

// Replied reports whether the execute_reply has arrived; its idle status may still be on
// the way. Shell replies arrive in request order: once the reply of a later request has
// been handed over, Replied tells for good whether the kernel answered this one.
func (e *Execution) Replied() bool {
	e.c.mu.Lock()
	defer e.c.mu.Unlock()
	return e.cl.reply != nil
}
