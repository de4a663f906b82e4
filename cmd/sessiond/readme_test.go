package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/api"
	"github.com/sessiond/sessiond/internal/controlplane"
	"github.com/sessiond/sessiond/internal/sandbox"
	"github.com/sessiond/sessiond/internal/sandbox/sandboxtest"
	"github.com/sessiond/sessiond/internal/store"
)

// TestREADMECommandLine runs the examples of README.md's "Command line" section against
// a real server (control plane and API in process, real runc sandboxes of the
// python-small image), so that the README cannot drift from what sessiond does.
//
// In the section, a fenced block whose info string names a file ("```yaml pool.yaml")
// is written to that file in the examples' working directory; in "sh" blocks, every line
// that starts with "sessiond " is run, in order, and must succeed; a trailing
// "# → TEXT" asks that its standard output contain TEXT.
func TestREADMECommandLine(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real sandboxes")
	}
	files, commands := readmeExamples(t, "../../README.md", "## Command line")
	if len(commands) < 10 {
		t.Fatalf("found %d commands in the README's Command line section", len(commands))
	}
	env := newRealEnv(t)
	g, data := env.g, env.g.DataDir
	env.runtime(t, "runc")
	images, err := openImages(g)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.OpenBolt(filepath.Join(data, store.FileName), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	// The server as serve wires it, with runc as the default runtime.
	cp, err := controlplane.New(context.Background(), controlplane.Config{
		OpenRuntime: func(name string) (sandbox.Runtime, error) {
			if name == "" {
				name = "runc"
			}
			return openRuntime(g, name)
		},
		Images: images, Store: st,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := cp.Close(ctx); err != nil {
			t.Errorf("closing the control plane: %v", err)
		}
		rt, _ := openRuntime(g, "runc")
		if infos, _ := rt.List(ctx); len(infos) > 0 {
			t.Errorf("sandboxes left: %+v", infos)
		}
	}()
	srv := httptest.NewServer(api.New(api.Config{Pools: cp, Manage: cp}))
	defer srv.Close()
	t.Setenv("SESSIOND_ENDPOINT", srv.URL)
	t.Setenv("SESSIOND_TOKEN", "")
	t.Setenv("SESSIOND_API_KEY", "")

	work := t.TempDir()
	t.Chdir(work)
	for name, content := range files {
		if err := os.WriteFile(name, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range commands {
		args, err := shellWords(c.line)
		if err != nil {
			t.Fatalf("README line %d: %v", c.lineNo, err)
		}
		var stdout, stderr bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), sandboxtest.Timeout(3*time.Minute))
		start := time.Now()
		err = run(ctx, args[1:], &stdout, &stderr)
		cancel()
		t.Logf("%s (%v)\n%s%s", c.line, time.Since(start).Round(time.Millisecond), stdout.String(), stderr.String())
		if err != nil {
			t.Fatalf("README line %d: %s: %v\n%s", c.lineNo, c.line, err, stderr.String())
		}
		if c.want != "" && !strings.Contains(stdout.String(), c.want) {
			t.Errorf("README line %d: %s: the output does not contain %q:\n%s", c.lineNo, c.line, c.want, stdout.String())
		}
	}
	if b, err := os.ReadFile("copy.csv"); err != nil || string(b) != files["data.csv"] {
		t.Errorf("the downloaded copy: %q, %v", b, err)
	}
}

// readmeCommand is one example command of the README.
type readmeCommand struct {
	line   string
	want   string
	lineNo int
}

// readmeExamples returns the files and commands of the README section that starts with
// the heading section (see TestREADMECommandLine).
func readmeExamples(t *testing.T, path, section string) (map[string]string, []readmeCommand) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	files := map[string]string{}
	var commands []readmeCommand
	in, found := false, false
	var fence, lang, file string
	var body strings.Builder
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case fence == "" && strings.HasPrefix(line, "## "):
			in = line == section
			found = found || in
		case !in:
		case fence == "" && strings.HasPrefix(line, "```"):
			fence = "```"
			info := strings.Fields(strings.TrimPrefix(line, "```"))
			lang, file = "", ""
			if len(info) > 0 {
				lang = info[0]
			}
			if len(info) > 1 {
				file = info[1]
			}
			body.Reset()
		case fence != "" && strings.HasPrefix(line, fence):
			fence = ""
			if file != "" {
				files[file] = body.String()
			}
		case fence != "" && file != "":
			body.WriteString(line + "\n")
		case fence != "" && lang == "sh":
			cmd, want, _ := strings.Cut(line, "# →")
			cmd = strings.TrimSpace(cmd)
			if strings.HasPrefix(cmd, "sessiond ") {
				commands = append(commands, readmeCommand{line: cmd, want: strings.TrimSpace(want), lineNo: n})
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if !found {
		t.Fatalf("%s has no section %q", path, section)
	}
	return files, commands
}

// shellWords splits a command line as sh would for the README's examples: words
// separated by blanks, single quotes keep everything, double quotes keep everything but
// \" and \\, and a # that starts a word starts a comment.
func shellWords(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == ' ' || c == '\t':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case c == '#' && !inWord:
			return words, nil
		case c == '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, fmt.Errorf("unterminated ' in %q", s)
			}
			cur.WriteString(s[i+1 : i+1+j])
			i += j + 1
			inWord = true
		case c == '"':
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) && (s[i+1] == '"' || s[i+1] == '\\') {
					i++
				}
				cur.WriteByte(s[i])
			}
			if i >= len(s) {
				return nil, fmt.Errorf("unterminated \" in %q", s)
			}
			inWord = true
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

func TestShellWords(t *testing.T) {
	for in, want := range map[string]string{
		`sessiond exec -pool p 'x = 1; print("a b")'`: `sessiond|exec|-pool|p|x = 1; print("a b")`,
		`a "b \" c" d#e # comment`:                    `a|b " c|d#e`,
		`a''b "" c`:                                   `ab||c`,
	} {
		got, err := shellWords(in)
		if err != nil || strings.Join(got, "|") != want {
			t.Errorf("shellWords(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{`a 'b`, `a "b`} {
		if _, err := shellWords(bad); err == nil {
			t.Errorf("shellWords(%q) succeeded", bad)
		}
	}
}
