package jupyter

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"time"
)

// Codec signs, encodes, verifies and decodes messages with one connection's key. It is
// safe for concurrent use.
type Codec struct {
	key []byte
}

// NewCodec returns a codec for the HMAC-SHA256 key of a connection file (the key string
// itself is the HMAC key, as Jupyter uses it).
func NewCodec(key string) *Codec {
	return &Codec{key: []byte(key)}
}

func (c *Codec) mac() hash.Hash { return hmac.New(sha256.New, c.key) }

// Sign returns the hex signature of the four signed frames.
func (c *Codec) Sign(header, parent, metadata, content []byte) string {
	m := c.mac()
	m.Write(header)
	m.Write(parent)
	m.Write(metadata)
	m.Write(content)
	return hex.EncodeToString(m.Sum(nil))
}

// NewHeader returns a header for a new message of msgType in session.
func NewHeader(msgType, session string) Header {
	return Header{
		MsgID:    NewID(),
		Session:  session,
		Username: "sessiond",
		Date:     time.Now().UTC().Format("2006-01-02T15:04:05.000000Z"),
		MsgType:  msgType,
		Version:  ProtocolVersion,
	}
}

// NewID returns a random identifier in UUID form.
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// Encode returns the frames of a message: its identities, the delimiter, the signature
// and the four signed frames. Content and Metadata must be JSON objects (nil means {}).
func (c *Codec) Encode(m *Message) ([][]byte, error) {
	header, err := json.Marshal(m.Header)
	if err != nil {
		return nil, fmt.Errorf("encoding a message header: %w", err)
	}
	parent := []byte("{}")
	if m.Parent != (Header{}) {
		if parent, err = json.Marshal(m.Parent); err != nil {
			return nil, fmt.Errorf("encoding a parent header: %w", err)
		}
	}
	metadata, content := []byte(m.Metadata), []byte(m.Content)
	if len(metadata) == 0 {
		metadata = []byte("{}")
	}
	if len(content) == 0 {
		content = []byte("{}")
	}
	frames := make([][]byte, 0, len(m.Identities)+6)
	frames = append(frames, m.Identities...)
	frames = append(frames, []byte(delimiter), []byte(c.Sign(header, parent, metadata, content)), header, parent, metadata, content)
	return frames, nil
}

// EncodeContent is Encode for a message whose content is v, marshalled as JSON.
func (c *Codec) EncodeContent(identities [][]byte, h, parent Header, v any) ([][]byte, error) {
	content, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encoding %s content: %w", h.MsgType, err)
	}
	return c.Encode(&Message{Identities: identities, Header: h, Parent: parent, Content: content})
}

// Errors of Decode. Every rejected message wraps ErrBadMessage.
var (
	ErrBadMessage   = errors.New("bad message")
	ErrBadSignature = fmt.Errorf("%w: signature mismatch", ErrBadMessage)
)

// wireMessage is a message as framed on the wire, before verification. sum is the HMAC
// of the four signed frames in full, which may be longer than what is kept of content.
type wireMessage struct {
	identities [][]byte
	signature  []byte
	signed     [4][]byte // header, parent, metadata, content
	truncated  bool      // content is a prefix of the frame
	sum        []byte
	bad        error // a framing fault that makes the message unusable
}

// Decode verifies and decodes a message from its frames, as received in full (the fake
// kernel and tests use it; the client decodes while it reads, with bounds).
func (c *Codec) Decode(frames [][]byte) (*Message, error) {
	w := &wireMessage{}
	i := 0
	for ; i < len(frames) && string(frames[i]) != delimiter; i++ {
		if len(w.identities) == maxIdentities || len(frames[i]) > maxIdentity {
			return nil, fmt.Errorf("%w: too many or too long identities", ErrBadMessage)
		}
		w.identities = append(w.identities, frames[i])
	}
	if i == len(frames) {
		return nil, fmt.Errorf("%w: no delimiter", ErrBadMessage)
	}
	rest := frames[i+1:]
	if len(rest) < 5 {
		return nil, fmt.Errorf("%w: %d frames after the delimiter, want at least 5", ErrBadMessage, len(rest))
	}
	w.signature = rest[0]
	m := c.mac()
	for j := range w.signed {
		w.signed[j] = rest[1+j]
		m.Write(rest[1+j])
	}
	w.sum = m.Sum(nil)
	return w.decode()
}

// decode verifies w's signature and parses its frames.
func (w *wireMessage) decode() (*Message, error) {
	if w.bad != nil {
		return nil, w.bad
	}
	sig := make([]byte, hex.DecodedLen(len(w.signature)))
	if n, err := hex.Decode(sig, w.signature); err != nil || n != sha256.Size || !hmac.Equal(sig, w.sum) {
		return nil, ErrBadSignature
	}
	m := &Message{Identities: w.identities, Truncated: w.truncated}
	if err := decodeHeader(w.signed[0], &m.Header); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrBadMessage, err)
	}
	if m.Header.MsgType == "" {
		return nil, fmt.Errorf("%w: header without msg_type", ErrBadMessage)
	}
	if err := decodeHeader(w.signed[1], &m.Parent); err != nil {
		return nil, fmt.Errorf("%w: parent header: %v", ErrBadMessage, err)
	}
	if !isObject(w.signed[2]) {
		return nil, fmt.Errorf("%w: metadata is not a JSON object", ErrBadMessage)
	}
	m.Metadata = w.signed[2]
	if !w.truncated && !isObject(w.signed[3]) {
		return nil, fmt.Errorf("%w: content is not a JSON object", ErrBadMessage)
	}
	m.Content = w.signed[3]
	return m, nil
}

// decodeHeader decodes a header object; {} leaves h zero. Its strings are bounded by the
// frame's bound.
func decodeHeader(b []byte, h *Header) error {
	if !isObject(b) {
		return errors.New("not a JSON object")
	}
	return json.Unmarshal(b, h)
}

// isObject reports whether b is one valid JSON object.
func isObject(b []byte) bool {
	t := bytes.TrimLeft(b, " \t\r\n")
	return len(t) > 0 && t[0] == '{' && json.Valid(b)
}

// Decode decodes m's content into v. It fails for truncated content.
func (m *Message) Decode(v any) error {
	if m.Truncated {
		return fmt.Errorf("decoding %s content: %w: content above the size bound", m.Header.MsgType, ErrBadMessage)
	}
	if err := json.Unmarshal(m.Content, v); err != nil {
		return fmt.Errorf("decoding %s content: %w", m.Header.MsgType, err)
	}
	return nil
}
