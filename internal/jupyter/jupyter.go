// Package jupyter is a client for the Jupyter messaging protocol (version 5.3) over
// ZeroMQ, as spoken by ipykernel: connection files, message signing and verification,
// framing, and the shell, iopub, control and heartbeat channels. The agent uses it to
// drive the kernel it supervises; it knows nothing of sandboxes or of Azure's result
// rules.
//
// Everything read from a kernel is untrusted: the kernel runs user code, which can write
// anything to the kernel's sockets. Frames and messages are bounded while they are read
// (a peer that announces a huge frame costs at most the bound), every message's HMAC is
// verified before it is parsed, its JSON is validated, and malformed input yields errors
// or dropped messages, never a panic.
//
// ZeroMQ comes from github.com/go-zeromq/zmq4, used for the connection handshake and for
// sending. Receiving is done here, by a bounded frame reader: zmq4's reader allocates
// whatever length a peer announces, which would let a kernel crash the agent.
//
// Imported by internal/agent and by tests (jupytertest holds a fake kernel). It imports
// only the standard library and zmq4.
package jupyter

import "encoding/json"

// ProtocolVersion is the messaging protocol version the client speaks.
const ProtocolVersion = "5.3"

// delimiter separates the routing identities from the signed message.
const delimiter = "<IDS|MSG>"

// Bounds on what is read from a kernel.
const (
	// DefaultMaxContent caps the content frame of one message when Options sets none: a
	// little more than the largest rich output the agent keeps (agentapi.MaxDisplayBytes).
	// A longer content frame is still verified but only its first bytes are kept (see
	// Message.Truncated).
	DefaultMaxContent = 32<<20 + 64<<10
	// maxSmallFrame caps the header, parent header, metadata and signature frames; a
	// message with a longer one is dropped.
	maxSmallFrame = 64 << 10
	// maxIdentity and maxIdentities cap the routing identities before the delimiter.
	maxIdentity   = 255
	maxIdentities = 16
	// maxFrames caps the frames of one message; buffers beyond the content are read and
	// discarded, and a message with more frames is dropped.
	maxFrames = 64
	// maxHandshakeFrame caps each frame of the ZMTP handshake (READY carries a few short
	// properties).
	maxHandshakeFrame = 4096
)

// Header is a message header (and, as a message's parent header, the header of the
// request it answers).
type Header struct {
	MsgID    string `json:"msg_id"`
	Session  string `json:"session"`
	Username string `json:"username"`
	Date     string `json:"date"`
	MsgType  string `json:"msg_type"`
	Version  string `json:"version"`
}

// Message is one verified Jupyter message.
type Message struct {
	// Identities are the ZeroMQ routing identities before the delimiter (empty on the
	// client's side of shell and control).
	Identities [][]byte
	Header     Header
	// Parent is the parent header; zero for messages that answer nothing.
	Parent   Header
	Metadata json.RawMessage
	// Content is the message content, a JSON object, unless Truncated.
	Content json.RawMessage
	// Truncated is set when the content frame was longer than the client's bound: the
	// message was verified over all of it, but Content holds only its first bytes and is
	// not valid JSON. ParseStream still recovers a stream message's leading text.
	Truncated bool
}

// KernelInfo is the content of a kernel_info_reply (the fields the agent uses).
type KernelInfo struct {
	Status                string `json:"status"`
	ProtocolVersion       string `json:"protocol_version"`
	Implementation        string `json:"implementation"`
	ImplementationVersion string `json:"implementation_version"`
	LanguageInfo          struct {
		Name          string `json:"name"`
		Version       string `json:"version"`
		FileExtension string `json:"file_extension,omitempty"`
	} `json:"language_info"`
	Banner string `json:"banner"`
}

// ExecuteRequest is the content of an execute_request.
type ExecuteRequest struct {
	Code         string `json:"code"`
	Silent       bool   `json:"silent"`
	StoreHistory bool   `json:"store_history"`
	// UserExpressions are evaluated in the user namespace after the code ran (if it
	// succeeded); their results come back in ExecuteReply.UserExpressions.
	UserExpressions map[string]string `json:"user_expressions"`
	AllowStdin      bool              `json:"allow_stdin"`
	// StopOnError makes the kernel abort requests queued behind a failing one. The agent
	// runs one request at a time and leaves it false.
	StopOnError bool `json:"stop_on_error"`
}

// ExecuteReply is the content of an execute_reply.
type ExecuteReply struct {
	// Status is "ok", "error" or "aborted".
	Status          string                    `json:"status"`
	ExecutionCount  int                       `json:"execution_count"`
	EName           string                    `json:"ename,omitempty"`
	EValue          string                    `json:"evalue,omitempty"`
	Traceback       []string                  `json:"traceback,omitempty"`
	UserExpressions map[string]UserExpression `json:"user_expressions,omitempty"`
}

// UserExpression is the result of one user expression: a MIME bundle when Status is
// "ok", the exception otherwise.
type UserExpression struct {
	Status string                     `json:"status"`
	Data   map[string]json.RawMessage `json:"data,omitempty"`
	EName  string                     `json:"ename,omitempty"`
	EValue string                     `json:"evalue,omitempty"`
}

// Stream is the content of a stream message.
type Stream struct {
	Name string `json:"name"` // "stdout" or "stderr"
	Text string `json:"text"`
}

// DisplayData is the content of display_data, update_display_data and execute_result.
type DisplayData struct {
	Data           map[string]json.RawMessage `json:"data"`
	Metadata       map[string]json.RawMessage `json:"metadata,omitempty"`
	ExecutionCount int                        `json:"execution_count,omitempty"`
}

// Error is the content of an error message.
type Error struct {
	EName     string   `json:"ename"`
	EValue    string   `json:"evalue"`
	Traceback []string `json:"traceback"`
}

// Status is the content of a status message.
type Status struct {
	ExecutionState string `json:"execution_state"` // "busy", "idle" or "starting"
}
