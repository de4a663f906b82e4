package api

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/pool"
)

// Executions (azure-api.md §3.2.1–§3.2.4): POST executions and GET executions/{id}, and
// the execution logic the legacy code/execute shares (codeexecute.go). Code runs in the
// session's Jupyter kernel through the agent; on Shell pools commands run through the
// agent's exec. A failed execution (exception, timeout, out of memory) is HTTP 200 with a
// failed status and the message in stderr; only failures to run at all are errors.

const (
	// defaultTimeoutSeconds applies when a request sets no timeoutInSeconds (BYOC's default;
	// LangChain, LlamaIndex and others never send one).
	defaultTimeoutSeconds = 120
	// defaultStreamLimit is outputStreamsMaxLength's default from 2025-10-02-preview, the
	// version that introduced the field (§3.2.1). Older api-versions get the agent's own cap
	// (agentapi.DefaultStreamLimit): truncating their output at 4096 would change what
	// clients written against them saw.
	defaultStreamLimit = 4096
	streamLimitVersion = "2025-10-02"
	// asyncAcceptedBeforeVersion: before it, an asynchronous POST executions answers 202
	// Accepted (the 2024-10-02-preview swagger's LRO); from it, 200 (the 2025-10-02-preview
	// swagger and the live service). Synchronous executions always answer 200.
	asyncAcceptedBeforeVersion = "2025-10-02"
	// executeGrace is added to an execution's timeout to bound the agent call: the agent
	// times the execution out itself (interrupting, then restarting the kernel), so only an
	// agent that stopped answering reaches this deadline (504).
	executeGrace = time.Minute
	// maxExecutionID bounds operation-id and execution IDs (the agent's rule).
	maxExecutionID = 128
	// Shell exit statuses for a command that did not exit on its own, as bash reports them.
	exitTimedOut = 124 // GNU timeout's status
	exitNotFound = 127
)

// Execution types and states as the wire spells them.
const (
	executionSynchronous  = "Synchronous"
	executionAsynchronous = "Asynchronous"
	legacySuccess         = "Success"
	legacyFailure         = "Failure"
)

// execRequest is a validated execution request of either generation.
type execRequest struct {
	id            string
	executionType string
	async         bool
	code          string
	timeout       int // seconds
	streamLimit   int // bytes per stream; 0: the agent's default
	emptyKernel   bool
	jupyterFormat bool
	// Shell pools: exactly one of shell and argv.
	shell string
	argv  []string
	stdin string
}

// parseExecRequest validates an execution body for the call's pool. legacy selects
// code/execute's rules (always synchronous; the server's stream cap).
func parseExecRequest(f fields, r *http.Request, c *call, legacy bool) (execRequest, error) {
	var x execRequest
	cit, _, err := f.str("codeInputType")
	if err != nil {
		return x, err
	}
	codeInputType, err := parseEnum("codeInputType", cit, "Inline", "InlineBase64", "InlineText")
	if err != nil {
		return x, err
	}
	et, _, err := f.str("executionType")
	if err != nil {
		return x, err
	}
	if x.executionType, err = parseEnum("executionType", et, executionSynchronous, executionAsynchronous); err != nil {
		return x, err
	}
	if x.executionType == "" {
		x.executionType = executionSynchronous
	}
	// code/execute has no way to poll an execution: it always answers with the result.
	x.async = x.executionType == executionAsynchronous && !legacy

	code, hasCode, err := f.str("code")
	if err != nil {
		return x, err
	}
	if !hasCode {
		// The pre-GA API and Semantic Kernel .NET send pythonCode.
		if code, hasCode, err = f.str("pythonCode"); err != nil {
			return x, err
		}
	}
	if hasCode && codeInputType == "InlineBase64" {
		b, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(code), ""))
		if err != nil {
			return x, errInvalid("code", "The code is not valid base64, as codeInputType InlineBase64 requires.")
		}
		code = string(b)
	}
	if len(code) > agentapi.MaxCodeBytes {
		return x, errInvalid("code", "The code is %d bytes long, above the limit of %d.", len(code), agentapi.MaxCodeBytes)
	}
	x.code = code

	if x.timeout, err = timeoutSeconds(f, c.spec); err != nil {
		return x, err
	}
	if x.streamLimit, err = streamLimit(f, c.apiVersion, legacy); err != nil {
		return x, err
	}
	if x.emptyKernel, _, err = f.bool("useEmptyKernel"); err != nil {
		return x, err
	}
	jf, ok, err := f.bool("returnJupyterFormatExecutionResult")
	if err != nil {
		return x, err
	}
	if !ok {
		// One of Microsoft's own examples misspells it.
		if jf, _, err = f.bool("returnJupyterFormat"); err != nil {
			return x, err
		}
	}
	x.jupyterFormat = jf
	if x.id, err = executionID(r); err != nil {
		return x, err
	}

	shell, hasShell, err := f.str("shellCommand")
	if err != nil {
		return x, err
	}
	argv, hasArgv, err := f.strings("execCommandAndArgs")
	if err != nil {
		return x, err
	}
	stdin, hasStdin, err := f.str("stdin")
	if err != nil {
		return x, err
	}
	if c.spec.ContainerType != pool.Shell {
		for _, sf := range []struct {
			name string
			set  bool
		}{{"shellCommand", hasShell}, {"execCommandAndArgs", hasArgv}, {"stdin", hasStdin}} {
			if sf.set {
				return x, errNotSupported(sf.name, "The field %s is supported on Shell session pools only; pool '%s' is a %s pool.", sf.name, c.poolName, containerType(c.spec))
			}
		}
		if !hasCode {
			return x, errInvalid("code", "The field code is required.")
		}
		return x, nil
	}

	// Shell pools (§3.2.3): codeInputType and executionType are accepted and ignored, as
	// the Learn tutorial sends them; code stands in for shellCommand.
	if x.async {
		return x, errNotSupported("executionType", "Shell session pools run commands synchronously only.")
	}
	if !hasShell && !hasArgv && hasCode {
		shell, hasShell = code, true
	}
	switch {
	case hasShell && hasArgv:
		return x, errInvalid("execCommandAndArgs", "Set either shellCommand or execCommandAndArgs, not both.")
	case hasArgv && (len(argv) == 0 || argv[0] == ""):
		return x, errInvalid("execCommandAndArgs", "The field execCommandAndArgs needs at least the command to run.")
	case !hasShell && !hasArgv:
		return x, errInvalid("shellCommand", "The field shellCommand (or execCommandAndArgs) is required.")
	case hasShell && shell == "":
		return x, errInvalid("shellCommand", "The field shellCommand is empty.")
	case len(stdin) > agentapi.MaxStdin:
		return x, errInvalid("stdin", "The stdin is %d bytes long, above the limit of %d.", len(stdin), agentapi.MaxStdin)
	case strings.IndexByte(shell, 0) >= 0:
		return x, errInvalid("shellCommand", "The shellCommand contains a NUL character.")
	}
	for i, a := range argv {
		if strings.IndexByte(a, 0) >= 0 {
			return x, errInvalid("execCommandAndArgs", "The argument %d of execCommandAndArgs contains a NUL character.", i)
		}
	}
	x.shell, x.argv, x.stdin = shell, argv, stdin
	return x, nil
}

// timeoutSeconds reads timeoutInSeconds: default defaultTimeoutSeconds, capped at the
// pool's execution timeout cap (Azure's hard limit is 220 s; larger values are cut, not
// refused, since the swagger allows them).
func timeoutSeconds(f fields, spec pool.Spec) (int, error) {
	capSeconds := int64(spec.ExecutionTimeoutCap / time.Second)
	if capSeconds <= 0 {
		capSeconds = int64(pool.DefaultExecutionTimeoutCap / time.Second)
	}
	t, ok, err := f.int("timeoutInSeconds")
	switch {
	case err != nil:
		return 0, err
	case ok && t < 0:
		return 0, errInvalid("timeoutInSeconds", "The field timeoutInSeconds must not be negative; got %d.", t)
	case !ok || t == 0:
		t = defaultTimeoutSeconds
	}
	return int(min(t, capSeconds)), nil
}

// streamLimit reads outputStreamsMaxLength (§3.2.1, §13.10), capped at the agent's limit.
func streamLimit(f fields, apiVersion string, legacy bool) (int, error) {
	n, ok, err := f.int("outputStreamsMaxLength")
	switch {
	case err != nil:
		return 0, err
	case ok && n <= 0:
		return 0, errInvalid("outputStreamsMaxLength", "The field outputStreamsMaxLength must be positive; got %d.", n)
	case ok:
		return int(min(n, agentapi.MaxStreamLimit)), nil
	case !legacy && versionAtLeast(apiVersion, streamLimitVersion):
		return defaultStreamLimit, nil
	}
	return 0, nil
}

// executionID returns the request's operation-id header, validated, or a new UUID.
func executionID(r *http.Request) (string, error) {
	id := strings.TrimSpace(r.Header.Get("operation-id"))
	if id == "" {
		return newUUID(), nil
	}
	if !validExecutionID(id) {
		return "", errInvalid("operation-id", "The operation-id header must be 1 to %d characters of letters, digits, '.', '_' and '-'.", maxExecutionID)
	}
	return id, nil
}

func validExecutionID(id string) bool {
	if len(id) == 0 || len(id) > maxExecutionID {
		return false
	}
	for _, c := range []byte(id) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// newUUID returns a random (version 4) UUID.
func newUUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

func containerType(spec pool.Spec) pool.ContainerType {
	if spec.ContainerType == "" {
		return pool.PythonLTS
	}
	return spec.ContainerType
}

// outcome is an execution's result in the terms both generations render.
type outcome struct {
	id string
	// status is an agentapi execution status, or on Shell pools the exit status.
	status     string
	shell      bool
	stdout     string
	stderr     string
	result     json.RawMessage // the last expression's value; nil while running and on Shell pools
	durationMS int64
	failure    *agentapi.ExecutionError
}

// execute runs x in the leased session.
func execute(ctx context.Context, lease *pool.Lease, spec pool.Spec, x execRequest) (outcome, error) {
	if spec.ContainerType == pool.Shell {
		return executeShell(ctx, lease.Agent, x)
	}
	if !x.async {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(x.timeout)*time.Second+executeGrace)
		defer cancel()
	}
	exe, err := lease.Agent.Execute(ctx, agentapi.ExecuteRequest{
		ID:             x.id,
		Code:           x.code,
		TimeoutSeconds: x.timeout,
		StreamLimit:    x.streamLimit,
		Async:          x.async,
		JupyterFormat:  x.jupyterFormat,
		EmptyKernel:    x.emptyKernel,
	})
	if err != nil {
		return outcome{}, fmt.Errorf("executing code: %w", err)
	}
	return kernelOutcome(exe, x.streamLimit), nil
}

// kernelOutcome converts a kernel execution. The agent puts a failed execution's
// traceback, timeout or abort message in stderr, where Azure has it (§3.2.4); should it
// not have, the error is written there.
func kernelOutcome(exe agentapi.Execution, limit int) outcome {
	o := outcome{id: exe.ID, status: exe.Status, stdout: exe.Stdout, stderr: exe.Stderr,
		result: exe.Result, durationMS: exe.DurationMS, failure: exe.Error}
	if exe.Status == agentapi.StatusRunning {
		o.result = nil
		return o
	}
	if e := exe.Error; e != nil && o.stderr == "" {
		text := strings.Join(e.Traceback, "\n")
		if text == "" {
			text = e.Value
			if e.Name != "" && e.Name != e.Value {
				text = e.Name + ": " + e.Value
			}
		}
		o.stderr = truncate(text, limit)
	}
	if len(o.result) == 0 {
		o.result = json.RawMessage(`""`)
	}
	return o
}

// executeShell runs a Shell pool's command (§3.2.3): shellCommand through bash -c, or
// execCommandAndArgs directly, in /mnt/data. The status is the exit status; a timeout is
// status 124 with Azure's timeout message in stderr, a command that cannot be found 127.
func executeShell(ctx context.Context, agent *agentapi.Client, x execRequest) (outcome, error) {
	req := agentapi.ExecRequest{Stdin: x.stdin, TimeoutMS: int64(x.timeout) * 1000, OutputLimit: x.streamLimit}
	if x.argv != nil {
		req.Argv = x.argv
	} else {
		req.Shell, req.UseBash = x.shell, true
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(x.timeout)*time.Second+executeGrace)
	defer cancel()
	res, err := agent.Exec(ctx, req)
	if err != nil {
		if x.argv != nil && errkind.Is(err, errkind.NotFound) {
			msg, _ := errkind.PublicMessage(err)
			return outcome{id: x.id, shell: true, status: strconv.Itoa(exitNotFound), stderr: appendLine("", msg)}, nil
		}
		return outcome{}, fmt.Errorf("running shell command: %w", err)
	}
	o := outcome{id: x.id, shell: true, stdout: res.Stdout, stderr: res.Stderr, durationMS: res.DurationMS}
	switch {
	case res.TimedOut:
		o.status = strconv.Itoa(exitTimedOut)
		o.stderr = appendLine(o.stderr, agentapi.TimeoutMessage)
	case res.ExitCode >= 0:
		o.status = strconv.Itoa(res.ExitCode)
	case signalNumbers[res.Signal] > 0:
		o.status = strconv.Itoa(128 + signalNumbers[res.Signal])
	default:
		o.status = strconv.Itoa(res.ExitCode)
	}
	return o, nil
}

// signalNumbers are Linux's numbers of the signals that commonly end a process, for the
// 128+n exit status bash reports.
var signalNumbers = map[string]int{
	"SIGHUP": 1, "SIGINT": 2, "SIGQUIT": 3, "SIGILL": 4, "SIGTRAP": 5, "SIGABRT": 6, "SIGBUS": 7,
	"SIGFPE": 8, "SIGKILL": 9, "SIGUSR1": 10, "SIGSEGV": 11, "SIGUSR2": 12, "SIGPIPE": 13,
	"SIGALRM": 14, "SIGTERM": 15, "SIGXCPU": 24, "SIGXFSZ": 25,
}

func appendLine(s, line string) string {
	if s != "" && !strings.HasSuffix(s, "\n") {
		s += "\n"
	}
	return s + line + "\n"
}

// truncate cuts s to at most n bytes (n > 0), at a character boundary.
func truncate(s string, n int) string {
	if n <= 0 || len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// executionResource is the new API's execution (§3.2.2).
type executionResource struct {
	ID            string           `json:"id"`
	Identifier    string           `json:"identifier"`
	ExecutionType string           `json:"executionType,omitempty"`
	Status        string           `json:"status"`
	Result        *executionResult `json:"result,omitempty"`
	Error         *errorBody       `json:"error,omitempty"`
}

type executionResult struct {
	Stdout string `json:"stdout"`
	Stderr string `json:"stderr"`
	// ExecutionResult is absent on Shell pools.
	ExecutionResult             json.RawMessage `json:"executionResult,omitempty"`
	ExecutionTimeInMilliseconds int64           `json:"executionTimeInMilliseconds"`
}

// resource renders o for the new API. executionType is "" where unknown (GET).
func (o outcome) resource(identifier, executionType string) executionResource {
	res := executionResource{ID: o.id, Identifier: identifier, Status: o.status}
	if !o.shell {
		res.ExecutionType = executionType
	}
	if o.status != agentapi.StatusRunning {
		res.Result = &executionResult{Stdout: o.stdout, Stderr: o.stderr, ExecutionResult: o.result,
			ExecutionTimeInMilliseconds: o.durationMS}
	}
	if o.failure != nil {
		msg := o.failure.Value
		if o.failure.Name != "" {
			msg = o.failure.Name + ": " + o.failure.Value
		}
		res.Error = &errorBody{Error: errorDetail{Code: "CodeExecutionFailed", Message: msg}}
	}
	return res
}

// execute serves POST executions.
func (s *Server) execute(w http.ResponseWriter, r *http.Request) error {
	c := callOf(r)
	o, x, err := s.runExecution(r, c, false)
	if err != nil {
		return err
	}
	h := w.Header()
	h.Set("operation-id", o.id)
	h.Set("Operation-Location", endpointPath(r, c)+"/executions/"+url.PathEscape(o.id)+
		"?api-version="+url.QueryEscape(c.apiVersion)+"&identifier="+url.QueryEscape(c.identifier))
	status := http.StatusOK
	if o.status == agentapi.StatusRunning && !versionAtLeast(c.apiVersion, asyncAcceptedBeforeVersion) {
		status = http.StatusAccepted // the 2024-10-02-preview swagger's LRO answer
	}
	return writeJSON(w, status, o.resource(c.identifier, x.executionType))
}

// runExecution is what both generations of execute share: it reads the request's JSON
// body, unwraps a {"properties":{...}} wrapper, parses the execution and runs it in the
// call's session, allocating one for a new identifier. The wrapper is the legacy body's
// form (§3.1.1); on the new generation live Azure refuses it (§3.2.1), and sessiond
// unwraps it unless configured to be strict.
func (s *Server) runExecution(r *http.Request, c *call, legacy bool) (outcome, execRequest, error) {
	b, err := readJSONBody(r)
	if err != nil {
		return outcome{}, execRequest{}, err
	}
	f, err := objectFields(b)
	if err != nil {
		return outcome{}, execRequest{}, err
	}
	if inner, ok := f.raw("properties"); ok {
		if !legacy && s.cfg.RejectPropertiesWrapper {
			return outcome{}, execRequest{}, errPropertiesMissing()
		}
		if f, err = objectFields(inner); err != nil {
			return outcome{}, execRequest{}, errInvalid("properties", "The field properties must be a JSON object.")
		}
	}
	x, err := parseExecRequest(f, r, c, legacy)
	if err != nil {
		return outcome{}, execRequest{}, err
	}
	lease, err := c.pool.Acquire(r.Context(), c.identifier)
	if err != nil {
		return outcome{}, execRequest{}, err
	}
	defer lease.Release()
	start := time.Now()
	o, err := execute(r.Context(), lease, c.spec, x)
	s.observeExecution(c, legacy, o, err, time.Since(start))
	return o, x, err
}

// getExecution serves GET executions/{id}: an execution's state, for polling an
// asynchronous one. It never allocates a session: an identifier with no session has no
// executions.
func (s *Server) getExecution(w http.ResponseWriter, r *http.Request) error {
	c := callOf(r)
	id := r.PathValue("id")
	if !validExecutionID(id) {
		return errInvalid("executionId", "Execution IDs are 1 to %d characters of letters, digits, '.', '_' and '-'.", maxExecutionID)
	}
	if c.spec.ContainerType == pool.Shell {
		return errNotFound("Execution '%s' was not found: Shell pools run commands synchronously and keep no executions.", id)
	}
	exe, err := s.sessionExecution(r, c.pool, c.identifier, id,
		fmt.Sprintf("Execution '%s' was not found: no session has identifier '%s'.", id, c.identifier))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, kernelOutcome(exe, 0).resource(c.identifier, ""))
}

// sessionExecution returns execution id as the agent of identifier's session in p keeps
// it, without allocating a session; noSession is the not-found message when identifier
// has none.
func (s *Server) sessionExecution(r *http.Request, p Pool, identifier, id, noSession string) (agentapi.Execution, error) {
	lease, err := p.Get(r.Context(), identifier)
	if errkind.Is(err, errkind.NotFound) {
		return agentapi.Execution{}, errNotFound("%s", noSession)
	}
	if err != nil {
		return agentapi.Execution{}, err
	}
	defer lease.Release()
	ctx, cancel := s.agentContext(r, false)
	defer cancel()
	exe, err := lease.Agent.GetExecution(ctx, id)
	if errkind.Is(err, errkind.NotFound) {
		return agentapi.Execution{}, errNotFound("Execution '%s' was not found in session '%s'.", id, identifier)
	}
	if err != nil {
		return agentapi.Execution{}, agentError(ctx, "getting execution", err)
	}
	return exe, nil
}

// endpointPath returns the pool endpoint's path of a request to a route with a literal
// path (the request path without the route's).
func endpointPath(r *http.Request, c *call) string {
	return strings.TrimSuffix(r.URL.EscapedPath(), "/"+c.route.path)
}
