package jupyter

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// ParseStream decodes a stream message. For a truncated message it recovers the stream
// name and the leading text that was kept, and reports truncated.
func ParseStream(m *Message) (s Stream, truncated bool, err error) {
	if !m.Truncated {
		if err := m.Decode(&s); err != nil {
			return Stream{}, false, err
		}
		return s, false, nil
	}
	s, ok := partialStream(m.Content)
	if !ok {
		return Stream{}, true, fmt.Errorf("decoding truncated stream content: %w", ErrBadMessage)
	}
	return s, true, nil
}

// partialStream recovers {"name": ..., "text": "<prefix>"} from a prefix of a stream
// content object, as ipykernel encodes it (name before text).
func partialStream(b []byte) (Stream, bool) {
	dec := json.NewDecoder(bytes.NewReader(b))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return Stream{}, false
	}
	var s Stream
	for {
		tok, err := dec.Token()
		if err != nil {
			return Stream{}, false
		}
		key, ok := tok.(string)
		if !ok {
			return Stream{}, false
		}
		if key != "text" {
			var v json.RawMessage
			if err := dec.Decode(&v); err != nil {
				return Stream{}, false
			}
			if key == "name" && json.Unmarshal(v, &s.Name) != nil {
				return Stream{}, false
			}
			continue
		}
		rest := bytes.TrimLeft(b[dec.InputOffset():], " \t\r\n")
		if len(rest) == 0 || rest[0] != ':' {
			return Stream{}, false
		}
		rest = bytes.TrimLeft(rest[1:], " \t\r\n")
		if len(rest) == 0 || rest[0] != '"' {
			return Stream{}, false
		}
		text, ok := partialString(rest[1:])
		if !ok || s.Name == "" {
			return Stream{}, false
		}
		s.Text = text
		return s, true
	}
}

// partialString decodes the body of a JSON string (after its opening quote) that may be
// cut anywhere: an escape or UTF-8 sequence cut short at the end is dropped.
func partialString(b []byte) (string, bool) {
	end := len(b)
	lastU := -1 // index of the last complete six-byte unicode escape, -1 if none
	closed := false
	for i := 0; i < len(b); {
		switch c := b[i]; {
		case c == '"':
			end, closed = i, true
			i = len(b)
		case c == '\\':
			n := 2
			if i+1 < len(b) && b[i+1] == 'u' {
				n = 6
			}
			if i+n > len(b) {
				end = i
				i = len(b)
				break
			}
			if n == 6 {
				lastU = i
			}
			i += n
		default:
			i++
		}
	}
	// A high surrogate whose low half was cut off is dropped too.
	if lastU >= 0 && lastU+6 == end && !closed {
		if v, err := strconv.ParseUint(string(b[lastU+2:end]), 16, 16); err == nil && v >= 0xd800 && v < 0xdc00 {
			end = lastU
		}
	}
	body := b[:end]
	// Drop a UTF-8 sequence cut short at the end.
	for k := 1; k <= 3 && k <= len(body); k++ {
		c := body[len(body)-k]
		if c < 0x80 {
			break
		}
		if utf8.RuneStart(c) {
			if !utf8.FullRune(body[len(body)-k:]) {
				body = body[:len(body)-k]
			}
			break
		}
	}
	q := make([]byte, 0, len(body)+2)
	q = append(q, '"')
	q = append(q, body...)
	q = append(q, '"')
	var s string
	if err := json.Unmarshal(q, &s); err != nil {
		return "", false
	}
	return s, true
}
