package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/sessiond/sessiond/internal/errkind"
)

// engine is what a backend provides: raw values by bucket and key, and atomic batches.
// records builds Store's typed methods on it, so that every backend validates, encodes and
// decodes alike.
type engine interface {
	// get calls fn with the value of key (found false if there is none); v is valid only
	// during fn.
	get(bucket string, key []byte, fn func(v []byte, found bool) error) error
	// scan calls fn for every key of bucket starting with prefix, in key order; k and v
	// are valid only during fn.
	scan(bucket string, prefix []byte, fn func(k, v []byte)) error
	// commit writes the ops in one transaction, durably, in order.
	commit(ops []encoded) error
}

// records implements Store over an engine. Bolt and Memory embed it.
type records struct {
	e         engine
	maxRecord int
}

func errClosed() error { return errkind.New(errkind.Unavailable, "the store is closed") }

func ctxErr(ctx context.Context, doing string) error {
	if ctx.Err() == nil {
		return nil
	}
	k := errkind.Unavailable
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		k = errkind.Timeout
	}
	return errkind.Wrap(k, fmt.Errorf("%s: %w", doing, ctx.Err()))
}

func notFound(k Key) error {
	switch k.Kind {
	case KindPool:
		return errkind.New(errkind.NotFound, "session pool %q not found in the store", k.Pool)
	case KindSession:
		return errkind.New(errkind.NotFound, "session %q of session pool %q not found in the store", k.Identifier, k.Pool)
	case KindExecution:
		return errkind.New(errkind.NotFound, "execution %q of session %q in session pool %q not found in the store", k.ID, k.Identifier, k.Pool)
	}
	return errkind.New(errkind.NotFound, "metadata %q not found in the store", k.ID)
}

// Apply implements Store.
func (r *records) Apply(ctx context.Context, ops []Op) error {
	if err := ctxErr(ctx, "writing to the store"); err != nil {
		return err
	}
	enc := make([]encoded, len(ops))
	for i := range ops {
		var err error
		if enc[i], err = ops[i].encode(r.maxRecord); err != nil {
			return err
		}
	}
	if err := r.e.commit(enc); err != nil {
		return fmt.Errorf("writing to the store: %w", err)
	}
	return nil
}

func (r *records) put(ctx context.Context, op Op) error { return r.Apply(ctx, []Op{op}) }

// getRecord reads the record k.
func getRecord[T any, P recordPtr[T]](ctx context.Context, r *records, k Key) (T, error) {
	var rec T
	if err := ctxErr(ctx, "reading the store"); err != nil {
		return rec, err
	}
	if err := k.validate(); err != nil {
		return rec, &RecordError{Key: k, Err: err}
	}
	bucket := k.Kind.String()
	err := r.e.get(bucket, k.bytes(), func(v []byte, found bool) error {
		if !found {
			return notFound(k)
		}
		var err error
		rec, err = decode[T, P](bucket, k.bytes(), v)
		return err
	})
	return rec, err
}

// listRecords reads the records of kind whose stored key starts with prefix. Records that
// do not decode are left out and reported together in the error.
func listRecords[T any, P recordPtr[T]](ctx context.Context, r *records, kind Kind, prefix []byte) ([]T, error) {
	if err := ctxErr(ctx, "reading the store"); err != nil {
		return nil, err
	}
	bucket := kind.String()
	var out []T
	var corrupt []error
	err := r.e.scan(bucket, prefix, func(k, v []byte) {
		rec, err := decode[T, P](bucket, k, v)
		if err != nil {
			corrupt = append(corrupt, err)
			return
		}
		out = append(out, rec)
	})
	if err != nil {
		return nil, err
	}
	return out, errors.Join(corrupt...)
}

// checkPool validates a pool name given to a List.
func checkPool(pool string) error {
	if err := checkString("pool", pool, true); err != nil {
		return fmt.Errorf("listing the store: %w", err)
	}
	return nil
}

// PutPool implements Store.
func (r *records) PutPool(ctx context.Context, p Pool) error { return r.put(ctx, PoolOp(p)) }

// GetPool implements Store.
func (r *records) GetPool(ctx context.Context, name string) (Pool, error) {
	return getRecord[Pool](ctx, r, PoolKey(name))
}

// DeletePool implements Store.
func (r *records) DeletePool(ctx context.Context, name string) error {
	return r.put(ctx, DeleteOp(PoolKey(name)))
}

// ListPools implements Store.
func (r *records) ListPools(ctx context.Context) ([]Pool, error) {
	return listRecords[Pool](ctx, r, KindPool, nil)
}

// PutSession implements Store.
func (r *records) PutSession(ctx context.Context, s Session) error { return r.put(ctx, SessionOp(s)) }

// GetSession implements Store.
func (r *records) GetSession(ctx context.Context, pool, identifier string) (Session, error) {
	return getRecord[Session](ctx, r, SessionKey(pool, identifier))
}

// DeleteSession implements Store.
func (r *records) DeleteSession(ctx context.Context, pool, identifier string) error {
	return r.put(ctx, DeleteOp(SessionKey(pool, identifier)))
}

// ListSessions implements Store.
func (r *records) ListSessions(ctx context.Context, pool string) ([]Session, error) {
	if err := checkPool(pool); err != nil {
		return nil, err
	}
	return listRecords[Session](ctx, r, KindSession, poolPrefix(pool))
}

// PutExecution implements Store.
func (r *records) PutExecution(ctx context.Context, e Execution) error {
	return r.put(ctx, ExecutionOp(e))
}

// GetExecution implements Store.
func (r *records) GetExecution(ctx context.Context, pool, identifier, id string) (Execution, error) {
	return getRecord[Execution](ctx, r, ExecutionKey(pool, identifier, id))
}

// DeleteExecution implements Store.
func (r *records) DeleteExecution(ctx context.Context, pool, identifier, id string) error {
	return r.put(ctx, DeleteOp(ExecutionKey(pool, identifier, id)))
}

// ListExecutions implements Store.
func (r *records) ListExecutions(ctx context.Context, pool string) ([]Execution, error) {
	if err := checkPool(pool); err != nil {
		return nil, err
	}
	return listRecords[Execution](ctx, r, KindExecution, poolPrefix(pool))
}

// PutMeta implements Store.
func (r *records) PutMeta(ctx context.Context, key string, value []byte) error {
	return r.put(ctx, MetaOp(key, value))
}

// GetMeta implements Store.
func (r *records) GetMeta(ctx context.Context, key string) ([]byte, error) {
	if err := ctxErr(ctx, "reading the store"); err != nil {
		return nil, err
	}
	k := MetaKey(key)
	if err := k.validate(); err != nil {
		return nil, &RecordError{Key: k, Err: err}
	}
	var out []byte
	err := r.e.get(k.Kind.String(), k.bytes(), func(v []byte, found bool) error {
		if !found {
			return notFound(k)
		}
		out = append(make([]byte, 0, len(v)), v...)
		return nil
	})
	return out, err
}

// DeleteMeta implements Store.
func (r *records) DeleteMeta(ctx context.Context, key string) error {
	return r.put(ctx, DeleteOp(MetaKey(key)))
}
