package pool

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

var rewrite = flag.Bool("rewrite", false, "rewrite the expected output of testdata/*.txt scripts")

// TestScripts runs the scripts in testdata/*.txt against the pure core (through sim).
// Each block is a command, a line "----", and the expected output, up to a blank line.
// With -rewrite the expected output is replaced by what the core does now: commit the
// diff only if you understand it.
//
// Commands:
//
//	pool max=N ready=N [cooldown=D] [maxalive=D] [lifecycle=L] [create=N] [destroy=N] [probe=N] [health=D]
//	update [max=N] [ready=N] [cooldown=D] [maxalive=D] [lifecycle=L] [template]
//	acquire ID | get ID | release ID | withdraw ID | delete ID
//	created SB [fail] | destroyed SB [fail] | probed SB [fail]
//	advance D | close | state
func TestScripts(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.txt")
	if len(files) == 0 {
		t.Fatal("no scripts in testdata")
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".txt"), func(t *testing.T) { runScript(t, file) })
	}
}

type scriptBlock struct {
	pre  []string // comments and blank lines before the command
	cmd  string
	want []string
	line int
}

func parseScript(t *testing.T, file string) []scriptBlock {
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var blocks []scriptBlock
	var cur scriptBlock
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		n++
		l := sc.Text()
		switch {
		case cur.cmd == "" && (l == "" || strings.HasPrefix(l, "#")):
			cur.pre = append(cur.pre, l)
		case cur.cmd == "":
			cur.cmd, cur.line = l, n
			if !sc.Scan() || sc.Text() != "----" {
				t.Fatalf("%s:%d: want ---- after the command", file, n)
			}
			n++
			for sc.Scan() {
				n++
				if sc.Text() == "" {
					break
				}
				cur.want = append(cur.want, sc.Text())
			}
			blocks = append(blocks, cur)
			cur = scriptBlock{}
		}
	}
	if cur.pre != nil {
		blocks = append(blocks, scriptBlock{pre: cur.pre})
	}
	return blocks
}

func runScript(t *testing.T, file string) {
	blocks := parseScript(t, file)
	var s *sim
	var out strings.Builder
	failed := false
	for i, b := range blocks {
		for _, l := range b.pre {
			out.WriteString(l + "\n")
		}
		if b.cmd == "" {
			continue
		}
		got, err := runCommand(&s, b.cmd)
		if err != nil {
			got = append(got, "error: "+err.Error())
		}
		if s != nil {
			if err := s.check(); err != nil {
				got = append(got, "INVARIANT: "+err.Error())
			}
		}
		if len(got) == 0 {
			got = []string{"ok"}
		}
		fmt.Fprintf(&out, "%s\n----\n%s\n", b.cmd, strings.Join(got, "\n"))
		if i < len(blocks)-1 {
			out.WriteString("\n")
		}
		if !*rewrite && strings.Join(got, "\n") != strings.Join(b.want, "\n") {
			failed = true
			t.Errorf("%s:%d: %s\ngot:\n%s\nwant:\n%s", file, b.line, b.cmd, strings.Join(got, "\n"), strings.Join(b.want, "\n"))
		}
	}
	if *rewrite {
		if err := os.WriteFile(file, []byte(out.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	} else if failed {
		t.Log("run with -rewrite to accept the new output")
	}
}

func runCommand(sp **sim, line string) ([]string, error) {
	f := strings.Fields(line)
	cmd, args := f[0], f[1:]
	arg := func(i int) string {
		if i < len(args) {
			return args[i]
		}
		return ""
	}
	if cmd == "pool" || cmd == "update" {
		p := policy{Spec: Spec{Name: "script", LifecycleType: LifecycleTimed, CooldownPeriod: time.Minute},
			CreateParallelism: 2, DestroyParallelism: 2, ProbeParallelism: 2,
			ProbeRetry: time.Second, DeadAfter: 2, SurplusGrace: 30 * time.Second}
		template := false
		if cmd == "update" {
			if *sp == nil {
				return nil, errors.New("no pool yet")
			}
			p = (*sp).pol
		}
		for _, kv := range args {
			if kv == "template" && cmd == "update" {
				template = true
				continue
			}
			k, v, _ := strings.Cut(kv, "=")
			n, _ := strconv.Atoi(v)
			d, _ := time.ParseDuration(v)
			switch k {
			case "max":
				p.Spec.MaxConcurrentSessions = n
			case "ready":
				p.Spec.ReadySessionInstances = n
			case "cooldown":
				p.Spec.CooldownPeriod = d
			case "maxalive":
				p.Spec.MaxAlivePeriod = d
			case "lifecycle":
				p.Spec.LifecycleType = v
				if v == LifecycleOnContainerExit {
					p.Spec.CooldownPeriod = 0
				}
			case "create":
				p.CreateParallelism = n
			case "destroy":
				p.DestroyParallelism = n
			case "probe":
				p.ProbeParallelism = n
			case "health":
				p.HealthInterval = d
			default:
				return nil, fmt.Errorf("unknown pool argument %q", kv)
			}
		}
		if cmd == "update" {
			err := (*sp).update(p, template)
			return (*sp).take(), err
		}
		*sp = newSim(p)
		err := (*sp).step()
		return (*sp).take(), err
	}
	s := *sp
	if s == nil {
		return nil, errors.New("no pool yet")
	}
	var fail error
	if arg(1) == "fail" {
		fail = errors.New("injected failure")
	}
	var err error
	switch cmd {
	case "acquire":
		err = s.acquire(arg(0), true)
	case "get":
		err = s.acquire(arg(0), false)
	case "release":
		err = s.release(arg(0))
	case "withdraw":
		err = s.withdraw(arg(0))
	case "delete":
		err = s.remove(arg(0))
	case "created":
		err = s.complete(actCreate, arg(0), fail)
	case "destroyed":
		err = s.complete(actDestroy, arg(0), fail)
	case "probed":
		err = s.complete(actProbe, arg(0), fail)
	case "advance":
		d, perr := time.ParseDuration(arg(0))
		if perr != nil {
			return nil, perr
		}
		err = s.advance(d)
	case "close":
		err = s.close()
	case "state":
		c := s.st.counts()
		line := fmt.Sprintf("t=%s ready=%d pending=%d allocated=%d deleting=%d waiting=%d failures=%d", s.rel(s.now), c.Ready, c.Pending, c.Allocated, c.Deleting, c.Waiting, c.CreateFailures)
		if s.st.gen > 0 {
			line += fmt.Sprintf(" generation=%d outdated=%d", s.st.gen, c.Outdated)
		}
		s.printf("%s", line)
		for _, b := range s.st.boxes {
			l := fmt.Sprintf("  %s %s", b.ID, b.State)
			if b.Generation > 0 {
				l += fmt.Sprintf(" gen=%d", b.Generation)
			}
			if b.Identifier != "" {
				l += fmt.Sprintf(" %s leases=%d", b.Identifier, b.Leases)
			}
			s.printf("%s", l)
		}
	default:
		return nil, fmt.Errorf("unknown command %q", cmd)
	}
	return s.take(), err
}
