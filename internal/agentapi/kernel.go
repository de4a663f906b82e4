package agentapi

import "encoding/json"

// Kernel API paths (code-interpreter sandboxes: the agent runs with -kernel).
const (
	// PathKernel: GET kernel state and info.
	PathKernel = "/v1/kernel"
	// PathKernelExecutions: POST runs code (synchronously unless Async).
	PathKernelExecutions = "/v1/kernel/executions"
	// PathKernelExecution: GET one execution by ID (PathKernelExecutions + "/" + id).
	PathKernelExecutionPrefix = "/v1/kernel/executions/"
	// PathKernelInterrupt: POST interrupts the running execution, if any.
	PathKernelInterrupt = "/v1/kernel/interrupt"
	// PathKernelRestart: POST replaces the kernel with a fresh one (state is lost).
	PathKernelRestart = "/v1/kernel/restart"
)

// Kernel limits.
const (
	// DefaultExecuteTimeout applies when an execution sets none (Azure's client default).
	DefaultExecuteTimeout = 120
	// MaxCodeBytes caps the code of one execution.
	MaxCodeBytes = 4 << 20
	// MaxExecuteQueue is how many executions may wait behind the running one.
	MaxExecuteQueue = 16
	// MaxKeptExecutions is how many finished executions the agent remembers for GET.
	MaxKeptExecutions = 256
	// DefaultStreamLimit caps stdout and stderr of one execution when it sets none;
	// MaxStreamLimit is the server-side hard cap.
	DefaultStreamLimit = 1 << 20
	MaxStreamLimit     = 16 << 20
	// MaxDisplayBytes caps all rich outputs (images, HTML, ...) of one execution together.
	MaxDisplayBytes = 32 << 20
	// MaxExecutionResponse caps what the Client reads of an execution: both streams at
	// the largest cap and the rich outputs and result, JSON-escaped (at most 6 bytes per
	// byte), plus slack.
	MaxExecutionResponse = 2*6*MaxStreamLimit + 2*6*MaxDisplayBytes + 1<<20
)

// Messages of failed executions, as Azure words them.
const (
	TimeoutMessage = "Request timed out waiting for code execution to complete"
	AbortedMessage = "Execution aborted"
)

// Execution states (Azure.Core OperationState spelling).
const (
	StatusRunning   = "Running"
	StatusSucceeded = "Succeeded"
	StatusFailed    = "Failed"
	StatusCanceled  = "Canceled"
)

// ExecuteRequest is the body of POST /v1/kernel/executions.
type ExecuteRequest struct {
	// ID names the execution (the client's operation-id); the agent generates one if empty.
	// 1–128 characters of [A-Za-z0-9._-].
	ID   string `json:"id,omitempty"`
	Code string `json:"code"`
	// TimeoutSeconds bounds the run (0: DefaultExecuteTimeout); on expiry the kernel is
	// interrupted, and restarted if it does not stop within a grace period.
	TimeoutSeconds int `json:"timeoutSeconds,omitempty"`
	// StreamLimit caps each of stdout and stderr in bytes (0: DefaultStreamLimit, at most
	// MaxStreamLimit).
	StreamLimit int `json:"streamLimit,omitempty"`
	// Async returns at once with status Running; poll PathKernelExecutionPrefix+ID.
	Async bool `json:"async,omitempty"`
	// JupyterFormat renders the result as the kernel's text/plain repr (Azure's
	// returnJupyterFormatExecutionResult) instead of converting primitives to JSON.
	JupyterFormat bool `json:"jupyterFormat,omitempty"`
	// EmptyKernel runs the code in a fresh kernel (Azure's useEmptyKernel).
	EmptyKernel bool `json:"emptyKernel,omitempty"`
	// Warmup marks the code that readies a new sandbox: once it succeeds, the kernel
	// collects garbage and moves every object that survives into the interpreter's
	// permanent generation (gc.freeze), so that the session's later collections do not
	// walk the warm-up's imports again.
	Warmup bool `json:"warmup,omitempty"`
}

// Execution is an execution's state and, once finished, its result.
type Execution struct {
	ID     string `json:"id"`
	Status string `json:"status"` // StatusRunning, StatusSucceeded, StatusFailed, StatusCanceled
	Stdout string `json:"stdout"`
	Stderr string `json:"stderr"`
	// Result is the last expression's value converted as Azure does: JSON numbers and
	// booleans, raw strings, "" for None or no value, null for NaN, the text/plain repr for
	// anything else; or an image object {"type":"image","format":"png","base64_data":...}
	// when the execution displayed an image and had no other value.
	Result          json.RawMessage `json:"result"`
	StdoutTruncated bool            `json:"stdoutTruncated,omitempty"`
	StderrTruncated bool            `json:"stderrTruncated,omitempty"`
	// Outputs are every rich output (display_data and execute_result) as MIME bundles, in
	// order, for clients that want more than Result.
	Outputs []Output `json:"outputs,omitempty"`
	// OutputsTruncated is set when rich outputs were dropped: above MaxDisplayBytes in
	// all, or one output too large to receive.
	OutputsTruncated bool `json:"outputsTruncated,omitempty"`
	// Error describes the exception of a failed execution.
	Error *ExecutionError `json:"error,omitempty"`
	// KernelRestarted is true when the kernel was replaced during or just before this
	// execution (it had died, timed out, or run out of memory): earlier state is gone.
	KernelRestarted bool  `json:"kernelRestarted,omitempty"`
	DurationMS      int64 `json:"durationMs"`
}

// Output is one rich output: a MIME bundle (mime type → data; text types as strings,
// binary types base64 as Jupyter sends them, JSON types as JSON).
type Output struct {
	Type     string                     `json:"type"` // "display_data" or "execute_result"
	Data     map[string]json.RawMessage `json:"data"`
	Metadata map[string]json.RawMessage `json:"metadata,omitempty"`
}

// ExecutionError describes a Python exception (or a timeout or abort).
type ExecutionError struct {
	Name      string   `json:"name"`
	Value     string   `json:"value"`
	Traceback []string `json:"traceback,omitempty"` // without ANSI escape codes
}

// KernelInfo is the body of GET /v1/kernel.
type KernelInfo struct {
	// State is "starting", "idle", "busy" or "dead".
	State string `json:"state"`
	// Name and Version of the kernel implementation (e.g. "ipykernel", "6.17.1").
	Name    string `json:"name"`
	Version string `json:"version"`
	// Language and LanguageVersion (e.g. "python", "3.11.2").
	Language        string `json:"language"`
	LanguageVersion string `json:"languageVersion"`
	Banner          string `json:"banner,omitempty"`
	Restarts        int    `json:"restarts"`
}
