package store

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/sessiond/sessiond/internal/errkind"
)

// FileName is the store's file in sessiond's data directory.
const FileName = "sessiond.db"

// DefaultLockTimeout is how long OpenBolt waits for the file's lock. Another process
// holding it is almost always a second sessiond on the same data directory, which does
// not let go, so the wait is short.
const DefaultLockTimeout = 2 * time.Second

// Options configure a backend.
type Options struct {
	// LockTimeout bounds OpenBolt's wait for the file's lock (DefaultLockTimeout if 0).
	LockTimeout time.Duration
	// MaxRecordBytes bounds an encoded record (DefaultMaxRecordBytes if 0).
	MaxRecordBytes int
}

func (o Options) withDefaults() (Options, error) {
	if o.LockTimeout < 0 || o.MaxRecordBytes < 0 {
		return o, errkind.New(errkind.Invalid, "store options: lock timeout %v and record limit %d: want 0 (the default) or more", o.LockTimeout, o.MaxRecordBytes)
	}
	if o.LockTimeout == 0 {
		o.LockTimeout = DefaultLockTimeout
	}
	if o.MaxRecordBytes == 0 {
		o.MaxRecordBytes = DefaultMaxRecordBytes
	}
	return o, nil
}

// Bolt is a Store in one bbolt file. The file is locked while it is open, so that a second
// process opening it fails (after Options.LockTimeout) instead of corrupting it. Every
// commit is fsynced before it returns. Reads run concurrently; writes are serialized.
type Bolt struct {
	records
	path string
	db   *bolt.DB
	// closeOnce makes Close idempotent.
	closeOnce sync.Once
	closeErr  error
}

var _ Store = (*Bolt)(nil)

var buckets = []Kind{KindPool, KindSession, KindExecution, KindMeta}

// OpenBolt opens (creating it if needed, with its directory) the store file at path,
// usually filepath.Join(dataDir, FileName). Errors: Unavailable if another process holds
// the file's lock; Invalid if the file was written by a newer sessiond (a newer
// SchemaVersion); Internal if it is not a store or is damaged.
func OpenBolt(path string, opts Options) (*Bolt, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("opening store: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: opts.LockTimeout})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, &errkind.Error{Kind: errkind.Unavailable, Public: true, Err: err,
			Msg: fmt.Sprintf("opening store %s: another process has held it locked for %v (is another sessiond using this data directory?)", path, opts.LockTimeout)}
	}
	if err != nil {
		return nil, fmt.Errorf("opening store %s: %w", path, err)
	}
	if err := db.Update(initSchema); err != nil {
		db.Close()
		return nil, fmt.Errorf("opening store %s: %w", path, err)
	}
	b := &Bolt{path: path, db: db}
	b.records = records{e: boltEngine{db}, maxRecord: opts.MaxRecordBytes}
	return b, nil
}

// initSchema checks the schema version of the file, records it in a new file, and creates
// the buckets.
func initSchema(tx *bolt.Tx) error {
	meta := tx.Bucket([]byte(KindMeta.String()))
	var v []byte
	if meta != nil {
		v = meta.Get([]byte(SchemaKey))
	}
	switch {
	case v == nil:
		for _, k := range buckets {
			if b := tx.Bucket([]byte(k.String())); b != nil && firstKey(b) != nil {
				return &CorruptError{Bucket: KindMeta.String(), Key: SchemaKey, Err: errors.New("the store holds records but no schema version")}
			}
		}
	default:
		n, err := strconv.Atoi(string(v))
		switch {
		case err != nil || n < 1:
			return &CorruptError{Bucket: KindMeta.String(), Key: SchemaKey, Err: fmt.Errorf("schema version %q is not a positive number", v)}
		case n > SchemaVersion:
			return errkind.New(errkind.Invalid, "the store was written by a newer sessiond (schema version %d; this one knows up to %d): upgrade sessiond or use another data directory", n, SchemaVersion)
		}
		// n == SchemaVersion: nothing to migrate (1 is the first version).
	}
	for _, k := range buckets {
		if _, err := tx.CreateBucketIfNotExists([]byte(k.String())); err != nil {
			return fmt.Errorf("creating bucket %s: %w", k, err)
		}
	}
	if v == nil {
		return tx.Bucket([]byte(KindMeta.String())).Put([]byte(SchemaKey), []byte(strconv.Itoa(SchemaVersion)))
	}
	return nil
}

// Path returns the file's path.
func (b *Bolt) Path() string { return b.path }

// Close implements Store: it waits for the transactions in progress and releases the
// file's lock.
func (b *Bolt) Close() error {
	b.closeOnce.Do(func() {
		if err := b.db.Close(); err != nil {
			b.closeErr = fmt.Errorf("closing store %s: %w", b.path, err)
		}
	})
	return b.closeErr
}

type boltEngine struct{ db *bolt.DB }

func boltErr(err error) error {
	if errors.Is(err, bolterrors.ErrDatabaseNotOpen) {
		return errClosed()
	}
	return err
}

func (e boltEngine) get(bucket string, key []byte, fn func(v []byte, found bool) error) error {
	return boltErr(e.db.View(func(tx *bolt.Tx) error {
		// A cursor tells an empty value from a missing key.
		k, v := tx.Bucket([]byte(bucket)).Cursor().Seek(key)
		return fn(v, k != nil && bytes.Equal(k, key))
	}))
}

func (e boltEngine) scan(bucket string, prefix []byte, fn func(k, v []byte)) error {
	return boltErr(e.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket([]byte(bucket)).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			fn(k, v)
		}
		return nil
	}))
}

func (e boltEngine) commit(ops []encoded) error {
	return boltErr(e.db.Update(func(tx *bolt.Tx) error {
		for _, op := range ops {
			b := tx.Bucket([]byte(op.bucket))
			var err error
			if op.value == nil {
				err = b.Delete(op.key)
			} else {
				err = b.Put(op.key, op.value)
			}
			if err != nil {
				return fmt.Errorf("%s/%s: %w", op.bucket, displayKey(op.key), err)
			}
		}
		return nil
	}))
}

func firstKey(b *bolt.Bucket) []byte {
	k, _ := b.Cursor().First()
	return k
}
