// Package store is sessiond's embedded persistence: pool definitions, sessions,
// asynchronous executions, and a little server metadata, kept so that a restarted sessiond
// finds its pools, re-attaches to its sessions' sandboxes and resumes their timers.
//
// Store is the contract; Bolt (one bbolt file in the data directory) and Memory (for tests
// of other packages) implement it, and storetest is its conformance suite. Every write of
// a Store is durable when it returns, so it waits on the disk: the hot path (identifier
// lookup, allocation, idle-timer reset) never calls it directly but enqueues its writes on
// an Async, which coalesces them and writes them behind in batches.
//
// The store knows nothing of pools' or sessions' semantics: a pool's properties are an
// opaque JSON document, and states and statuses are strings. Of sessiond's packages it
// imports only errkind; the pool manager, the API and cmd/sessiond import it.
package store

import (
	"context"
	"fmt"
	"strings"
)

// Store keeps sessiond's records. Put writes a record, replacing the one with the same key;
// it returns once the write is durable. Get returns an error of kind errkind.NotFound for a
// missing record. Delete is idempotent: deleting a missing record is not an error. List
// returns records in key order (pools by name; sessions by identifier; executions by
// identifier, then ID). A record that cannot be decoded gives a *CorruptError naming it;
// List then returns the records it could decode along with that error, so that the others
// stay readable.
//
// Records that fail validation (see the record types) are refused with a *RecordError of
// kind errkind.Invalid or errkind.LimitExceeded before anything is written. Times are
// stored in UTC. Every method is safe for concurrent use; after Close, calls fail with
// errkind.Unavailable.
type Store interface {
	PutPool(ctx context.Context, p Pool) error
	GetPool(ctx context.Context, name string) (Pool, error)
	DeletePool(ctx context.Context, name string) error
	ListPools(ctx context.Context) ([]Pool, error)

	PutSession(ctx context.Context, s Session) error
	GetSession(ctx context.Context, pool, identifier string) (Session, error)
	DeleteSession(ctx context.Context, pool, identifier string) error
	ListSessions(ctx context.Context, pool string) ([]Session, error)

	PutExecution(ctx context.Context, e Execution) error
	GetExecution(ctx context.Context, pool, identifier, id string) (Execution, error)
	DeleteExecution(ctx context.Context, pool, identifier, id string) error
	ListExecutions(ctx context.Context, pool string) ([]Execution, error)

	// PutMeta stores a server metadata value under key. Keys starting with "store." are
	// the store's own (SchemaKey) and cannot be written.
	PutMeta(ctx context.Context, key string, value []byte) error
	GetMeta(ctx context.Context, key string) ([]byte, error)
	DeleteMeta(ctx context.Context, key string) error

	// Apply writes a batch of puts and deletes in one transaction: all of them, or none if
	// it fails. If an op is refused (a *RecordError names it), nothing is written. Ops on
	// the same key are applied in order.
	Apply(ctx context.Context, ops []Op) error

	// Close releases the store. It is idempotent.
	Close() error
}

// SchemaVersion is the version of the record layout this code writes. A store written by a
// newer version is refused at open rather than misread.
const SchemaVersion = 1

// SchemaKey is the metadata key under which a store records its SchemaVersion (as decimal
// text). It is readable with GetMeta.
const SchemaKey = "store.schema"

// reservedMetaPrefix starts the metadata keys that belong to the store itself.
const reservedMetaPrefix = "store."

// Limits on records. A record that passes validation always fits DefaultMaxRecordBytes.
const (
	// MaxKeyBytes bounds every string field of a record: names, identifiers, IDs, states.
	// (Azure's session identifiers are at most 128 characters.)
	MaxKeyBytes = 512
	// MaxDocumentBytes bounds each JSON document of a record: a pool's properties, an
	// execution's request and its response. An execution's code alone may be 4 MiB
	// (agentapi.MaxCodeBytes); escaping adds to it.
	MaxDocumentBytes = 6 << 20
	// MaxMetaBytes bounds a metadata value.
	MaxMetaBytes = 64 << 10
	// DefaultMaxRecordBytes bounds an encoded record unless a backend is configured
	// otherwise: two full documents and every string field escaped at its worst fit in it.
	DefaultMaxRecordBytes = 16 << 20
)

// Kind is the type of a record; it names the bucket the record is kept in.
type Kind uint8

const (
	KindPool Kind = iota + 1
	KindSession
	KindExecution
	KindMeta
)

var kindNames = [...]string{KindPool: "pools", KindSession: "sessions", KindExecution: "executions", KindMeta: "meta"}

// String returns the name of the bucket records of kind k are kept in.
func (k Kind) String() string {
	if k == 0 || int(k) >= len(kindNames) {
		return fmt.Sprintf("kind(%d)", k)
	}
	return kindNames[k]
}

// Key identifies one record. Build it with PoolKey, SessionKey, ExecutionKey or MetaKey.
// Keys are comparable: the write-behind layer coalesces writes by key.
type Key struct {
	Kind Kind
	// Pool is the pool's name (KindPool, KindSession, KindExecution).
	Pool string
	// Identifier is the session identifier (KindSession, KindExecution).
	Identifier string
	// ID is the execution's ID (KindExecution) or the metadata key (KindMeta).
	ID string
}

// PoolKey is the key of pool name's definition.
func PoolKey(name string) Key { return Key{Kind: KindPool, Pool: name} }

// SessionKey is the key of identifier's session in pool.
func SessionKey(pool, identifier string) Key {
	return Key{Kind: KindSession, Pool: pool, Identifier: identifier}
}

// ExecutionKey is the key of execution id of identifier's session in pool.
func ExecutionKey(pool, identifier, id string) Key {
	return Key{Kind: KindExecution, Pool: pool, Identifier: identifier, ID: id}
}

// MetaKey is the key of a server metadata value.
func MetaKey(key string) Key { return Key{Kind: KindMeta, ID: key} }

// String names the record as bucket/key, e.g. sessions/default/user-42.
func (k Key) String() string {
	var parts []string
	switch k.Kind {
	case KindPool:
		parts = []string{k.Pool}
	case KindSession:
		parts = []string{k.Pool, k.Identifier}
	case KindExecution:
		parts = []string{k.Pool, k.Identifier, k.ID}
	default:
		parts = []string{k.ID}
	}
	return k.Kind.String() + "/" + strings.Join(parts, "/")
}

// Op is one write of a batch (Store.Apply, Async.Enqueue): a put or a delete of one
// record. Build it with PoolOp, SessionOp, ExecutionOp, MetaOp or DeleteOp.
type Op struct {
	key Key
	del bool
	// For a put, the record of key.Kind. A session is held by value, so that the hot path
	// enqueues without allocating.
	session   Session
	pool      *Pool
	execution *Execution
	meta      []byte
}

// PoolOp puts p.
func PoolOp(p Pool) Op { return Op{key: p.key(), pool: &p} }

// SessionOp puts s.
func SessionOp(s Session) Op { return Op{key: s.key(), session: s} }

// ExecutionOp puts e.
func ExecutionOp(e Execution) Op { return Op{key: e.key(), execution: &e} }

// MetaOp puts a metadata value. value is not copied: the caller must not change it.
func MetaOp(key string, value []byte) Op { return Op{key: MetaKey(key), meta: value} }

// DeleteOp deletes the record k.
func DeleteOp(k Key) Op { return Op{key: k, del: true} }

// Key returns the key of the record op writes.
func (op Op) Key() Key { return op.key }

// IsDelete reports whether op deletes its record.
func (op Op) IsDelete() bool { return op.del }

// RecordError is a write refused because of its record: it is invalid or too large. Its
// kind (errkind.Of) is errkind.Invalid or errkind.LimitExceeded, and its message, which
// names the field at fault, is public.
type RecordError struct {
	Key Key
	Err error
}

func (e *RecordError) Error() string { return e.Key.String() + ": " + e.Err.Error() }

func (e *RecordError) Unwrap() error { return e.Err }

// CorruptError is a stored record that cannot be decoded (or whose content does not match
// its key). Other records stay readable.
type CorruptError struct {
	// Bucket is the record's bucket (a Kind's name).
	Bucket string
	// Key is the record's key in the bucket, with its parts joined by '/'.
	Key string
	Err error
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("corrupt record %s/%s in the store: %v", e.Bucket, e.Key, e.Err)
}

func (e *CorruptError) Unwrap() error { return e.Err }
