package agent

import (
	"encoding/json"
	"testing"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/jupyter"
)

func TestConvertResult(t *testing.T) {
	t.Parallel()
	tag := func(s string) jupyter.UserExpression {
		b, _ := json.Marshal("'" + s + "'")
		return jupyter.UserExpression{Status: "ok", Data: map[string]json.RawMessage{"text/plain": b}}
	}
	bundle := func(kv ...string) *agentapi.Output {
		o := &agentapi.Output{Type: "execute_result", Data: map[string]json.RawMessage{}}
		for i := 0; i < len(kv); i += 2 {
			b, _ := json.Marshal(kv[i+1])
			o.Data[kv[i]] = b
		}
		return o
	}
	failed := jupyter.UserExpression{Status: "error", EName: "NameError"}
	for _, tc := range []struct {
		name    string
		typed   jupyter.UserExpression
		res     *agentapi.Output
		image   string
		jupyter bool
		want    string
	}{
		{"int", tag("int:2"), bundle("text/plain", "2"), "", false, `2`},
		{"negative int", tag("int:-5"), bundle("text/plain", "-5"), "", false, `-5`},
		{"bad int", tag("int:2x"), bundle("text/plain", "2x"), "", false, `"2x"`},
		{"bool", tag("bool:1"), bundle("text/plain", "True"), "", false, `true`},
		{"false", tag("bool:0"), bundle("text/plain", "False"), "", false, `false`},
		{"float", tag("float:2.5"), bundle("text/plain", "2.5"), "", false, `2.5`},
		{"float exp", tag("float:1e+100"), bundle("text/plain", "1e+100"), "", false, `1e+100`},
		{"nan", tag("float:nan"), bundle("text/plain", "nan"), "", false, `null`},
		{"inf", tag("float:inf"), bundle("text/plain", "np.float64(inf)"), "", false, `"np.float64(inf)"`},
		{"str", tag("str:aMOp"), bundle("text/plain", "'hé'"), "", false, `"hé"`},
		{"none", tag("none"), nil, "", false, `""`},
		{"none with image", tag("none"), nil, "iVBO", false, `{"type":"image","format":"png","base64_data":"iVBO"}`},
		{"other", tag("other"), bundle("text/plain", "{'a': 1}"), "", false, `"{'a': 1}"`},
		{"figure", tag("other"), bundle("text/plain", "<Figure>", "image/png", "iVBO"), "iVBO", false, `{"type":"image","format":"png","base64_data":"iVBO"}`},
		{"other beats image", tag("other"), bundle("text/plain", "[<Line2D>]"), "iVBO", false, `"[<Line2D>]"`},
		{"expression failed", failed, bundle("text/plain", "'x'"), "", false, `"'x'"`},
		{"expression failed, nothing", failed, nil, "", false, `""`},
		{"forged tag", tag(`str:'"`), bundle("text/plain", "1"), "", false, `"1"`},
		{"jupyter nan", tag("float:nan"), bundle("text/plain", "nan"), "", true, `"nan"`},
		{"jupyter str", tag("str:bmFu"), bundle("text/plain", "'nan'"), "", true, `"'nan'"`},
		{"jupyter none", tag("none"), nil, "", true, `null`},
		{"jupyter image", tag("none"), nil, "iVBO", true, `{"type":"image","format":"png","base64_data":"iVBO"}`},
	} {
		if got := string(convertResult(tc.typed, tc.res, tc.image, tc.jupyter)); got != tc.want {
			t.Errorf("%s: got %s, want %s", tc.name, got, tc.want)
		}
	}
}

func TestStripANSI(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"\x1b[0;31mKeyError\x1b[0m: 'k'": "KeyError: 'k'",
		"\x1b[38;5;241;43m1\x1b[39;49m":  "1",
		"plain":                          "plain",
		"\x1b]0;title\x07after":          "after",
		"cursor\x1b[2Kline":              "cursorline",
	} {
		if got := stripANSI(in); got != want {
			t.Errorf("stripANSI(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestNewExecutionValidation(t *testing.T) {
	t.Parallel()
	for _, req := range []agentapi.ExecuteRequest{
		{ID: "a/b"},
		{ID: string(make([]byte, 129))},
		{TimeoutSeconds: -1},
		{StreamLimit: -1},
		{StreamLimit: agentapi.MaxStreamLimit + 1},
		{Code: string(make([]byte, agentapi.MaxCodeBytes+1))},
	} {
		if _, err := newExecution(req); err == nil {
			t.Errorf("newExecution accepted id %.20q timeout %d limit %d code %d bytes", req.ID, req.TimeoutSeconds, req.StreamLimit, len(req.Code))
		}
	}
	e, err := newExecution(agentapi.ExecuteRequest{TimeoutSeconds: 1 << 30})
	if err != nil || e.timeout != agentapi.MaxExecTimeout || e.req.ID == "" || e.limit != agentapi.DefaultStreamLimit {
		t.Errorf("newExecution = %+v, %v", e, err)
	}
}
