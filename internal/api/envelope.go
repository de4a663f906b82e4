package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/sessiond/sessiond/internal/errkind"
)

// This file is the only place where errors become Azure error codes and HTTP statuses
// (azure-api.md §2.4). Errors arrive as errkind kinds from the layers below, or as
// *apiError from the constructors here, for the cases where the kind alone does not decide
// the code (a session-scoped management call on an unknown identifier, an oversized
// upload, a wrong method). Only public messages reach clients; an internal error is
// reported as "internal error" with the trace ID, and its text goes to the log only.

// Azure error codes.
const (
	codeValidationFailed  = "SessionRequestValidationFailed"
	codeNotSupported      = "SessionRequestNotSupported"
	codePropertiesMissing = "SessionPropertiesMissing"
	codeSessionNotFound   = "SessionWithIdentifierNotFound"
	// Azure gives no code for these statuses; these name what happened.
	codePoolNotFound     = "SessionPoolNotFound"
	codeNotFound         = "NotFound"
	codeConflict         = "Conflict"
	codeTooManyRequests  = "TooManyRequests"
	codeTooLarge         = "RequestEntityTooLarge"
	codeMethodNotAllowed = "MethodNotAllowed"
	codeMisdirected      = "MisdirectedRequest"
	codeForbidden        = "Forbidden"
	codeUnauthorized     = "Unauthorized"
	codeUnavailable      = "ServiceUnavailable"
	codeTimeout          = "GatewayTimeout"
	codeInternal         = "InternalServerError"
)

// retryAfterSeconds is the Retry-After of a 429: a session frees up when another one is
// deleted or reaches its cooldown, so a short pause is the useful hint; clients that retry
// at all retry on 429 with backoff.
const retryAfterSeconds = 5

// kindErrors maps each error kind to its status, code and the message used when the error
// carries no public one.
var kindErrors = map[errkind.Kind]struct {
	status  int
	code    string
	message string
}{
	errkind.Invalid:         {http.StatusBadRequest, codeValidationFailed, "The request is invalid."},
	errkind.NotFound:        {http.StatusNotFound, codeNotFound, "Not found."},
	errkind.AlreadyExists:   {http.StatusConflict, codeConflict, "Already exists."},
	errkind.LimitExceeded:   {http.StatusTooManyRequests, codeTooManyRequests, "Too many requests; retry later."},
	errkind.Unavailable:     {http.StatusServiceUnavailable, codeUnavailable, "The service is unavailable; retry later."},
	errkind.Timeout:         {http.StatusGatewayTimeout, codeTimeout, "The operation timed out."},
	errkind.Internal:        {http.StatusInternalServerError, codeInternal, "internal error"},
	errkind.Unauthenticated: {http.StatusUnauthorized, codeUnauthorized, "Authentication is required."},
	errkind.Forbidden:       {http.StatusForbidden, codeForbidden, "Forbidden."},
}

// apiError is an error whose status and code are fixed by its constructor below.
type apiError struct {
	status int
	code   string
	msg    string // public
	target string
	allow  []string // for 405
	err    error    // cause, logged only
}

func (e *apiError) Error() string {
	if e.err != nil {
		return e.msg + ": " + e.err.Error()
	}
	return e.msg
}

func (e *apiError) Unwrap() error { return e.err }

// errInvalid is a 400 SessionRequestValidationFailed about target (a parameter or field).
func errInvalid(target, format string, args ...any) error {
	return &apiError{status: http.StatusBadRequest, code: codeValidationFailed, msg: fmt.Sprintf(format, args...), target: target}
}

// errNotSupported is a 400 SessionRequestNotSupported: a valid request this pool type or
// api-version does not support.
func errNotSupported(target, format string, args ...any) error {
	return &apiError{status: http.StatusBadRequest, code: codeNotSupported, msg: fmt.Sprintf(format, args...), target: target}
}

// errPropertiesMissing is live Azure's answer to a {"properties":...} wrapper on
// POST executions (strict mode only).
func errPropertiesMissing() error {
	return &apiError{status: http.StatusBadRequest, code: codePropertiesMissing,
		msg: "The request body must not be wrapped in \"properties\" for this operation; send the execution's fields at the top level."}
}

// errSessionNotFound answers a session-scoped management call on an identifier with no
// session: 400 SessionWithIdentifierNotFound, as observed live (§2.4, §4.3).
func errSessionNotFound(identifier string) error {
	return &apiError{status: http.StatusBadRequest, code: codeSessionNotFound, target: "identifier",
		msg: fmt.Sprintf("No session with identifier '%s' exists in this session pool.", identifier)}
}

// errPoolNotFound is a 404 for an unknown pool name in the path.
func errPoolNotFound(name string) error {
	return &apiError{status: http.StatusNotFound, code: codePoolNotFound, msg: fmt.Sprintf("Session pool '%s' does not exist.", name)}
}

// errTooLarge is a 413 for a body or uploaded file above limit bytes.
func errTooLarge(what string, limit int64, cause error) error {
	return &apiError{status: http.StatusRequestEntityTooLarge, code: codeTooLarge, err: cause,
		msg: fmt.Sprintf("The %s is larger than the limit of %d bytes.", what, limit)}
}

// errUploadRefused is a 413 for an upload the sandbox refused as too large (its own limit,
// or a full disk); cause carries the sandbox's public message.
func errUploadRefused(cause error) error {
	msg, ok := errkind.PublicMessage(cause)
	if !ok || msg == "" {
		msg = "The file does not fit in the session."
	}
	return &apiError{status: http.StatusRequestEntityTooLarge, code: codeTooLarge, msg: msg, err: cause}
}

// errMethodNotAllowed is a 405 listing the methods the path has.
func errMethodNotAllowed(method string, allow []string) error {
	return &apiError{status: http.StatusMethodNotAllowed, code: codeMethodNotAllowed, allow: allow,
		msg: fmt.Sprintf("Method %s is not supported here; use %s.", method, strings.Join(allow, ", "))}
}

// errMisdirected is a 421 for a request whose Host header names a host the server does
// not serve (Config.AllowedHosts): a DNS-rebinding page, or a client given a wrong name.
// 421, not 403: the server is not the authority for that name, which is no question of
// permission, and the request may succeed sent to the right host (RFC 9110 §15.5.20).
func errMisdirected(host string) error {
	return &apiError{status: http.StatusMisdirectedRequest, code: codeMisdirected, target: "Host",
		msg: fmt.Sprintf("This server does not serve the host %.200q; it serves only the hosts it is configured for.", host)}
}

// errCrossSite is a 403 for a request a browser sent on behalf of a page of another site.
func errCrossSite(format string, args ...any) error {
	return &apiError{status: http.StatusForbidden, code: codeForbidden, msg: fmt.Sprintf(format, args...)}
}

// errNoSuchOperation is a 404 for a path that names no operation.
func errNoSuchOperation(path string) error {
	return &apiError{status: http.StatusNotFound, code: codeNotFound,
		msg: fmt.Sprintf("No operation at path '%s'.", path)}
}

// errNotFound is a 404 for a file or execution the request names.
func errNotFound(format string, args ...any) error {
	return &apiError{status: http.StatusNotFound, code: codeNotFound, msg: fmt.Sprintf(format, args...)}
}

// errorBody is the Azure.Core error envelope.
type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Target  string `json:"target,omitempty"`
	TraceID string `json:"traceId,omitempty"`
}

// describe returns the status, envelope and extra headers for err.
func describe(err error) (int, errorDetail, http.Header) {
	h := http.Header{}
	var ae *apiError
	if errors.As(err, &ae) {
		if len(ae.allow) > 0 {
			h.Set("Allow", strings.Join(ae.allow, ", "))
		}
		return ae.status, errorDetail{Code: ae.code, Message: ae.msg, Target: ae.target}, h
	}
	k := errkind.Of(err)
	ke, ok := kindErrors[k]
	if !ok {
		k, ke = errkind.Internal, kindErrors[errkind.Internal]
	}
	msg := ke.message
	if k != errkind.Internal {
		if m, ok := errkind.PublicMessage(err); ok && m != "" {
			msg = m
		}
	}
	switch k {
	case errkind.LimitExceeded:
		h.Set("Retry-After", strconv.Itoa(retryAfterSeconds))
	case errkind.Unauthenticated:
		h.Set("WWW-Authenticate", `Bearer realm="sessiond"`) // RFC 6750
	}
	return ke.status, errorDetail{Code: ke.code, Message: msg}, h
}

// writeError writes err as the Azure error envelope with x-ms-error-code.
func writeError(w http.ResponseWriter, err error, traceID string) {
	status, d, extra := describe(err)
	d.TraceID = traceID
	h := w.Header()
	for k, v := range extra {
		h[k] = v
	}
	h.Set("x-ms-error-code", d.Code)
	writeJSON(w, status, errorBody{Error: d})
}

// writeJSON writes v as the JSON body of a response with status.
func writeJSON(w http.ResponseWriter, status int, v any) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // stdout with "<" or "&" stays readable
	if err := enc.Encode(v); err != nil {
		return errkind.Wrap(errkind.Internal, fmt.Errorf("encoding response: %w", err))
	}
	b := buf.Bytes()
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, err := w.Write(b)
	return err
}
