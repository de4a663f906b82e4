package controlplane_test

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/api"
	"github.com/sessiond/sessiond/internal/config"
	"github.com/sessiond/sessiond/internal/controlplane"
	"github.com/sessiond/sessiond/internal/controlplane/controlplanetest"
	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/pool"
	"github.com/sessiond/sessiond/internal/sandbox"
	"github.com/sessiond/sessiond/internal/store"
)

// filePool is a pool of the "configuration file".
var filePool = pool.Spec{Name: "file-pool", ContainerType: pool.Shell, MaxConcurrentSessions: 2, ReadySessionInstances: 0,
	LifecycleType: pool.LifecycleTimed, CooldownPeriod: time.Minute, ExecutionTimeoutCap: time.Minute}

const shellDoc = `{"properties": {"containerType": "Shell",
  "scaleConfiguration": {"maxConcurrentSessions": 4, "readySessionInstances": 1},
  "dynamicPoolConfiguration": {"lifecycleConfiguration": {"lifecycleType": "Timed", "cooldownPeriodInSeconds": 60, "maxAlivePeriodInSeconds": 3600}}},
  "sessiond": {"image": "img-a"}}`

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

func specOf(t *testing.T, st api.PoolStatus) pool.Spec {
	t.Helper()
	s, err := config.PoolFromJSON(st.Name, st.Document)
	if err != nil {
		t.Fatalf("the document of %s does not read back: %v\n%s", st.Name, err, st.Document)
	}
	return s
}

func wantKind(t *testing.T, what string, err error, k errkind.Kind, field string) {
	t.Helper()
	if !errkind.Is(err, k) {
		t.Errorf("%s: %v, want %v", what, err, k)
		return
	}
	if field != "" {
		var fe *config.FieldError
		if !errors.As(err, &fe) || fe.Path != field {
			t.Errorf("%s: %v does not name the field %s", what, err, field)
		}
	}
}

// TestPoolCRUD creates, reads, replaces, patches and deletes a pool, and checks what
// cannot be done to it and to the configuration file's pool.
func TestPoolCRUD(t *testing.T) {
	e := controlplanetest.New(t, filePool)
	cp := e.CP
	st, created, err := cp.PutPool(ctx(t), "api-pool", json.RawMessage(shellDoc))
	if err != nil || !created {
		t.Fatalf("PutPool = %v, created %v", err, created)
	}
	if st.Source != api.SourceAPI || st.Runtime != "fake" || st.CreatedAt.IsZero() {
		t.Errorf("status = %+v", st)
	}
	spec := specOf(t, st)
	if spec.ContainerType != pool.Shell || spec.MaxConcurrentSessions != 4 || spec.MaxAlivePeriod != time.Hour || spec.Image != "img-a" {
		t.Errorf("spec = %+v", spec)
	}
	e.WaitReady(t, "api-pool", 1)
	p, _ := cp.Get("api-pool")
	ready := p.Counts()

	// The data plane sees it.
	if _, ok := cp.Pool("api-pool"); !ok {
		t.Fatal("the data plane does not see the new pool")
	}

	// A GET document PUTs back unchanged: nothing is replaced.
	got, err := cp.GetPool(ctx(t), "api-pool")
	if err != nil {
		t.Fatal(err)
	}
	st, created, err = cp.PutPool(ctx(t), "api-pool", got.Document)
	if err != nil || created {
		t.Fatalf("PutPool of the GET document = %v, created %v", err, created)
	}
	if c := p.Counts(); c.Outdated != 0 || c != ready {
		t.Errorf("putting the same document back changed the pool: %+v, before %+v", c, ready)
	}
	if string(st.Document) != string(got.Document) {
		t.Errorf("document changed:\n%s\n%s", got.Document, st.Document)
	}

	// Merge patches: a change, a removal (null: back to the default), unknown fields.
	st, err = cp.PatchPool(ctx(t), "api-pool", json.RawMessage(`{"properties": {"scaleConfiguration": {"maxConcurrentSessions": 3},
		"dynamicPoolConfiguration": {"lifecycleConfiguration": {"maxAlivePeriodInSeconds": null}}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if s := specOf(t, st); s.MaxConcurrentSessions != 3 || s.ReadySessionInstances != 1 || s.MaxAlivePeriod != 0 || s.CooldownPeriod != time.Minute {
		t.Errorf("patched spec = %+v", s)
	}
	if s := p.Spec(); s.MaxConcurrentSessions != 3 || s.MaxAlivePeriod != 0 {
		t.Errorf("the running pool's spec = %+v", s)
	}
	st, err = cp.PatchPool(ctx(t), "api-pool", json.RawMessage(`{"properties": {"scaleConfiguration": null}}`))
	if s := specOf(t, st); err != nil || s.MaxConcurrentSessions != pool.DefaultMaxConcurrentSessions || s.ReadySessionInstances != pool.DefaultReadySessionInstances {
		t.Errorf("removing scaleConfiguration: %v, %+v", err, s)
	}
	_, err = cp.PatchPool(ctx(t), "api-pool", json.RawMessage(`{"properties": {"scaleConfiguration": {"maxSessions": 3}}}`))
	wantKind(t, "unknown field", err, errkind.Invalid, "properties.scaleConfiguration.maxSessions")
	_, err = cp.PatchPool(ctx(t), "api-pool", json.RawMessage(`{"properties": {"containerType": "PythonLTS"}}`))
	wantKind(t, "changing containerType", err, errkind.Invalid, "properties.containerType")
	_, err = cp.PatchPool(ctx(t), "api-pool", json.RawMessage(`{"sessiond": {"runtime": "runc"}}`))
	wantKind(t, "changing runtime", err, errkind.Invalid, "sessiond.runtime")
	_, err = cp.PatchPool(ctx(t), "api-pool", json.RawMessage(`{"sessiond": {"image": "no-such-image"}}`))
	wantKind(t, "unknown image", err, errkind.Invalid, "sessiond.image")
	_, err = cp.PatchPool(ctx(t), "api-pool", json.RawMessage(`["not", "an", "object"]`))
	wantKind(t, "patch not an object", err, errkind.Invalid, "")
	if s := p.Spec(); s.Image != "img-a" || s.Runtime != "" || s.ContainerType != pool.Shell {
		t.Errorf("refused patches changed the pool: %+v", s)
	}

	// Creating pools that cannot start changes nothing.
	_, _, err = cp.PutPool(ctx(t), "bad-image", json.RawMessage(`{"sessiond": {"image": "no-such-image"}}`))
	wantKind(t, "create with an unknown image", err, errkind.Invalid, "")
	_, _, err = cp.PutPool(ctx(t), "bad-runtime", json.RawMessage(`{"properties": {"containerType": "Shell"}, "sessiond": {"runtime": "runsc", "image": "img-a"}}`))
	wantKind(t, "create on a missing runtime", err, errkind.Invalid, "")
	_, _, err = cp.PutPool(ctx(t), "bad-value", json.RawMessage(`{"properties": {"scaleConfiguration": {"readySessionInstances": -1}}}`))
	wantKind(t, "create with a bad value", err, errkind.Invalid, "properties.scaleConfiguration.readySessionInstances")

	// The configuration file's pool is read-only.
	fst, err := cp.GetPool(ctx(t), "file-pool")
	if err != nil || fst.Source != api.SourceConfig || !reflect.DeepEqual(specOf(t, fst), e.Specs[0]) {
		t.Errorf("GetPool(file-pool) = %+v, %v", fst, err)
	}
	_, _, err = cp.PutPool(ctx(t), "file-pool", fst.Document)
	wantKind(t, "PUT on a file pool", err, errkind.AlreadyExists, "")
	_, err = cp.PatchPool(ctx(t), "file-pool", json.RawMessage(`{}`))
	wantKind(t, "PATCH on a file pool", err, errkind.AlreadyExists, "")
	wantKind(t, "DELETE of a file pool", cp.DeletePool(ctx(t), "file-pool"), errkind.AlreadyExists, "")

	list, err := cp.ListPools(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range list {
		names = append(names, s.Name+":"+s.Source)
	}
	if !slices.Equal(names, []string{"api-pool:api", "file-pool:config"}) {
		t.Errorf("ListPools = %v", names)
	}
	recs, _ := e.Store.ListPools(ctx(t))
	if len(recs) != 1 || recs[0].Name != "api-pool" || recs[0].Version != 4 {
		t.Errorf("stored pools = %+v", recs)
	}

	// Delete: its sandboxes and records go; it is gone for the data plane too.
	l, err := p.Acquire(ctx(t), "session-1")
	if err != nil {
		t.Fatal(err)
	}
	l.Release()
	if err := cp.DeletePool(ctx(t), "api-pool"); err != nil {
		t.Fatal(err)
	}
	if _, err := cp.GetPool(ctx(t), "api-pool"); !errkind.Is(err, errkind.NotFound) {
		t.Errorf("GetPool after delete: %v", err)
	}
	if _, ok := cp.Pool("api-pool"); ok {
		t.Error("the data plane still sees the deleted pool")
	}
	wantKind(t, "deleting again", cp.DeletePool(ctx(t), "api-pool"), errkind.NotFound, "")
	_, err = cp.PatchPool(ctx(t), "api-pool", json.RawMessage(`{}`))
	wantKind(t, "patching a deleted pool", err, errkind.NotFound, "")
	if recs, _ := e.Store.ListPools(ctx(t)); len(recs) != 0 {
		t.Errorf("stored pools after delete: %+v", recs)
	}
	if ss, _ := e.Store.ListSessions(ctx(t), "api-pool"); len(ss) != 0 {
		t.Errorf("session records after delete: %+v", ss)
	}
	if infos, _ := e.Runtime.List(ctx(t)); len(infos) != 0 {
		t.Errorf("sandboxes after delete: %+v", infos)
	}
	// The event log hears of it: started, updated (a lifecycle change), scaled, and
	// forgotten with the pool.
	want := []string{"file-pool PoolStarted", "api-pool PoolStarted", "api-pool PoolUpdated", "api-pool PoolScaled", "api-pool forget"}
	evs := e.PoolEvents()
	for i, w := 0, 0; w < len(want); i++ {
		if i == len(evs) {
			t.Errorf("pool events %q, want %q in this order", evs, want)
			break
		}
		if evs[i] == want[w] {
			w++
		}
	}
}

// TestUpdateRollsWithoutTouchingSessions: a new image replaces the ready sandboxes, and
// an allocated session keeps its sandbox and its files.
func TestUpdateRollsWithoutTouchingSessions(t *testing.T) {
	e := controlplanetest.New(t)
	cp := e.CP
	if _, _, err := cp.PutPool(ctx(t), "roll", json.RawMessage(shellDoc)); err != nil {
		t.Fatal(err)
	}
	e.WaitReady(t, "roll", 1)
	p, _ := cp.Get("roll")
	l, err := p.Acquire(ctx(t), "alice-1")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	if _, err := l.Agent.Exec(ctx(t), agentapi.ExecRequest{Shell: "echo kept > state.txt"}); err != nil {
		t.Fatal(err)
	}
	e.WaitReady(t, "roll", 1)
	md, _ := p.Metadata(ctx(t))

	st, err := cp.PatchPool(ctx(t), "roll", json.RawMessage(`{"sessiond": {"image": "img-b"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if st.State != api.ProvisioningInProgress && st.Counts.Outdated == 0 {
		// The roll may have finished already on a fast machine.
		t.Logf("status right after the update: %+v", st)
	}
	e.WaitReady(t, "roll", 1)
	infos, _ := e.Runtime.List(ctx(t))
	var images []string
	for _, i := range infos {
		if i.ID != l.Session.SandboxID {
			images = append(images, i.Image)
		}
	}
	if !slices.Equal(images, []string{"img-b"}) {
		t.Errorf("images of the other sandboxes after the update: %v", images)
	}
	again, err := p.Acquire(ctx(t), "alice-1")
	if err != nil {
		t.Fatal(err)
	}
	defer again.Release()
	res, err := again.Agent.Exec(ctx(t), agentapi.ExecRequest{Shell: "cat state.txt; echo $IMAGE"})
	if again.Session.SandboxID != l.Session.SandboxID || err != nil || res.Stdout != "kept\nimg-a\n" {
		t.Errorf("alice after the update: sandbox %s (was %s), %q, %v", again.Session.SandboxID, l.Session.SandboxID, res.Stdout, err)
	}
	bob, err := p.Acquire(ctx(t), "bob-2")
	if err != nil {
		t.Fatal(err)
	}
	defer bob.Release()
	if res, err := bob.Agent.Exec(ctx(t), agentapi.ExecRequest{Shell: "echo $IMAGE"}); err != nil || res.Stdout != "img-b\n" {
		t.Errorf("a new session after the update: %q, %v", res.Stdout, err)
	}
	st, _ = cp.GetPool(ctx(t), "roll")
	md2, _ := p.Metadata(ctx(t))
	if st.State != api.ProvisioningSucceeded || !md2.UpdatedAt.After(md.UpdatedAt) || !st.UpdatedAt.Equal(md2.UpdatedAt) {
		t.Errorf("after the roll: %+v; metadata updated %v, before %v", st, md2.UpdatedAt, md.UpdatedAt)
	}
}

// TestAPIPoolsSurviveRestart: pools created through the API are started again by the
// next process, with their sessions; a stored pool the file also declares is the file's;
// a stored pool that cannot start is listed as Failed and can be deleted.
func TestAPIPoolsSurviveRestart(t *testing.T) {
	e := controlplanetest.New(t, filePool)
	cp := e.CP
	st, _, err := cp.PutPool(ctx(t), "kept", json.RawMessage(shellDoc))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cp.PatchPool(ctx(t), "kept", json.RawMessage(`{"sessiond": {"image": "img-b"}}`)); err != nil {
		t.Fatal(err)
	}
	before, _ := cp.GetPool(ctx(t), "kept")
	p, _ := cp.Get("kept")
	l, err := p.Acquire(ctx(t), "carol-3")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Agent.Exec(ctx(t), agentapi.ExecRequest{Shell: "echo 42 > answer"}); err != nil {
		t.Fatal(err)
	}
	l.Release()
	// A stored pool whose image will be gone, and one the file also declares.
	if _, _, err := cp.PutPool(ctx(t), "doomed", json.RawMessage(`{"properties": {"containerType": "Shell", "scaleConfiguration": {"readySessionInstances": 0}}, "sessiond": {"image": "img-a"}}`)); err != nil {
		t.Fatal(err)
	}
	doc := config.Document(pool.Spec{Name: "file-pool", ContainerType: pool.Shell, MaxConcurrentSessions: 9, ReadySessionInstances: 0,
		LifecycleType: pool.LifecycleTimed, CooldownPeriod: time.Minute, Image: "img-b", ExecutionTimeoutCap: time.Minute})
	if err := e.Store.PutPool(ctx(t), storePool("file-pool", doc)); err != nil {
		t.Fatal(err)
	}
	bad := json.RawMessage(`{"sessiond": {"image": "img-gone"}}`)
	if err := e.Store.PutPool(ctx(t), storePool("doomed", bad)); err != nil {
		t.Fatal(err)
	}

	e.Restart(t)
	cp = e.CP
	after, err := cp.GetPool(ctx(t), "kept")
	if err != nil {
		t.Fatal(err)
	}
	if string(after.Document) != string(before.Document) || !after.CreatedAt.Equal(st.CreatedAt) || after.Source != api.SourceAPI {
		t.Errorf("after the restart: %+v\nbefore: %+v", after, before)
	}
	p, _ = cp.Get("kept")
	l, err = p.Get(ctx(t), "carol-3")
	if err != nil {
		t.Fatalf("the session did not survive the restart: %v", err)
	}
	res, err := l.Agent.Exec(ctx(t), agentapi.ExecRequest{Shell: "cat answer"})
	l.Release()
	if err != nil || res.Stdout != "42\n" {
		t.Errorf("the session's file after the restart: %q, %v", res.Stdout, err)
	}
	if fst, _ := cp.GetPool(ctx(t), "file-pool"); fst.Source != api.SourceConfig || !reflect.DeepEqual(specOf(t, fst), e.Specs[0]) {
		t.Errorf("the file's pool after the restart: %+v", fst)
	}
	dst, err := cp.GetPool(ctx(t), "doomed")
	if err != nil || dst.State != api.ProvisioningFailed || !strings.Contains(dst.Message, "img-gone") {
		t.Errorf("the pool that cannot start: %+v, %v", dst, err)
	}
	if _, ok := cp.Pool("doomed"); ok {
		t.Error("the data plane sees a pool that did not start")
	}
	// A failed pool can be replaced (PATCH of its stored document) or deleted.
	if st, err := cp.PatchPool(ctx(t), "doomed", json.RawMessage(`{"properties": {"containerType": "Shell"}, "sessiond": {"image": "img-a"}}`)); err != nil || st.State == api.ProvisioningFailed {
		t.Errorf("repairing the failed pool: %+v, %v", st, err)
	}
	if err := cp.DeletePool(ctx(t), "doomed"); err != nil {
		t.Fatal(err)
	}
	list, _ := cp.ListPools(ctx(t))
	if len(list) != 2 {
		t.Errorf("pools after deleting the failed one: %+v", list)
	}
}

func storePool(name string, doc json.RawMessage) store.Pool {
	now := time.Now().UTC()
	return store.Pool{Name: name, Properties: doc, Version: 1, CreatedAt: now, UpdatedAt: now}
}

// TestNewFailsCleanly starts a control plane whose second pool cannot start (its image is
// missing): New returns the reason, and the first pool's sandboxes are gone again.
func TestNewFailsCleanly(t *testing.T) {
	e := controlplanetest.New(t)
	good := filePool
	good.Name, good.Image, good.ReadySessionInstances = "good", controlplanetest.Images[0], 1
	bad := filePool
	bad.Name, bad.Image = "bad", "no-such-image"
	cp, err := controlplane.New(ctx(t), controlplane.Config{
		OpenRuntime: func(string) (sandbox.Runtime, error) { return e.Runtime, nil },
		Images:      e.Images, RefillDelay: -1,
	}, []pool.Spec{good, bad})
	if err == nil {
		cp.Close(ctx(t))
		t.Fatal("New succeeded with a pool whose image is missing")
	}
	if !strings.Contains(err.Error(), "no-such-image") {
		t.Errorf("New: %v, want the missing image named", err)
	}
	infos, err := e.Runtime.List(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 0 {
		t.Errorf("%d sandboxes left after the failed start: %+v", len(infos), infos)
	}
}
