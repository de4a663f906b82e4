package agent

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/jupyter"
)

// resultKey names the user expression that reports the cell's value.
const resultKey = "sessiond_result"

// maxStrResult caps the length (in characters) of a str value that resultExpr encodes
// exactly; a longer str falls back to its text/plain repr. It keeps the execute_reply
// below jupyter.DefaultMaxContent: 4 bytes of UTF-8 a character, in base64.
const maxStrResult = 4 << 20

// resultExpr is evaluated by the kernel after the cell. It classifies the cell's value,
// which IPython's displayhook stored under the cell's execution count (the count has
// already moved on to the next cell when user expressions run), into a tag whose repr is
// plain ASCII: "none", "bool:0|1", "int:N", "float:REPR", "str:BASE64" (UTF-8) or
// "other". It reads the history manager rather than Out, so user code that rebinds Out
// does not change it.
var resultExpr = strings.Join(strings.Fields(`
(lambda v, np=__import__('sys').modules.get('numpy'):
 'none' if v is None else
 'bool:%d' % v if isinstance(v, bool) or (np is not None and isinstance(v, np.bool_)) else
 'int:%d' % v if isinstance(v, int) or (np is not None and isinstance(v, np.integer)) else
 'float:%r' % float(v) if isinstance(v, float) or (np is not None and isinstance(v, np.floating)) else
 'str:' + __import__('base64').b64encode(v.encode('utf-8', 'surrogatepass')).decode() if isinstance(v, str) and len(v) <= `+strconv.Itoa(maxStrResult)+` else
 'other')
(__import__('IPython').get_ipython().history_manager.output_hist.get(__import__('IPython').get_ipython().execution_count - 1))`), " ")

// settleKey names the user expression that ends a warm-up. settleExpr, which the kernel
// evaluates only when the warm-up code succeeded, collects the garbage the imports left and
// freezes what survives: a full collection would otherwise walk those objects again and
// again, 65,000 of them after the default warm-up, about 20 ms a collection under gVisor.
const (
	settleKey  = "sessiond_settle"
	settleExpr = "(__import__('gc').collect(), __import__('gc').freeze())"
)

// emptyResult is the Result of an execution without a value.
var emptyResult = json.RawMessage(`""`)

// imageResult is the Result of an execution that showed an image and had no value.
type imageResult struct {
	Type       string `json:"type"`
	Format     string `json:"format"`
	Base64Data string `json:"base64_data"`
}

var intRE = regexp.MustCompile(`^-?[0-9]+$`)

// convertResult computes an execution's Result as Azure does (azure-api.md §3.5.3) from
// the typed value that resultExpr reported, the execute_result's MIME bundle (nil if
// none) and the last PNG image shown ("" if none).
func convertResult(typed jupyter.UserExpression, execResult *agentapi.Output, image string, jupyterFormat bool) json.RawMessage {
	var repr string
	hasRepr := false
	if execResult != nil {
		repr, hasRepr = jsonString(execResult.Data["text/plain"])
	}
	img := func() json.RawMessage {
		if image == "" {
			return nil
		}
		b, _ := json.Marshal(imageResult{Type: "image", Format: "png", Base64Data: image})
		return b
	}
	str := func(s string) json.RawMessage { return jsonText(s) }
	if jupyterFormat {
		if hasRepr {
			return str(repr)
		}
		if b := img(); b != nil {
			return b
		}
		return json.RawMessage("null")
	}
	// The value itself, when resultExpr could tell it.
	kind, payload := "", ""
	if tag := pyStrTag(typed); tag != "" {
		kind, payload, _ = strings.Cut(tag, ":")
	}
	switch kind {
	case "bool":
		if payload == "1" {
			return json.RawMessage("true")
		}
		return json.RawMessage("false")
	case "int":
		if intRE.MatchString(payload) {
			return json.RawMessage(payload)
		}
	case "float":
		f, err := strconv.ParseFloat(payload, 64)
		switch {
		case err == nil && f != f: // NaN
			return json.RawMessage("null")
		case payload == "inf" || payload == "-inf":
			if hasRepr {
				return str(repr)
			}
			return str(payload)
		case err == nil && json.Valid([]byte(payload)):
			return json.RawMessage(payload) // Python's repr: 2.0 stays 2.0
		case err == nil:
			b, _ := json.Marshal(f)
			return b
		}
	case "str":
		if b, err := base64.StdEncoding.DecodeString(payload); err == nil {
			return str(string(b))
		}
	case "none":
		if !hasRepr {
			if b := img(); b != nil {
				return b
			}
			return emptyResult
		}
	case "other":
		if execResult != nil {
			if png, ok := jsonString(execResult.Data["image/png"]); ok && png != "" {
				return img()
			}
		}
	}
	// Anything else: the text/plain repr, or the image, or nothing.
	if hasRepr {
		return str(repr)
	}
	if b := img(); b != nil {
		return b
	}
	return emptyResult
}

// jsonText encodes s as a JSON string, without HTML escaping (a repr is full of '<'),
// invalid UTF-8 replaced by U+FFFD.
func jsonText(s string) json.RawMessage {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(strings.ToValidUTF8(s, "\uFFFD")) // a string always encodes
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}

// pyStrTag returns the tag resultExpr produced: its text/plain is the repr of an ASCII
// str without quotes or backslashes.
func pyStrTag(u jupyter.UserExpression) string {
	s, ok := textPlain(u.Data)
	if u.Status != "ok" || !ok || len(s) < 2 || s[0] != '\'' || s[len(s)-1] != '\'' {
		return ""
	}
	s = s[1 : len(s)-1]
	if strings.ContainsAny(s, `'"\`) {
		return ""
	}
	return s
}

// textPlain returns the text/plain entry of a MIME bundle.
func textPlain(data map[string]json.RawMessage) (string, bool) {
	return jsonString(data["text/plain"])
}

// jsonString decodes a JSON string.
func jsonString(b json.RawMessage) (string, bool) {
	if len(b) == 0 {
		return "", false
	}
	var s string
	if json.Unmarshal(b, &s) != nil {
		return "", false
	}
	return s, true
}

// ansiRE matches ANSI escape sequences: CSI (colours, cursor moves), OSC, and the
// two-byte ones.
var ansiRE = regexp.MustCompile(`\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])`)

// stripANSI removes ANSI escape sequences (IPython colours its tracebacks).
func stripANSI(s string) string {
	if !strings.Contains(s, "\x1b") {
		return s
	}
	return ansiRE.ReplaceAllString(s, "")
}

func stripAll(lines []string) []string {
	if len(lines) == 0 {
		return nil
	}
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = stripANSI(l)
	}
	return out
}

// tracebackText is a traceback as stderr shows it: its lines without ANSI codes.
func tracebackText(lines []string) string {
	var b strings.Builder
	for _, l := range lines {
		l = stripANSI(l)
		b.WriteString(l)
		if !strings.HasSuffix(l, "\n") {
			b.WriteByte('\n')
		}
	}
	s := b.String()
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	return s
}
