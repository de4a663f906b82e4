// Package agentapi is the versioned wire contract between the control plane and
// sessiond-agent, the init process inside every sandbox: paths, request and response types,
// limits both sides agree on, and the host-side Client.
//
// The agent serves HTTP/1.1 on a unix socket that the runtime places in the sandbox's host
// directory. Everything a Client reads comes from inside a sandbox and is untrusted: the
// Client bounds every body it reads and validates what it decodes.
//
// Imported by the agent (internal/agent) and by the control plane; it imports only errkind.
package agentapi

import "time"

// Version is the agent API version; paths are prefixed with "/v1".
const Version = "v1"

// SocketName is the agent's socket file name inside the socket directory, and
// SocketDir is where the runtime mounts that directory inside the sandbox.
const (
	SocketName = "agent.sock"
	SocketDir  = "/run/sessiond"
	// AgentPath is where the runtime bind-mounts the agent binary (read-only) in the sandbox.
	AgentPath = "/.sessiond/agent"
	// KernelPreloadPath is where the runtime bind-mounts the kernel preload library
	// (read-only) in code-interpreter sandboxes; KernelPreloadName is its file name beside
	// the agent binary on the host.
	KernelPreloadPath = "/.sessiond/kernel-preload.so"
	KernelPreloadName = "sessiond-kernel-preload.so"
	// DataDir is the per-session working directory that the files API serves.
	DataDir = "/mnt/data"
)

// Paths of the agent API.
const (
	PathHealth       = "/v1/health"
	PathExec         = "/v1/exec"
	PathFiles        = "/v1/files"         // GET list, DELETE remove; ?path=&recursive=
	PathFilesContent = "/v1/files/content" // GET download, PUT upload; ?path=
	PathFilesMkdir   = "/v1/files/mkdir"   // POST; ?path=
	PathLogs         = "/v1/logs"          // GET; ?tail=bytes
)

// Limits the agent enforces and the Client relies on.
const (
	// DefaultOutputLimit caps each of stdout and stderr of one exec when the request sets none.
	DefaultOutputLimit = 1 << 20
	// MaxOutputLimit is the largest per-stream cap a request may ask for.
	MaxOutputLimit = 16 << 20
	// MaxStdin caps the stdin bytes of one exec request.
	MaxStdin = 16 << 20
	// MaxExecRequest caps the JSON body of an exec request.
	MaxExecRequest = MaxStdin*2 + 1<<20
	// MaxSmallResponse caps any other JSON response (health, listings, errors).
	MaxSmallResponse = 8 << 20
	// MaxListEntries caps the entries of one file listing.
	MaxListEntries = 10000
	// MaxUpload caps one uploaded file (Azure's limit is 128 MB).
	MaxUpload = 128 << 20
	// LogBufferSize is how many bytes of the main process's console output the agent keeps.
	LogBufferSize = 1 << 20
	// DefaultExecTimeout applies when a request sets no timeout; MaxExecTimeout caps any.
	DefaultExecTimeout = 120 * time.Second
	MaxExecTimeout     = time.Hour
)

// UserUID and UserGID are the unprivileged identity user code runs as inside a sandbox.
const (
	UserUID = 1000
	UserGID = 1000
)

// Health is the body of GET /v1/health.
type Health struct {
	Version  string `json:"version"`  // agent API version, "v1"
	PID      int    `json:"pid"`      // the agent's pid inside the sandbox (1 when it is init)
	UptimeMS int64  `json:"uptimeMs"` // since the agent started
	// Main describes the supervised main process, if the sandbox has one.
	Main *ProcessState `json:"main,omitempty"`
}

// ProcessState describes a supervised process.
type ProcessState struct {
	PID      int    `json:"pid"`
	Running  bool   `json:"running"`
	ExitCode *int   `json:"exitCode,omitempty"`
	Signal   string `json:"signal,omitempty"`
}

// ExecRequest is the body of POST /v1/exec. Exactly one of Argv and Shell is set.
type ExecRequest struct {
	// Argv is run directly; Argv[0] is looked up in PATH.
	Argv []string `json:"argv,omitempty"`
	// Shell is run as /bin/sh -c Shell (bash if UseBash).
	Shell   string `json:"shell,omitempty"`
	UseBash bool   `json:"useBash,omitempty"`
	// Stdin is written to the process's standard input, which is then closed.
	Stdin string `json:"stdin,omitempty"`
	// Env entries (KEY=VALUE) are added to the default environment.
	Env []string `json:"env,omitempty"`
	// Cwd defaults to DataDir.
	Cwd string `json:"cwd,omitempty"`
	// TimeoutMS bounds the run; on expiry the whole process group is killed.
	// 0 means DefaultExecTimeout; it is capped at MaxExecTimeout.
	TimeoutMS int64 `json:"timeoutMs,omitempty"`
	// OutputLimit caps each of stdout and stderr in bytes; 0 means DefaultOutputLimit.
	OutputLimit int `json:"outputLimit,omitempty"`
	// AsRoot runs the command as the sandbox's root instead of the unprivileged user.
	// Only the control plane sets it (for set-up steps); user code never runs as root.
	AsRoot bool `json:"asRoot,omitempty"`
}

// ExecResult is the response to POST /v1/exec (HTTP 200 whenever the process was started).
// Output that is not valid UTF-8 has its invalid bytes replaced with U+FFFD.
type ExecResult struct {
	// ExitCode is the process's exit status, or -1 when it was killed by a signal.
	ExitCode int `json:"exitCode"`
	// Signal names the signal that killed it ("SIGKILL"), if any.
	Signal          string `json:"signal,omitempty"`
	Stdout          string `json:"stdout"`
	Stderr          string `json:"stderr"`
	StdoutTruncated bool   `json:"stdoutTruncated,omitempty"`
	StderrTruncated bool   `json:"stderrTruncated,omitempty"`
	// TimedOut is true when the timeout expired and the process group was killed.
	TimedOut   bool  `json:"timedOut,omitempty"`
	DurationMS int64 `json:"durationMs"`
}

// FileInfo describes one entry under DataDir. Path is relative to DataDir, slash-separated.
type FileInfo struct {
	Name    string    `json:"name"`
	Path    string    `json:"path"`
	Size    int64     `json:"size"`
	IsDir   bool      `json:"isDir,omitempty"`
	Mode    uint32    `json:"mode"`
	ModTime time.Time `json:"modTime"`
}

// FileList is the body of GET /v1/files.
type FileList struct {
	Files     []FileInfo `json:"files"`
	Truncated bool       `json:"truncated,omitempty"` // more than MaxListEntries entries
}

// Error is the body of every non-2xx agent response. Kind is an errkind name.
type Error struct {
	Kind    string `json:"kind"`
	Message string `json:"message"`
}

// ErrorBody wraps Error on the wire: {"error":{...}}.
type ErrorBody struct {
	Error Error `json:"error"`
}
