package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sessiond/sessiond/internal/events"
)

// sessiond logs and sessiond events: clients of a running server's observability API
// (GET /v1/pools/{pool}/sessions/{identifier}/logs and GET /v1/pools/{pool}/events).

// Defaults of the client commands.
const (
	defaultServer = "http://127.0.0.1:8080"
	// clientTimeout bounds one request to the server.
	clientTimeout = 30 * time.Second
	// maxClientResponse bounds a response body the client reads: a console log is at most
	// 1 MiB of lines, JSON-escaped.
	maxClientResponse = 16 << 20
)

// Output formats of the client commands.
const (
	outputTable = "table"
	outputJSON  = "json"
)

// serverClient reaches a sessiond server's API as the client commands do.
type serverClient struct {
	base  *url.URL
	token string
	hc    *http.Client
}

// clientFlags are the flags every client command has: where the server is, the
// credential, and the output format.
type clientFlags struct {
	server, token, output *string
}

func addClientFlags(fs *flag.FlagSet) clientFlags {
	return clientFlags{
		server: fs.String("server", envOr("SESSIOND_SERVER", defaultServer), "the server's URL (env SESSIOND_SERVER)"),
		token:  fs.String("token", "", "an API key or bearer token with the Reader role (default: env SESSIOND_TOKEN)"),
		output: fs.String("output", outputTable, "output format: table or json"),
	}
}

// client validates the flags and returns a client for them.
func (f clientFlags) client() (*serverClient, error) {
	if *f.output != outputTable && *f.output != outputJSON {
		return nil, usagef("-output %q: want %s or %s", *f.output, outputTable, outputJSON)
	}
	u, err := url.Parse(*f.server)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, usagef("-server %q: want an http:// or https:// URL", *f.server)
	}
	token := *f.token
	if token == "" {
		token = envOr("SESSIOND_TOKEN", "")
	}
	return &serverClient{base: u, token: token, hc: &http.Client{Timeout: clientTimeout}}, nil
}

// get sends GET path?query and decodes the JSON response into out. A non-2xx answer
// becomes an error with the envelope's code and message.
func (c *serverClient) get(ctx context.Context, path string, query url.Values, out any) error {
	u := *c.base
	u.Path = strings.TrimSuffix(u.Path, "/") + path
	u.RawPath = ""
	u.RawQuery = query.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxClientResponse+1))
	if err != nil {
		return fmt.Errorf("reading the answer to GET %s: %w", path, err)
	}
	if len(body) > maxClientResponse {
		return fmt.Errorf("GET %s: the answer is larger than %d bytes", path, maxClientResponse)
	}
	if resp.StatusCode/100 != 2 {
		var env struct {
			Error struct{ Code, Message string }
		}
		if json.Unmarshal(body, &env) == nil && env.Error.Message != "" {
			return fmt.Errorf("GET %s: %s (%s, HTTP %d)", path, env.Error.Message, env.Error.Code, resp.StatusCode)
		}
		return fmt.Errorf("GET %s: HTTP %s", path, resp.Status)
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("decoding the answer to GET %s: %w", path, err)
	}
	return nil
}

// parseClientFlags parses args for a client command that takes no arguments.
func parseClientFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return usagef("%s: unexpected argument %q", fs.Name(), fs.Arg(0))
	}
	return nil
}

// cmdLogs prints a session's console log (--identifier), or the pool's session
// lifecycle: allocations and ends, with reasons.
func cmdLogs(ctx context.Context, g *globals, args []string) error {
	fs := flag.NewFlagSet("logs", flag.ContinueOnError)
	fs.SetOutput(g.Stderr)
	cf := addClientFlags(fs)
	poolName := fs.String("pool", "", "the pool (required)")
	identifier := fs.String("identifier", "", "the session whose console to print; without it, the pool's session lifecycle")
	tail := fs.Int("tail", 0, "print only the last N lines or events (default: 100 lines of a console, every event kept)")
	fs.Usage = func() {
		fmt.Fprintf(g.Stderr, "usage: sessiond logs -pool POOL [-identifier ID] [-tail N] [-output table|json] [-server URL] [-token T]\n")
		fs.PrintDefaults()
	}
	if err := parseClientFlags(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if *poolName == "" {
		return usagef("logs: -pool is required")
	}
	if *tail < 0 {
		return usagef("logs: -tail %d: want 1 or more", *tail)
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	if *identifier == "" {
		return printEvents(ctx, g, c, *cf.output, *poolName, events.Query{Category: events.Session, Tail: *tail})
	}
	q := url.Values{}
	if *tail > 0 {
		q.Set("tail", strconv.Itoa(*tail))
	}
	var out struct {
		Pool       string   `json:"pool"`
		Identifier string   `json:"identifier"`
		Lines      []string `json:"lines"`
		Truncated  bool     `json:"truncated"`
	}
	path := "/v1/pools/" + url.PathEscape(*poolName) + "/sessions/" + url.PathEscape(*identifier) + "/logs"
	if err := c.get(ctx, path, q, &out); err != nil {
		return err
	}
	if *cf.output == outputJSON {
		return writeIndented(g.Stdout, out)
	}
	for _, l := range out.Lines {
		fmt.Fprintln(g.Stdout, l)
	}
	return nil
}

// cmdEvents prints a pool's recent events: sessions and sandboxes.
func cmdEvents(ctx context.Context, g *globals, args []string) error {
	fs := flag.NewFlagSet("events", flag.ContinueOnError)
	fs.SetOutput(g.Stderr)
	cf := addClientFlags(fs)
	poolName := fs.String("pool", "", "the pool (required)")
	identifier := fs.String("identifier", "", "only the events of this session")
	category := fs.String("category", "", "only Session or Pool events")
	tail := fs.Int("tail", 0, "print only the last N events (default: every event kept)")
	fs.Usage = func() {
		fmt.Fprintf(g.Stderr, "usage: sessiond events -pool POOL [-identifier ID] [-category Session|Pool] [-tail N] [-output table|json] [-server URL] [-token T]\n")
		fs.PrintDefaults()
	}
	if err := parseClientFlags(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if *poolName == "" {
		return usagef("events: -pool is required")
	}
	if *tail < 0 {
		return usagef("events: -tail %d: want 1 or more", *tail)
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	return printEvents(ctx, g, c, *cf.output, *poolName,
		events.Query{Identifier: *identifier, Category: events.Category(*category), Tail: *tail})
}

// printEvents gets the pool's events that q selects and prints them.
func printEvents(ctx context.Context, g *globals, c *serverClient, output, poolName string, q events.Query) error {
	v := url.Values{}
	if q.Tail > 0 {
		v.Set("tail", strconv.Itoa(q.Tail))
	}
	if q.Category != "" {
		v.Set("category", string(q.Category))
	}
	if q.Identifier != "" {
		v.Set("identifier", q.Identifier)
	}
	var out struct {
		Value []events.Event `json:"value"`
	}
	if err := c.get(ctx, "/v1/pools/"+url.PathEscape(poolName)+"/events", v, &out); err != nil {
		return err
	}
	if output == outputJSON {
		return writeIndented(g.Stdout, out)
	}
	tw := tabwriter.NewWriter(g.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tKIND\tIDENTIFIER\tSANDBOX\tREASON\tMESSAGE")
	for _, e := range out.Value {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", e.Time.Local().Format("2006-01-02 15:04:05.000"), e.Kind,
			orDash(e.Identifier), orDash(e.SandboxID), orDash(e.Reason), oneLine(e.Message))
	}
	return tw.Flush()
}

func writeIndented(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// oneLine keeps a message on its table row.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
