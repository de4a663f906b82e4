// Package jupytertest provides Kernel, a hand-written fake Jupyter kernel that speaks the
// messaging protocol over real ZeroMQ sockets (github.com/go-zeromq/zmq4) on loopback, for
// fast tests of code that drives kernels. Tests script its behaviour with function
// fields. It complements tests against a real ipykernel; it never replaces them.
//
// Only tests import it.
package jupytertest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"strings"
	"sync"

	"github.com/go-zeromq/zmq4"

	"github.com/sessiond/sessiond/internal/jupyter"
)

// Kernel is a fake kernel. Set its fields, then call Start once and Close when done.
type Kernel struct {
	// Execute runs one execute_request; nil means DefaultExecute. It runs on the shell
	// goroutine, so the kernel handles one request at a time, as ipykernel does.
	Execute func(x *Exec)
	// Info is the kernel_info_reply content; nil means a python-like default.
	Info *jupyter.KernelInfo

	codec *jupyter.Codec
	info  jupyter.ConnectionInfo
	ctx   context.Context
	stop  context.CancelFunc
	wg    sync.WaitGroup

	shell, control, iopub, hb zmq4.Socket

	pubMu sync.Mutex // serialises iopub sends

	mu sync.Mutex
	// count is the execution count. Guarded by mu.
	count int
	// shutdown is closed by a shutdown_request. Guarded by mu.
	shutdown chan struct{}
	// interrupted is signalled by an interrupt_request. Guarded by mu.
	interrupted chan struct{}
}

// Start listens on loopback. With info nil it picks free ports and a random key;
// otherwise it binds info's ports or unix sockets (as a kernel given a connection file
// does).
func (k *Kernel) Start(info *jupyter.ConnectionInfo) error {
	if info == nil {
		ci, err := jupyter.NewConnectionInfo(jupyter.Ports{})
		if err != nil {
			return err
		}
		info = &ci
	}
	k.info = *info
	k.codec = jupyter.NewCodec(info.Key)
	k.ctx, k.stop = context.WithCancel(context.Background())
	k.shutdown = make(chan struct{})
	k.interrupted = make(chan struct{}, 1)
	quiet := zmq4.WithLogger(log.New(io.Discard, "", 0))
	k.shell = zmq4.NewRouter(k.ctx, quiet)
	k.control = zmq4.NewRouter(k.ctx, quiet)
	k.iopub = zmq4.NewPub(k.ctx, quiet)
	k.hb = zmq4.NewRep(k.ctx, quiet)
	for _, s := range []struct {
		sock zmq4.Socket
		port *int
	}{{k.shell, &k.info.ShellPort}, {k.control, &k.info.ControlPort}, {k.iopub, &k.info.IOPubPort}, {k.hb, &k.info.HBPort}} {
		url := fmt.Sprintf("tcp://127.0.0.1:%d", *s.port)
		if k.info.Transport == "ipc" {
			url = k.info.URL(*s.port)
		}
		if err := s.sock.Listen(url); err != nil {
			k.Close()
			return fmt.Errorf("fake kernel: %w", err)
		}
		if a, ok := s.sock.Addr().(*net.TCPAddr); ok {
			*s.port = a.Port
		}
	}
	if k.info.StdinPort == 0 {
		k.info.StdinPort = k.info.HBPort // unused
	}
	k.wg.Add(3)
	go k.serve(k.shell)
	go k.serve(k.control)
	go k.echo()
	return nil
}

// ConnectionInfo returns where the kernel listens.
func (k *Kernel) ConnectionInfo() jupyter.ConnectionInfo { return k.info }

// ShutdownRequested is closed once a shutdown_request arrived.
func (k *Kernel) ShutdownRequested() <-chan struct{} { return k.shutdown }

// Close stops the kernel.
func (k *Kernel) Close() {
	k.stop()
	for _, s := range []zmq4.Socket{k.shell, k.control, k.iopub, k.hb} {
		if s != nil {
			s.Close()
		}
	}
	k.wg.Wait()
}

func (k *Kernel) echo() {
	defer k.wg.Done()
	for {
		m, err := k.hb.Recv()
		if err != nil {
			return
		}
		if k.hb.Send(m) != nil {
			return
		}
	}
}

func (k *Kernel) serve(sock zmq4.Socket) {
	defer k.wg.Done()
	for {
		raw, err := sock.Recv()
		if err != nil {
			return
		}
		m, err := k.codec.Decode(raw.Frames)
		if err != nil {
			continue // unsigned or malformed: ignored, as ipykernel does
		}
		k.handle(sock, m)
	}
}

func (k *Kernel) handle(sock zmq4.Socket, m *jupyter.Message) {
	k.status(m.Header, "busy")
	defer k.status(m.Header, "idle")
	switch m.Header.MsgType {
	case "kernel_info_request":
		info := k.Info
		if info == nil {
			info = &jupyter.KernelInfo{Status: "ok", ProtocolVersion: jupyter.ProtocolVersion, Implementation: "fake", ImplementationVersion: "0.1", Banner: "fake kernel"}
			info.LanguageInfo.Name, info.LanguageInfo.Version = "python", "3.0.0"
		}
		k.reply(sock, m, "kernel_info_reply", info)
	case "shutdown_request":
		k.reply(sock, m, "shutdown_reply", map[string]any{"status": "ok", "restart": false})
		k.mu.Lock()
		select {
		case <-k.shutdown:
		default:
			close(k.shutdown)
		}
		k.mu.Unlock()
	case "interrupt_request":
		select {
		case k.interrupted <- struct{}{}:
		default:
		}
		k.reply(sock, m, "interrupt_reply", map[string]any{"status": "ok"})
	case "execute_request":
		var req jupyter.ExecuteRequest
		if m.Decode(&req) != nil {
			return
		}
		k.mu.Lock()
		k.count++
		x := &Exec{Request: req, Code: req.Code, Count: k.count, k: k, parent: m.Header, status: "ok", exprs: map[string]any{}}
		k.mu.Unlock()
		x.Publish("execute_input", map[string]any{"code": req.Code, "execution_count": x.Count})
		run := k.Execute
		if run == nil {
			run = DefaultExecute
		}
		run(x)
		if k.ctx.Err() != nil {
			return // the kernel is going away: a dead kernel sends no reply
		}
		reply := map[string]any{"status": x.status, "execution_count": x.Count, "user_expressions": x.exprs}
		if x.status == "error" {
			reply["ename"], reply["evalue"], reply["traceback"] = x.ename, x.evalue, x.traceback
		}
		k.reply(sock, m, "execute_reply", reply)
	}
}

func (k *Kernel) reply(sock zmq4.Socket, req *jupyter.Message, msgType string, content any) {
	frames, err := k.codec.EncodeContent(req.Identities, jupyter.NewHeader(msgType, req.Header.Session), req.Header, content)
	if err != nil {
		panic(err) // the fake's own content always encodes
	}
	_ = sock.Send(zmq4.NewMsgFrom(frames...))
}

func (k *Kernel) status(parent jupyter.Header, state string) {
	k.publish(parent, "status", map[string]any{"execution_state": state})
}

func (k *Kernel) publish(parent jupyter.Header, msgType string, content any) {
	topic := []byte("kernel.fake." + msgType)
	frames, err := k.codec.EncodeContent([][]byte{topic}, jupyter.NewHeader(msgType, parent.Session), parent, content)
	if err != nil {
		panic(err)
	}
	k.PublishRaw(frames)
}

// PublishRaw sends frames on iopub as they are (for tests of hostile kernels).
func (k *Kernel) PublishRaw(frames [][]byte) {
	k.pubMu.Lock()
	defer k.pubMu.Unlock()
	_ = k.iopub.Send(zmq4.NewMsgFrom(frames...))
}

// Codec returns the codec of the kernel's key, to forge or sign raw messages.
func (k *Kernel) Codec() *jupyter.Codec { return k.codec }

// Exec is one execute_request being handled by Kernel.Execute.
type Exec struct {
	Request jupyter.ExecuteRequest
	Code    string
	Count   int // the execution count of this request

	k      *Kernel
	parent jupyter.Header

	status        string
	ename, evalue string
	traceback     []string
	exprs         map[string]any
}

// Parent is the header of the execute_request.
func (x *Exec) Parent() jupyter.Header { return x.parent }

// Publish sends an iopub message of the request.
func (x *Exec) Publish(msgType string, content any) { x.k.publish(x.parent, msgType, content) }

// PublishRaw sends frames on iopub as they are, for tests of forged messages.
func (x *Exec) PublishRaw(frames [][]byte) { x.k.PublishRaw(frames) }

// Stream publishes text on stdout or stderr.
func (x *Exec) Stream(name, text string) {
	x.Publish("stream", map[string]any{"name": name, "text": text})
}

// Display publishes display_data with the MIME bundle data.
func (x *Exec) Display(data map[string]any) {
	x.Publish("display_data", map[string]any{"data": data, "metadata": map[string]any{}})
}

// Result publishes the execute_result with the MIME bundle data.
func (x *Exec) Result(data map[string]any) {
	x.Publish("execute_result", map[string]any{"data": data, "metadata": map[string]any{}, "execution_count": x.Count})
}

// Fail publishes an error and makes the reply an error reply.
func (x *Exec) Fail(ename, evalue string, traceback ...string) {
	x.status, x.ename, x.evalue, x.traceback = "error", ename, evalue, traceback
	x.Publish("error", map[string]any{"ename": ename, "evalue": evalue, "traceback": traceback})
}

// SetUserExpression sets the reply's result of user expression name to an ok result
// with MIME bundle data.
func (x *Exec) SetUserExpression(name string, data map[string]any) {
	x.exprs[name] = map[string]any{"status": "ok", "data": data, "metadata": map[string]any{}}
}

// Interrupted is signalled when an interrupt_request arrives on control.
func (x *Exec) Interrupted() <-chan struct{} { return x.k.interrupted }

// Done is closed when the kernel is closing.
func (x *Exec) Done() <-chan struct{} { return x.k.ctx.Done() }

// DefaultExecute understands two forms of code: "print:TEXT" writes TEXT to stdout, and
// "raise:NAME" fails with exception NAME; any other code is its own result (text/plain).
func DefaultExecute(x *Exec) {
	switch {
	case strings.HasPrefix(x.Code, "print:"):
		x.Stream("stdout", strings.TrimPrefix(x.Code, "print:"))
	case strings.HasPrefix(x.Code, "raise:"):
		name := strings.TrimPrefix(x.Code, "raise:")
		x.Fail(name, "fake", "Traceback (most recent call last):", "\x1b[0;31m"+name+"\x1b[0m: fake")
	case x.Code != "":
		b, _ := json.Marshal(x.Code)
		x.Result(map[string]any{"text/plain": json.RawMessage(b)})
	}
}
