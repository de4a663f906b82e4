package jupyter

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"sync"
	"time"

	"github.com/go-zeromq/zmq4"
)

// ZMTP 3 frame flags.
const (
	flagMore    = 0x01
	flagLong    = 0x02
	flagCommand = 0x04
)

// errFrameTooLarge is returned when a handshake frame exceeds its bound.
var errFrameTooLarge = errors.New("zmtp frame above the size bound")

// conn is one ZeroMQ connection to a kernel socket. zmq4 performs the handshake and
// encodes what is sent; frames are read here, with bounds.
type conn struct {
	nc net.Conn
	r  *bufio.Reader

	wmu sync.Mutex
	// zc encodes frames into w; both guarded by wmu.
	zc *zmq4.Conn
	w  *bufio.Writer
}

// dialConn connects to addr on network ("tcp" or "unix") as a socket of type typ and
// performs the ZMTP handshake.
func dialConn(ctx context.Context, network, addr string, typ zmq4.SocketType) (*conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	c, err := handshake(ctx, nc, typ)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

// handshake runs zmq4's client handshake over nc, with every frame the peer sends during
// it bounded and any panic in zmq4's parsing of the peer's metadata turned into an error.
func handshake(ctx context.Context, nc net.Conn, typ zmq4.SocketType) (c *conn, err error) {
	deadline := time.Now().Add(10 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := nc.SetDeadline(deadline); err != nil {
		return nil, fmt.Errorf("zmtp handshake: %w", err)
	}
	g := &guardConn{Conn: nc, left: 64}
	defer func() {
		if r := recover(); r != nil {
			c, err = nil, fmt.Errorf("zmtp handshake: peer sent malformed metadata (%v)", r)
		}
	}()
	zc, err := zmq4.Open(g, nullSecurity{}, typ, nil, false, nil)
	if err != nil {
		return nil, fmt.Errorf("zmtp handshake: %w", err)
	}
	if err := nc.SetDeadline(time.Time{}); err != nil {
		return nil, fmt.Errorf("zmtp handshake: %w", err)
	}
	c = &conn{nc: nc, r: bufio.NewReaderSize(nc, 64<<10), zc: zc, w: bufio.NewWriterSize(nc, 64<<10)}
	g.mu.Lock()
	g.w = c.w // from now on zmq4's writes are buffered and flushed by send
	g.mu.Unlock()
	return c, nil
}

// nullSecurity is ZMTP's NULL mechanism, as in zmq4/security/null.
type nullSecurity struct{}

func (nullSecurity) Type() zmq4.SecurityType { return zmq4.NullSecurity }

func (nullSecurity) Handshake(c *zmq4.Conn, _ bool) error {
	raw, err := c.Meta.MarshalZMTP()
	if err != nil {
		return err
	}
	if err := c.SendCmd(zmq4.CmdReady, raw); err != nil {
		return err
	}
	cmd, err := c.RecvCmd()
	if err != nil {
		return err
	}
	if cmd.Name != zmq4.CmdReady {
		return zmq4.ErrBadCmd
	}
	return c.Peer.Meta.UnmarshalZMTP(cmd.Body)
}

func (nullSecurity) Encrypt(w io.Writer, data []byte) (int, error) { return w.Write(data) }
func (nullSecurity) Decrypt(w io.Writer, data []byte) (int, error) { return w.Write(data) }

// guardConn is what zmq4 sees of the connection. During the handshake it parses the
// frames read through it and fails a read that would hand zmq4 the header of a frame
// longer than maxHandshakeFrame (zmq4 allocates a frame's announced length before it
// reads the body). Afterwards zmq4 only writes, into the buffer w.
type guardConn struct {
	net.Conn
	// Parser state: left bytes of the greeting or of a frame body remain; hdr collects
	// a frame header (flags, then 1 or 8 length bytes).
	left int
	hdr  []byte

	mu sync.Mutex
	w  *bufio.Writer // nil during the handshake; guarded by mu
}

func (g *guardConn) Read(p []byte) (int, error) {
	n, err := g.Conn.Read(p)
	for _, b := range p[:n] {
		if g.left > 0 {
			g.left--
			continue
		}
		g.hdr = append(g.hdr, b)
		if len(g.hdr) == 1 {
			continue
		}
		size := uint64(g.hdr[1])
		if g.hdr[0]&flagLong != 0 {
			if len(g.hdr) < 9 {
				continue
			}
			size = binary.BigEndian.Uint64(g.hdr[1:9])
		}
		if size > maxHandshakeFrame {
			return 0, errFrameTooLarge
		}
		g.left, g.hdr = int(size), g.hdr[:0]
	}
	return n, err
}

func (g *guardConn) Write(p []byte) (int, error) {
	g.mu.Lock()
	w := g.w
	g.mu.Unlock()
	if w != nil {
		return w.Write(p)
	}
	return g.Conn.Write(p)
}

// send writes one multi-frame message.
func (c *conn) send(frames [][]byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.zc.SendMsg(zmq4.NewMsgFrom(frames...)); err != nil {
		return err
	}
	return c.w.Flush()
}

func (c *conn) close() error { return c.nc.Close() }

// readFrameHeader reads a frame's flags and length.
func (c *conn) readFrameHeader() (flags byte, size uint64, err error) {
	var h [9]byte
	if _, err := io.ReadFull(c.r, h[:2]); err != nil {
		return 0, 0, err
	}
	flags, size = h[0], uint64(h[1])
	if flags&flagLong != 0 {
		if _, err := io.ReadFull(c.r, h[2:9]); err != nil {
			return 0, 0, err
		}
		size = binary.BigEndian.Uint64(h[1:9])
	}
	if flags&^(flagMore|flagLong|flagCommand) != 0 {
		return 0, 0, fmt.Errorf("zmtp: reserved frame flags %#x", flags)
	}
	return flags, size, nil
}

// readBody reads a frame body of size bytes, keeping at most keep of them and feeding all
// of them to mac if it is not nil. It reports whether bytes were dropped.
func (c *conn) readBody(size uint64, keep int, mac hash.Hash) ([]byte, bool, error) {
	n := size
	if n > uint64(keep) {
		n = uint64(keep)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(c.r, b); err != nil {
		return nil, false, err
	}
	if mac != nil {
		mac.Write(b)
	}
	rest := size - n
	if rest == 0 {
		return b, false, nil
	}
	var w io.Writer = io.Discard
	if mac != nil {
		w = mac
	}
	if _, err := io.CopyN(w, c.r, int64(min(rest, 1<<62))); err != nil {
		return nil, false, err
	}
	return b, true, nil
}

// readMessage reads the next Jupyter message, computing its HMAC with a fresh mac from
// newMAC while it reads, keeping at most maxContent bytes of its content frame and
// discarding buffers. ZMTP commands between messages are skipped. A message that is
// framed correctly but unusable comes back with bad set; an error means the
// connection is unusable.
func (c *conn) readMessage(newMAC func() hash.Hash, maxContent int) (*wireMessage, error) {
	w := &wireMessage{}
	var mac hash.Hash
	state := 0 // 0: identities, 1: signature, 2..5: signed frames, 6: buffers
	frames := 0
	for {
		flags, size, err := c.readFrameHeader()
		if err != nil {
			return nil, err
		}
		if flags&flagCommand != 0 {
			if frames > 0 {
				return nil, errors.New("zmtp: command frame inside a message")
			}
			if _, _, err := c.readBody(size, 0, nil); err != nil {
				return nil, err
			}
			continue
		}
		frames++
		more := flags&flagMore != 0
		keep, feed := 0, hash.Hash(nil)
		switch {
		case w.bad != nil || frames > maxFrames:
			if w.bad == nil {
				w.bad = fmt.Errorf("%w: more than %d frames", ErrBadMessage, maxFrames)
			}
		case state == 0:
			keep = max(maxIdentity, len(delimiter))
		case state == 1:
			keep = 2 * 64
		case state >= 2 && state <= 4:
			keep, feed = maxSmallFrame, mac
		case state == 5:
			keep, feed = maxContent, mac
		}
		b, dropped, err := c.readBody(size, keep, feed)
		if err != nil {
			return nil, err
		}
		if w.bad == nil {
			switch {
			case state == 0 && string(b) == delimiter && !dropped:
				state = 1
			case state == 0:
				if dropped || len(w.identities) == maxIdentities {
					w.bad = fmt.Errorf("%w: too many or too long identities", ErrBadMessage)
				}
				w.identities = append(w.identities, b)
			case state == 1:
				if dropped {
					w.bad = fmt.Errorf("%w: signature frame too long", ErrBadMessage)
				}
				w.signature, mac = b, newMAC()
				state = 2
			case state >= 2 && state <= 5:
				if dropped && state < 5 {
					w.bad = fmt.Errorf("%w: header or metadata frame above %d bytes", ErrBadMessage, maxSmallFrame)
				}
				w.signed[state-2] = b
				w.truncated = state == 5 && dropped
				state++
			}
		}
		if !more {
			break
		}
	}
	if w.bad == nil && state < 6 {
		w.bad = fmt.Errorf("%w: incomplete message", ErrBadMessage)
	}
	if w.bad == nil {
		w.sum = mac.Sum(nil)
	}
	return w, nil
}

// readRaw reads one message of at most maxFrames frames of at most maxSize bytes each,
// for the heartbeat channel.
func (c *conn) readRaw(maxFrames, maxSize int) ([][]byte, error) {
	var frames [][]byte
	for {
		flags, size, err := c.readFrameHeader()
		if err != nil {
			return nil, err
		}
		if size > uint64(maxSize) {
			return nil, errFrameTooLarge
		}
		b, _, err := c.readBody(size, maxSize, nil)
		if err != nil {
			return nil, err
		}
		if flags&flagCommand != 0 {
			continue
		}
		if len(frames) == maxFrames {
			return nil, errors.New("zmtp: too many frames")
		}
		frames = append(frames, b)
		if flags&flagMore == 0 {
			return frames, nil
		}
	}
}
