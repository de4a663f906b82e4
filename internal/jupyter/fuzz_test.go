package jupyter

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
	"unicode/utf8"
)

// frame encodes one ZMTP frame.
func frame(body []byte, more bool) []byte {
	var flags byte
	if more {
		flags |= flagMore
	}
	if len(body) > 255 {
		h := make([]byte, 9)
		h[0] = flags | flagLong
		binary.BigEndian.PutUint64(h[1:], uint64(len(body)))
		return append(h, body...)
	}
	return append([]byte{flags, byte(len(body))}, body...)
}

func wire(frames [][]byte) []byte {
	var b []byte
	for i, f := range frames {
		b = append(b, frame(f, i < len(frames)-1)...)
	}
	return b
}

// FuzzReadMessage feeds arbitrary bytes to the bounded frame reader and the verifier:
// they must never panic, keep at most the bounds, and accept only correctly signed
// messages.
func FuzzReadMessage(f *testing.F) {
	codec := NewCodec("fuzz-key")
	good, _ := codec.EncodeContent([][]byte{[]byte("id")}, NewHeader("stream", "s"), NewHeader("execute_request", "s"), Stream{Name: "stdout", Text: strings.Repeat("x", 300)})
	f.Add(wire(good))
	f.Add(wire(good[1:]))
	f.Add([]byte{0x04, 0x05, 0x04, 'P', 'I', 'N', 'G', 0x00, 0x00})
	f.Add([]byte{0x02, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Add(wire([][]byte{[]byte(delimiter), []byte("00"), []byte("{}"), []byte("{}"), []byte("{}"), []byte("{}")}))
	f.Fuzz(func(t *testing.T, data []byte) {
		c := &conn{r: bufio.NewReader(bytes.NewReader(data))}
		for range 8 {
			w, err := c.readMessage(codec.mac, 200)
			if err != nil {
				return
			}
			if len(w.signed[3]) > 200 || len(w.identities) > maxIdentities {
				t.Fatalf("kept %d content bytes and %d identities", len(w.signed[3]), len(w.identities))
			}
			m, err := w.decode()
			if err != nil {
				continue
			}
			if w.bad != nil || m.Header.MsgType == "" {
				t.Fatalf("accepted a bad message: %v %+v", w.bad, m.Header)
			}
			if m.Header.MsgType == "stream" {
				ParseStream(m)
			}
		}
	})
}

// FuzzDecode checks Decode on arbitrary frames (split at 0xff bytes): no panic, and
// whatever it accepts re-encodes to frames it accepts again.
func FuzzDecode(f *testing.F) {
	codec := NewCodec("k")
	good, _ := codec.EncodeContent(nil, NewHeader("status", "s"), Header{}, Status{ExecutionState: "idle"})
	f.Add(bytes.Join(good, []byte{0xff}))
	f.Add([]byte("<IDS|MSG>\xffsig\xff{}\xff{}\xff{}\xff{}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := codec.Decode(bytes.Split(data, []byte{0xff}))
		if err != nil {
			return
		}
		frames, err := codec.Encode(m)
		if err != nil {
			t.Fatalf("re-encoding an accepted message: %v", err)
		}
		if _, err := codec.Decode(frames); err != nil {
			t.Fatalf("re-encoded message rejected: %v", err)
		}
	})
}

// FuzzPartialStream checks that a stream content cut anywhere decodes to a prefix of
// its text, or not at all, without panicking.
func FuzzPartialStream(f *testing.F) {
	f.Add("hello\nworld", 20)
	f.Add("é\"\\\u2028\U0001F600", 25)
	f.Fuzz(func(t *testing.T, text string, cut int) {
		if !utf8.ValidString(text) {
			return
		}
		content := []byte(`{"name": "stdout", "text": ` + quote(text) + `}`)
		if cut < 0 || cut > len(content) {
			return
		}
		s, ok := partialStream(content[:cut])
		if !ok {
			return
		}
		if s.Name != "stdout" || !strings.HasPrefix(text, s.Text) {
			t.Fatalf("partial text %q is not a prefix of %q", s.Text, text)
		}
	})
}

func quote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r > 0x7e:
			if r > 0xffff {
				r1, r2 := utf16Pair(r)
				b.WriteString(esc(r1) + esc(r2))
			} else if r >= 0x80 && r%2 == 0 {
				b.WriteRune(r) // raw UTF-8 too
			} else {
				b.WriteString(esc(r))
			}
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

func esc(r rune) string {
	const hex = "0123456789abcdef"
	return `\u` + string([]byte{hex[r>>12&15], hex[r>>8&15], hex[r>>4&15], hex[r&15]})
}

func utf16Pair(r rune) (rune, rune) {
	r -= 0x10000
	return 0xd800 + (r>>10)&0x3ff, 0xdc00 + r&0x3ff
}

func TestPartialString(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{`abc"}`, "abc"},
		{`abc`, "abc"},
		{`ab\`, "ab"},
		{`ab\n`, "ab\n"},
		{`ab\u00`, "ab"},
		{`ab\u00e9`, "abé"},
		{"ab\xc3", "ab"},
		{"ab\xc3\xa9", "abé"},
		{`\"q\"`, `"q"`},
	} {
		got, ok := partialString([]byte(tc.in))
		if !ok || got != tc.want {
			t.Errorf("partialString(%q) = %q, %v; want %q", tc.in, got, ok, tc.want)
		}
	}
}
