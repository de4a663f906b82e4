// Package errkind is sessiond's closed set of error kinds. Packages wrap errors with %w and
// classify them with a Kind; only the API edge (internal/api) turns kinds into HTTP statuses
// and Azure error codes. A message reaches clients only when it was marked public with
// Public; anything else is reported as an internal error with a trace ID.
//
// Any package may import errkind; it imports nothing of sessiond's.
package errkind

import (
	"errors"
	"fmt"
)

// Kind classifies an error by what the caller can do about it.
type Kind int

const (
	// Internal is the zero kind: a fault of sessiond or of a sandbox that the caller cannot fix.
	Internal Kind = iota
	// NotFound: the named thing (sandbox, image, file, session) does not exist.
	NotFound
	// AlreadyExists: a create collided with an existing thing of that name.
	AlreadyExists
	// Invalid: the request is malformed or names something that cannot be.
	Invalid
	// LimitExceeded: a size, count or rate bound was hit.
	LimitExceeded
	// Unavailable: a dependency is missing or not ready yet; retrying later may work.
	Unavailable
	// Timeout: a deadline passed.
	Timeout
	// Unauthenticated: the request carries no credentials, or credentials that are not
	// valid (a malformed, expired or forged token; an unknown or revoked key).
	Unauthenticated
	// Forbidden: the caller is known but lacks the role the operation needs.
	Forbidden
)

var names = [...]string{"internal", "not_found", "already_exists", "invalid", "limit_exceeded", "unavailable", "timeout", "unauthenticated", "forbidden"}

// String returns the kind's stable snake_case name, as used on the agent wire.
func (k Kind) String() string {
	if k < 0 || int(k) >= len(names) {
		return "internal"
	}
	return names[k]
}

// Parse returns the kind named s, or Internal for an unknown name.
func Parse(s string) Kind {
	for i, n := range names {
		if n == s {
			return Kind(i)
		}
	}
	return Internal
}

// Error is an error with a kind and, optionally, a message that may be shown to clients.
type Error struct {
	Kind Kind
	// Msg is safe to show to a client when Public is true.
	Msg    string
	Public bool
	Err    error
}

func (e *Error) Error() string {
	switch {
	case e.Msg != "" && e.Err != nil:
		return e.Msg + ": " + e.Err.Error()
	case e.Msg != "":
		return e.Msg
	case e.Err != nil:
		return e.Err.Error()
	}
	return e.Kind.String()
}

func (e *Error) Unwrap() error { return e.Err }

// New returns an error of kind k whose message is public.
func New(k Kind, format string, args ...any) error {
	return &Error{Kind: k, Msg: fmt.Sprintf(format, args...), Public: true}
}

// Wrap classifies err as kind k without making its text public. It returns nil for nil.
func Wrap(k Kind, err error) error {
	if err == nil {
		return nil
	}
	return &Error{Kind: k, Err: err}
}

// Of returns the kind of the outermost classified error in err's chain, or Internal.
func Of(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return Internal
}

// Is reports whether err is classified as kind k.
func Is(err error, k Kind) bool { return err != nil && Of(err) == k }

// PublicMessage returns the outermost public message in err's chain, if any.
func PublicMessage(err error) (string, bool) {
	for err != nil {
		var e *Error
		if !errors.As(err, &e) {
			return "", false
		}
		if e.Public {
			return e.Msg, true
		}
		err = e.Err
	}
	return "", false
}
