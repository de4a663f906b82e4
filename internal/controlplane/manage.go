package controlplane

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/sessiond/sessiond/internal/events"
	"reflect"
	"slices"
	"sort"
	"time"

	"github.com/sessiond/sessiond/internal/api"
	"github.com/sessiond/sessiond/internal/config"
	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/image"
	"github.com/sessiond/sessiond/internal/pool"
	"github.com/sessiond/sessiond/internal/store"
)

// The management operations (api.Manager): pools created, replaced, patched and deleted
// through the management API.
//
// A pool is defined either in the configuration file (the specs given to New) or through
// the API. The file's pools are read-only through the API: changing or deleting one is
// refused with errkind.AlreadyExists (409), and the file is where to change it; the API
// can read them. The API's pools are stored (store.Pool, synchronously, its Properties
// holding the pool's document, config.Document) and started again by the next New; a
// stored pool whose name the file also declares is left alone (the file's wins, and a
// warning is logged), and one that no longer starts (its image was removed, say) is
// listed as Failed, with why, until it is replaced or deleted.
//
// A PUT or PATCH that cannot start its pool (unknown image, runtime not available) is
// refused with errkind.Invalid and changes nothing. Operations are serialized; the data
// plane is not held up by them.

var _ api.Manager = (*ControlPlane)(nil)

// managedPools are the pools defined through the API.
type managedPools struct {
	// records are their stored definitions, by name, running or not.
	records map[string]store.Pool
	// failed are those that could not start when loaded, with the reason.
	failed map[string]error
}

// deleteTimeout bounds the destruction of a deleted pool's sandboxes, which goes on when
// the client that asked for it goes away.
const deleteTimeout = 2 * time.Minute

// startManaged starts the pools stored by the API of an earlier process. It never fails:
// a pool that cannot start is kept as Failed.
func (cp *ControlPlane) startManaged(ctx context.Context) {
	cp.mu.Lock()
	cp.managed = managedPools{records: map[string]store.Pool{}, failed: map[string]error{}}
	cp.mu.Unlock()
	if cp.cfg.Store == nil {
		return
	}
	recs, err := cp.cfg.Store.ListPools(ctx)
	if err != nil {
		// Corrupt records are named in the error; the readable ones are still started.
		cp.log.Error("reading stored pools", "err", err)
	}
	for _, rec := range recs {
		if _, ok := cp.Get(rec.Name); ok {
			cp.log.Warn("pool defined in the configuration file and through the API: the file's definition is used", "pool", rec.Name)
			continue
		}
		err := cp.startStored(ctx, rec)
		cp.mu.Lock()
		cp.managed.records[rec.Name] = rec
		if err != nil {
			cp.managed.failed[rec.Name] = err
		}
		cp.mu.Unlock()
		if err != nil {
			cp.log.Error("starting a pool defined through the API", "pool", rec.Name, "err", err)
		}
	}
}

func (cp *ControlPlane) startStored(ctx context.Context, rec store.Pool) error {
	spec, err := config.PoolFromJSON(rec.Name, rec.Properties)
	if err != nil {
		return fmt.Errorf("reading its stored definition: %w", err)
	}
	if err := cp.start(ctx, spec); err != nil {
		return err
	}
	p, _ := cp.Get(rec.Name)
	p.mu.Lock()
	p.created, p.updated = rec.CreatedAt, rec.UpdatedAt
	p.mu.Unlock()
	return nil
}

// ListPools implements api.Manager.
func (cp *ControlPlane) ListPools(ctx context.Context) ([]api.PoolStatus, error) {
	cp.mu.RLock()
	names := make([]string, 0, len(cp.pools)+len(cp.managed.failed))
	for n := range cp.pools {
		names = append(names, n)
	}
	for n := range cp.managed.failed {
		names = append(names, n)
	}
	cp.mu.RUnlock()
	sort.Strings(names)
	out := make([]api.PoolStatus, 0, len(names))
	for _, n := range names {
		if st, ok := cp.status(n); ok {
			out = append(out, st)
		}
	}
	return out, nil
}

// GetPool implements api.Manager.
func (cp *ControlPlane) GetPool(ctx context.Context, name string) (api.PoolStatus, error) {
	st, ok := cp.status(name)
	if !ok {
		return st, errNoPool(name)
	}
	return st, nil
}

func errNoPool(name string) error {
	return errkind.New(errkind.NotFound, "session pool %q does not exist", name)
}

func errFilePool(name string) error {
	return errkind.New(errkind.AlreadyExists,
		"session pool %q is defined in the configuration file, which the management API does not change: edit the file and restart sessiond", name)
}

// status describes the pool called name.
func (cp *ControlPlane) status(name string) (api.PoolStatus, bool) {
	cp.mu.RLock()
	p, running := cp.pools[name]
	rec, managed := cp.managed.records[name]
	failure := cp.managed.failed[name]
	cp.mu.RUnlock()
	source := api.SourceConfig
	if managed {
		source = api.SourceAPI
	}
	if !running {
		if failure == nil {
			return api.PoolStatus{}, false
		}
		return api.PoolStatus{Name: name, Document: rec.Properties, Source: source, State: api.ProvisioningFailed,
			Message: failure.Error(), CreatedAt: rec.CreatedAt, UpdatedAt: rec.UpdatedAt}, true
	}
	spec := p.Spec()
	st := api.PoolStatus{Name: name, Document: config.Document(spec), Source: source, Runtime: p.Runtime(),
		State: api.ProvisioningSucceeded, Counts: p.Counts()}
	p.mu.Lock()
	st.CreatedAt, st.UpdatedAt = p.created, p.updated
	p.mu.Unlock()
	c := st.Counts
	if state, err := p.Provisioning(); state != ProvisioningSucceeded {
		// A CustomContainer pool whose image is being pulled, or could not be.
		st.State = state
		if err != nil {
			st.Message = err.Error()
		}
		return st, true
	}
	switch {
	case c.CreateFailures > 0:
		st.State, st.Message = api.ProvisioningFailed, fmt.Sprintf("%d sandbox starts failed in a row", c.CreateFailures)
		if err := p.LastError(); err != nil {
			st.Message += ": " + err.Error()
		}
	case c.Outdated > 0 || (spec.ReadySessionInstances > 0 && c.Ready == 0 && c.Allocated == 0 && c.Pending > 0):
		// A template update rolls, or the first sandboxes start.
		st.State = api.ProvisioningInProgress
	}
	return st, true
}

// PutPool implements api.Manager: it creates the pool, or replaces the definition of the
// API's pool of that name (see the comment at the top of the file).
func (cp *ControlPlane) PutPool(ctx context.Context, name string, doc json.RawMessage) (api.PoolStatus, bool, error) {
	cp.manageMu.Lock()
	defer cp.manageMu.Unlock()
	return cp.putLocked(ctx, name, doc)
}

// Preconditions: cp.manageMu is held.
func (cp *ControlPlane) putLocked(ctx context.Context, name string, doc json.RawMessage) (api.PoolStatus, bool, error) {
	spec, err := config.PoolFromJSON(name, doc)
	if err != nil {
		return api.PoolStatus{}, false, err
	}
	cp.mu.RLock()
	p, running := cp.pools[name]
	rec, managed := cp.managed.records[name]
	cp.mu.RUnlock()
	switch {
	case running && !managed:
		return api.PoolStatus{}, false, errFilePool(name)
	case running:
		err = cp.update(ctx, p, rec, spec)
	case managed:
		err = cp.create(ctx, spec, &rec) // replaces a pool that failed to start
	default:
		err = cp.create(ctx, spec, nil)
	}
	if err != nil {
		return api.PoolStatus{}, false, err
	}
	st, _ := cp.status(name)
	return st, !managed, nil
}

// create starts spec's pool and stores it; prev is the stored definition it replaces.
func (cp *ControlPlane) create(ctx context.Context, spec pool.Spec, prev *store.Pool) error {
	if err := cp.start(ctx, spec); err != nil {
		return &errkind.Error{Kind: errkind.Invalid, Public: true, Err: err,
			Msg: fmt.Sprintf("session pool %s cannot start: %v", spec.Name, err)}
	}
	p, _ := cp.Get(spec.Name)
	now := time.Now().UTC()
	rec := store.Pool{Name: spec.Name, Properties: config.Document(spec), Version: 1, CreatedAt: now, UpdatedAt: now}
	if prev != nil {
		rec.Version, rec.CreatedAt = prev.Version+1, prev.CreatedAt
	}
	if cp.cfg.Store != nil {
		if err := cp.cfg.Store.PutPool(context.WithoutCancel(ctx), rec); err != nil {
			cp.remove(spec.Name) // a pull in progress sees it and stops there
			if p.Manager == nil {
				return fmt.Errorf("storing session pool %s: %w", spec.Name, err)
			}
			if cerr := p.Manager.Close(context.WithoutCancel(ctx)); cerr != nil {
				cp.log.Error("closing a pool that could not be stored", "pool", spec.Name, "err", cerr)
			}
			return fmt.Errorf("storing session pool %s: %w", spec.Name, err)
		}
	}
	p.mu.Lock()
	p.created, p.updated = rec.CreatedAt, rec.UpdatedAt
	p.mu.Unlock()
	cp.mu.Lock()
	cp.managed.records[spec.Name] = rec
	delete(cp.managed.failed, spec.Name)
	cp.mu.Unlock()
	cp.log.Info("session pool created", "pool", spec.Name)
	return nil
}

// update changes the running pool p (defined by rec) to spec, and stores it.
func (cp *ControlPlane) update(ctx context.Context, p *Pool, rec store.Pool, spec pool.Spec) error {
	cur := p.Spec()
	if err := config.CheckUpdate(cur, spec); err != nil {
		return err
	}
	if p.Manager == nil {
		state, _ := p.Provisioning()
		return errkind.New(errkind.Unavailable, "session pool %s is %s (its image is pulled or could not be): delete it and create it again", spec.Name, state)
	}
	p.mu.Lock()
	oldImg := p.image
	p.mu.Unlock()
	img := oldImg
	if spec.Image != cur.Image {
		var err error
		if img, err = cp.cfg.Images.Get(ctx, spec.Image); err != nil {
			if errkind.Is(err, errkind.NotFound) {
				return &config.FieldError{Path: "sessiond.image",
					Msg: fmt.Sprintf("image %q not found in the image store (build or pull it first: sessiond image build|pull)", spec.Image)}
			}
			return fmt.Errorf("session pool %s: resolving image %q: %w", spec.Name, spec.Image, err)
		}
	}
	if err := p.Manager.Update(ctx, spec, updateOptions(p, spec, img)); err != nil {
		return err
	}
	now := time.Now().UTC()
	next := rec
	next.Properties, next.Version, next.UpdatedAt = config.Document(spec), rec.Version+1, now
	if cp.cfg.Store != nil {
		if err := cp.cfg.Store.PutPool(context.WithoutCancel(ctx), next); err != nil {
			// Back to what is stored, so that the next start runs what runs now.
			if rerr := p.Manager.Update(context.WithoutCancel(ctx), cur, updateOptions(p, cur, oldImg)); rerr != nil {
				cp.log.Error("reverting a pool update that could not be stored", "pool", spec.Name, "err", rerr)
			}
			return fmt.Errorf("storing session pool %s: %w", spec.Name, err)
		}
	}
	p.mu.Lock()
	if img.ID != p.image.ID || img.RootFS != p.image.RootFS {
		p.image, p.packages, p.kernel = img, packagesOf(img), nil
	}
	p.updated = now
	p.mu.Unlock()
	cp.mu.Lock()
	cp.managed.records[spec.Name] = next
	cp.mu.Unlock()
	cp.log.Info("session pool updated", "pool", spec.Name)
	switch {
	case reflect.DeepEqual(cur, spec):
	case reflect.DeepEqual(withScale(cur, spec), spec):
		cp.poolEvent(spec.Name, events.PoolScaled, fmt.Sprintf("maxConcurrentSessions %d, readySessionInstances %d",
			spec.MaxConcurrentSessions, spec.ReadySessionInstances), false)
	default:
		cp.poolEvent(spec.Name, events.PoolUpdated, fmt.Sprintf("version %d", next.Version), false)
	}
	return nil
}

func updateOptions(p *Pool, spec pool.Spec, img image.Image) pool.UpdateOptions {
	return pool.UpdateOptions{RootFS: img.RootFS, Env: img.Config.Env, Prepare: p.prepare(spec)}
}

// PatchPool implements api.Manager: patch is a JSON merge patch (RFC 7396) of the pool's
// document, which is then put as by PutPool.
func (cp *ControlPlane) PatchPool(ctx context.Context, name string, patch json.RawMessage) (api.PoolStatus, error) {
	cp.manageMu.Lock()
	defer cp.manageMu.Unlock()
	cp.mu.RLock()
	p, running := cp.pools[name]
	rec, managed := cp.managed.records[name]
	cp.mu.RUnlock()
	var doc json.RawMessage
	switch {
	case running && !managed:
		return api.PoolStatus{}, errFilePool(name)
	case running:
		doc = config.Document(p.Spec())
	case managed:
		doc = rec.Properties
	default:
		return api.PoolStatus{}, errNoPool(name)
	}
	merged, err := mergePatch(doc, patch)
	if err != nil {
		return api.PoolStatus{}, err
	}
	st, _, err := cp.putLocked(ctx, name, merged)
	return st, err
}

// mergePatch applies an RFC 7396 JSON merge patch, which must be an object, to doc.
func mergePatch(doc, patch []byte) (json.RawMessage, error) {
	decode := func(b []byte) (any, error) {
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.UseNumber()
		var v any
		err := dec.Decode(&v)
		return v, err
	}
	p, err := decode(patch)
	if err != nil {
		return nil, errkind.New(errkind.Invalid, "the merge patch is not valid JSON: %v", err)
	}
	if _, ok := p.(map[string]any); !ok {
		return nil, errkind.New(errkind.Invalid, "the merge patch of a pool must be a JSON object")
	}
	d, err := decode(doc)
	if err != nil {
		return nil, fmt.Errorf("decoding the pool's document: %w", err)
	}
	b, err := json.Marshal(mergeValue(d, p))
	if err != nil {
		return nil, fmt.Errorf("encoding the patched document: %w", err)
	}
	return b, nil
}

// mergeValue is RFC 7396's MergePatch(target, patch).
func mergeValue(target, patch any) any {
	po, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	to, ok := target.(map[string]any)
	if !ok {
		to = map[string]any{}
	}
	for k, v := range po {
		if v == nil {
			delete(to, k)
		} else {
			to[k] = mergeValue(to[k], v)
		}
	}
	return to
}

// DeletePool implements api.Manager: the pool stops taking requests at once, its
// sandboxes (sessions included) are destroyed, and its records are deleted.
func (cp *ControlPlane) DeletePool(ctx context.Context, name string) error {
	cp.manageMu.Lock()
	defer cp.manageMu.Unlock()
	cp.mu.RLock()
	p, running := cp.pools[name]
	_, managed := cp.managed.records[name]
	cp.mu.RUnlock()
	switch {
	case running && !managed:
		return errFilePool(name)
	case !managed:
		return errNoPool(name)
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), deleteTimeout)
	defer cancel()
	var errs []error
	if running && p.Manager != nil {
		cp.remove(name)
		if err := p.Manager.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("destroying the sandboxes of session pool %s: %w", name, err))
		}
	}
	if running && p.Manager == nil {
		cp.remove(name) // a pull in progress sees it and closes what it built
	}
	if err := cp.deleteRecords(ctx, name); err != nil {
		errs = append(errs, err)
	}
	cp.mu.Lock()
	delete(cp.managed.records, name)
	delete(cp.managed.failed, name)
	cp.mu.Unlock()
	cp.log.Info("session pool deleted", "pool", name)
	cp.poolEvent(name, events.PoolStopped, "deleted", true) // forgotten: nothing of it stays
	return errors.Join(errs...)
}

// deleteRecords deletes the records of pool name: its definition, and whatever session
// and execution records are left once the session writes in flight are written.
func (cp *ControlPlane) deleteRecords(ctx context.Context, name string) error {
	if cp.cfg.Store == nil {
		return nil
	}
	if cp.rec != nil {
		if err := cp.rec.Flush(ctx); err != nil {
			return fmt.Errorf("deleting the records of session pool %s: %w", name, err)
		}
	}
	ops := []store.Op{store.DeleteOp(store.PoolKey(name))}
	sessions, err := cp.cfg.Store.ListSessions(ctx, name)
	for _, s := range sessions {
		ops = append(ops, store.DeleteOp(store.SessionKey(name, s.Identifier)))
	}
	execs, eerr := cp.cfg.Store.ListExecutions(ctx, name)
	for _, e := range execs {
		ops = append(ops, store.DeleteOp(store.ExecutionKey(name, e.Identifier, e.ID)))
	}
	// Corrupt records (err, eerr) cannot be listed: they are left, and reported.
	if aerr := cp.cfg.Store.Apply(ctx, ops); aerr != nil {
		err = errors.Join(err, aerr)
	}
	if err = errors.Join(err, eerr); err != nil {
		return fmt.Errorf("deleting the records of session pool %s: %w", name, err)
	}
	return nil
}

// remove takes pool name out of the set of running pools.
func (cp *ControlPlane) remove(name string) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	delete(cp.pools, name)
	if i := slices.Index(cp.order, name); i >= 0 {
		cp.order = slices.Delete(cp.order, i, i+1)
	}
}

// withScale returns cur with next's scale properties: equal to next when only those changed.
func withScale(cur, next pool.Spec) pool.Spec {
	cur.MaxConcurrentSessions, cur.ReadySessionInstances = next.MaxConcurrentSessions, next.ReadySessionInstances
	return cur
}
