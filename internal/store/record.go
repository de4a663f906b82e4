package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/sessiond/sessiond/internal/errkind"
)

// Pool is a pool's definition as it was declared (config file or management API).
type Pool struct {
	// Name is the pool's name, the key.
	Name string `json:"name"`
	// Properties are the pool's declared properties as a JSON document, which the store
	// keeps as given (compacted) without interpreting it. At most MaxDocumentBytes.
	Properties json.RawMessage `json:"properties,omitempty"`
	// Version is the caller's generation of the definition (e.g. bumped by every update).
	Version   int64     `json:"version"`
	CreatedAt time.Time `json:"createdAt,omitzero"`
	UpdatedAt time.Time `json:"updatedAt,omitzero"`
}

// Session is a session: an identifier bound to a sandbox of a pool.
type Session struct {
	// Pool and Identifier are the key.
	Pool       string `json:"pool"`
	Identifier string `json:"identifier"`
	SandboxID  string `json:"sandboxId"`
	// Runtime is the sandbox runtime that runs SandboxID ("runsc", "runc"), for Attach.
	Runtime string `json:"runtime,omitempty"`
	// State is the session's state as the pool names it (e.g. "Allocated").
	State string `json:"state,omitempty"`
	// CreatedAt is when the identifier was bound.
	CreatedAt time.Time `json:"createdAt,omitzero"`
	// LastRequestAt is the end of the last request for the identifier.
	LastRequestAt time.Time `json:"lastRequestAt,omitzero"`
	// ExpiresAt is when the session is destroyed if no request comes: the earlier of the
	// end of its cooldown and of its maximum lifetime.
	ExpiresAt time.Time `json:"expiresAt,omitzero"`
}

// Execution is an asynchronous execution of a session.
type Execution struct {
	// Pool, Identifier and ID are the key.
	Pool       string `json:"pool"`
	Identifier string `json:"identifier"`
	ID         string `json:"id"`
	// Status is the execution's status as the API spells it (e.g. "Running").
	Status string `json:"status"`
	// Request and Response are JSON documents of at most MaxDocumentBytes each, kept as
	// given (compacted). Response is empty until the execution finishes.
	Request    json.RawMessage `json:"request,omitempty"`
	Response   json.RawMessage `json:"response,omitempty"`
	CreatedAt  time.Time       `json:"createdAt,omitzero"`
	FinishedAt time.Time       `json:"finishedAt,omitzero"`
}

func (p *Pool) key() Key      { return PoolKey(p.Name) }
func (s *Session) key() Key   { return SessionKey(s.Pool, s.Identifier) }
func (e *Execution) key() Key { return ExecutionKey(e.Pool, e.Identifier, e.ID) }

// Validation. The checks are cheap (lengths, UTF-8, JSON syntax of documents), so that
// the write-behind layer runs them on the hot path and refuses a bad record to its caller
// instead of dropping it later.

func invalid(format string, args ...any) error {
	return errkind.New(errkind.Invalid, format, args...)
}

// checkString checks a string field; key fields must be set and contain no NUL (the
// separator of the parts of a stored key).
func checkString(field, v string, isKey bool) error {
	switch {
	case isKey && v == "":
		return invalid("%s is empty", field)
	case len(v) > MaxKeyBytes:
		return errkind.New(errkind.LimitExceeded, "%s is %d bytes long, above the limit of %d", field, len(v), MaxKeyBytes)
	case !utf8.ValidString(v):
		return invalid("%s is not valid UTF-8", field)
	case isKey && strings.IndexByte(v, 0) >= 0:
		return invalid("%s contains a NUL character", field)
	}
	return nil
}

func checkDocument(field string, doc json.RawMessage) error {
	if len(doc) > MaxDocumentBytes {
		return errkind.New(errkind.LimitExceeded, "%s is %d bytes long, above the limit of %d", field, len(doc), MaxDocumentBytes)
	}
	if len(doc) > 0 && !json.Valid(doc) {
		return invalid("%s is not valid JSON", field)
	}
	return nil
}

func firstError(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// validate checks that k names a record: the fields of its kind are valid and the others
// empty.
func (k Key) validate() error {
	var want [3]bool // Pool, Identifier, ID
	idName := "id"
	switch k.Kind {
	case KindPool:
		want = [3]bool{true, false, false}
	case KindSession:
		want = [3]bool{true, true, false}
	case KindExecution:
		want = [3]bool{true, true, true}
	case KindMeta:
		want = [3]bool{false, false, true}
		idName = "metadata key"
	default:
		return invalid("unknown record kind %d", k.Kind)
	}
	fields := [3]struct{ name, v string }{{"pool", k.Pool}, {"identifier", k.Identifier}, {idName, k.ID}}
	for i, f := range fields {
		if !want[i] {
			if f.v != "" {
				return invalid("a key of %s has no %s", k.Kind, f.name)
			}
			continue
		}
		if err := checkString(f.name, f.v, true); err != nil {
			return err
		}
	}
	return nil
}

func (p *Pool) validate() error {
	return checkDocument("properties", p.Properties)
}

func (s *Session) validate() error {
	return firstError(checkString("sandboxId", s.SandboxID, false), checkString("runtime", s.Runtime, false),
		checkString("state", s.State, false))
}

func (e *Execution) validate() error {
	if e.Status == "" {
		return invalid("status is empty")
	}
	return firstError(checkString("status", e.Status, false), checkDocument("request", e.Request),
		checkDocument("response", e.Response))
}

func validateMeta(key string, value []byte) error {
	if strings.HasPrefix(key, reservedMetaPrefix) {
		return invalid("metadata key %q is reserved for the store", key)
	}
	if len(value) > MaxMetaBytes {
		return errkind.New(errkind.LimitExceeded, "metadata value is %d bytes long, above the limit of %d", len(value), MaxMetaBytes)
	}
	return nil
}

// validate checks op's key and, for a put, its record. The error is a *RecordError.
func (op *Op) validate() error {
	err := op.key.validate()
	if err == nil && !op.del {
		switch op.key.Kind {
		case KindPool:
			err = op.pool.validate()
		case KindSession:
			err = op.session.validate()
		case KindExecution:
			err = op.execution.validate()
		case KindMeta:
			err = validateMeta(op.key.ID, op.meta)
		}
	} else if err == nil && op.key.Kind == KindMeta && strings.HasPrefix(op.key.ID, reservedMetaPrefix) {
		err = invalid("metadata key %q is reserved for the store", op.key.ID)
	}
	if err != nil {
		return &RecordError{Key: op.key, Err: err}
	}
	return nil
}

// Encoding. Records are JSON (times in UTC); metadata values are stored as given. A stored
// key is the key's parts joined by NUL, so that a pool's sessions and executions are a
// prefix range of their bucket.

// encoded is an op ready for a backend: value nil deletes the key.
type encoded struct {
	bucket string
	key    []byte
	value  []byte
}

func (k Key) bytes() []byte {
	switch k.Kind {
	case KindPool:
		return []byte(k.Pool)
	case KindSession:
		return []byte(k.Pool + "\x00" + k.Identifier)
	case KindExecution:
		return []byte(k.Pool + "\x00" + k.Identifier + "\x00" + k.ID)
	}
	return []byte(k.ID)
}

// poolPrefix is the prefix of the stored keys of pool's sessions and executions.
func poolPrefix(pool string) []byte { return []byte(pool + "\x00") }

// displayKey shows a stored key with its parts joined by '/'.
func displayKey(k []byte) string { return strings.ReplaceAll(string(k), "\x00", "/") }

// encode validates op and encodes it; an encoded record longer than maxRecord is refused.
func (op *Op) encode(maxRecord int) (encoded, error) {
	if err := op.validate(); err != nil {
		return encoded{}, err
	}
	e := encoded{bucket: op.key.Kind.String(), key: op.key.bytes()}
	if op.del {
		return e, nil
	}
	var err error
	switch op.key.Kind {
	case KindPool:
		p := *op.pool
		p.CreatedAt, p.UpdatedAt = p.CreatedAt.UTC(), p.UpdatedAt.UTC()
		e.value, err = encodeJSON(&p)
	case KindSession:
		s := op.session
		s.CreatedAt, s.LastRequestAt, s.ExpiresAt = s.CreatedAt.UTC(), s.LastRequestAt.UTC(), s.ExpiresAt.UTC()
		e.value, err = encodeJSON(&s)
	case KindExecution:
		x := *op.execution
		x.CreatedAt, x.FinishedAt = x.CreatedAt.UTC(), x.FinishedAt.UTC()
		e.value, err = encodeJSON(&x)
	case KindMeta:
		e.value = append(make([]byte, 0, len(op.meta)), op.meta...) // non-nil: a put
	}
	if err != nil {
		return encoded{}, &RecordError{Key: op.key, Err: errkind.Wrap(errkind.Invalid, fmt.Errorf("encoding: %w", err))}
	}
	if len(e.value) > maxRecord {
		return encoded{}, &RecordError{Key: op.key, Err: errkind.New(errkind.LimitExceeded,
			"the record is %d bytes long, above the store's limit of %d", len(e.value), maxRecord)}
	}
	return e, nil
}

func encodeJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // '<' in code would otherwise take six bytes
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// recordPtr is a pointer to a record type.
type recordPtr[T any] interface {
	*T
	key() Key
}

// decode decodes the record stored under key k of bucket; a record that does not decode,
// or whose content belongs to another key, is corrupt.
func decode[T any, P recordPtr[T]](bucket string, k, v []byte) (T, error) {
	var rec T
	if err := json.Unmarshal(v, P(&rec)); err != nil {
		return rec, &CorruptError{Bucket: bucket, Key: displayKey(k), Err: err}
	}
	if got := P(&rec).key().bytes(); !bytes.Equal(got, k) {
		return rec, &CorruptError{Bucket: bucket, Key: displayKey(k), Err: fmt.Errorf("it holds the record of %s", displayKey(got))}
	}
	return rec, nil
}
