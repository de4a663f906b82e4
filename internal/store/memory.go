package store

import (
	"bytes"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/sessiond/sessiond/internal/errkind"
)

// Memory is a Store in memory, for tests of other packages. It validates, encodes and
// limits records exactly as Bolt does and passes the same conformance suite. Reopen gives
// a new store over the same data after Close, as a restarted sessiond would reopen its
// file.
type Memory struct {
	records
	data   *memData
	opts   Options
	closed atomic.Bool
}

var _ Store = (*Memory)(nil)

// memData is the data of a Memory, shared by the stores Reopen makes.
type memData struct {
	mu sync.RWMutex
	// open is true while a Memory over the data is open (the file lock's stand-in).
	// Guarded by mu.
	open bool
	// buckets maps bucket → stored key → value. Guarded by mu.
	buckets map[string]map[string][]byte
}

// NewMemory returns an empty store. Options.LockTimeout is ignored.
func NewMemory(opts Options) (*Memory, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	d := &memData{open: true, buckets: map[string]map[string][]byte{}}
	for _, k := range buckets {
		d.buckets[k.String()] = map[string][]byte{}
	}
	d.buckets[KindMeta.String()][SchemaKey] = []byte(strconv.Itoa(SchemaVersion))
	return newMemory(d, opts), nil
}

func newMemory(d *memData, opts Options) *Memory {
	m := &Memory{data: d, opts: opts}
	m.records = records{e: memEngine{m}, maxRecord: opts.MaxRecordBytes}
	return m
}

// Reopen returns a new store over m's data. Like a second opener of a locked file, it
// fails with errkind.Unavailable while a store over the data is open.
func (m *Memory) Reopen() (*Memory, error) {
	d := m.data
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.open {
		return nil, errkind.New(errkind.Unavailable, "the store is open: close it before reopening it")
	}
	d.open = true
	return newMemory(d, m.opts), nil
}

// Close implements Store. It is idempotent.
func (m *Memory) Close() error {
	if m.closed.Swap(true) {
		return nil
	}
	m.data.mu.Lock()
	m.data.open = false
	m.data.mu.Unlock()
	return nil
}

type memEngine struct{ m *Memory }

func (e memEngine) get(bucket string, key []byte, fn func(v []byte, found bool) error) error {
	d := e.m.data
	d.mu.RLock()
	defer d.mu.RUnlock()
	if e.m.closed.Load() {
		return errClosed()
	}
	v, ok := d.buckets[bucket][string(key)]
	return fn(v, ok)
}

func (e memEngine) scan(bucket string, prefix []byte, fn func(k, v []byte)) error {
	d := e.m.data
	d.mu.RLock()
	defer d.mu.RUnlock()
	if e.m.closed.Load() {
		return errClosed()
	}
	var keys []string
	for k := range d.buckets[bucket] {
		if bytes.HasPrefix([]byte(k), prefix) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		fn([]byte(k), d.buckets[bucket][k])
	}
	return nil
}

func (e memEngine) commit(ops []encoded) error {
	d := e.m.data
	d.mu.Lock()
	defer d.mu.Unlock()
	if e.m.closed.Load() {
		return errClosed()
	}
	for _, op := range ops {
		if op.value == nil {
			delete(d.buckets[op.bucket], string(op.key))
		} else {
			d.buckets[op.bucket][string(op.key)] = op.value // encode made it ours
		}
	}
	return nil
}
