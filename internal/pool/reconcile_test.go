package pool

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sessiond/sessiond/internal/errkind"
)

func TestReconcile(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	base := policy{
		Spec: Spec{Name: "t", MaxConcurrentSessions: 3, ReadySessionInstances: 2,
			LifecycleType: LifecycleTimed, CooldownPeriod: time.Minute},
		CreateParallelism: 2, DestroyParallelism: 2, ProbeParallelism: 2,
		HealthInterval: 5 * time.Second, ProbeRetry: time.Second, DeadAfter: 2, SurplusGrace: 30 * time.Second,
	}
	with := func(f func(*policy)) policy {
		p := base
		f(&p)
		return p
	}
	later := now.Add(time.Hour)
	ready := func(id string) sbView { return sbView{ID: id, State: StateReady, NextProbe: later} }
	pending := func(id string) sbView { return sbView{ID: id, State: StatePending} }
	alloc := func(id, identifier string, at, last time.Time, leases int) sbView {
		return sbView{ID: id, State: StateAllocated, Identifier: identifier, AllocatedAt: at, LastAccess: last, Leases: leases, NextProbe: later}
	}
	create := action{Kind: actCreate}
	wake := func(t time.Time) action { return action{Kind: actWake, At: t} }
	retire := func(id, reason string) action { return action{Kind: actRetire, ID: id, Reason: reason} }
	destroy := func(id string) action { return action{Kind: actDestroy, ID: id} }
	probe := func(id string) action { return action{Kind: actProbe, ID: id} }

	tests := []struct {
		name string
		pol  policy
		obs  observed
		fl   inFlight
		want []action
	}{
		{name: "empty pool fills its ready target", pol: base,
			want: []action{create, create}},
		{name: "refill waits for the delay after a bind while ready sandboxes remain",
			pol:  with(func(p *policy) { p.RefillDelay = 300 * time.Millisecond }),
			obs:  observed{Sandboxes: []sbView{ready("r1"), alloc("a1", "id-1", now, now, 1)}, LastDemand: now.Add(-100 * time.Millisecond)},
			want: []action{wake(now.Add(200 * time.Millisecond))}},
		{name: "refill goes ahead once the delay has passed",
			pol:  with(func(p *policy) { p.RefillDelay = 300 * time.Millisecond }),
			obs:  observed{Sandboxes: []sbView{ready("r1"), alloc("a1", "id-1", now, now, 1)}, LastDemand: now.Add(-300 * time.Millisecond)},
			want: []action{create, wake(later)}},
		{name: "no refill delay when the ready queue is empty",
			pol:  with(func(p *policy) { p.RefillDelay = 300 * time.Millisecond }),
			obs:  observed{Sandboxes: []sbView{alloc("a1", "id-1", now, now, 1)}, LastDemand: now},
			want: []action{create, create, wake(later)}},
		{name: "no refill delay for a waiting cold start",
			pol:  with(func(p *policy) { p.RefillDelay = 300 * time.Millisecond; p.Spec.ReadySessionInstances = 1 }),
			obs:  observed{Sandboxes: []sbView{ready("r1")}, LastDemand: now, Waiting: 1},
			want: []action{create, wake(later)}},
		{name: "creates are bounded by the parallelism", pol: with(func(p *policy) { p.Spec.ReadySessionInstances = 5 }),
			want: []action{create, create}},
		{name: "creates in flight are counted", pol: base,
			obs:  observed{Sandboxes: []sbView{pending("p1")}},
			fl:   inFlight{Creates: 1},
			want: []action{create}},
		{name: "nothing to do when the target is met", pol: base,
			obs:  observed{Sandboxes: []sbView{ready("r1"), ready("r2")}},
			want: []action{wake(later)}},
		{name: "waiting identifiers add cold starts", pol: base,
			obs:  observed{Sandboxes: []sbView{pending("p1"), pending("p2")}, Waiting: 1},
			fl:   inFlight{Creates: 2},
			want: nil},
		{name: "a waiting identifier with an empty target", pol: with(func(p *policy) { p.Spec.ReadySessionInstances = 0 }),
			obs:  observed{Waiting: 1},
			want: []action{create}},
		{name: "the total cap holds ready+pending+allocated", pol: with(func(p *policy) { p.Spec.MaxConcurrentSessions = 2; p.CreateParallelism = 5 }),
			obs: observed{Sandboxes: []sbView{
				alloc("a1", "x", now, now, 1), alloc("a2", "y", now, now, 1), ready("r1")}},
			want: []action{create, wake(later)}},
		{name: "back-off delays creates", pol: base,
			obs:  observed{CreateAfter: now.Add(4 * time.Second)},
			want: []action{wake(now.Add(4 * time.Second))}},
		{name: "back-off ends exactly on time", pol: base,
			obs:  observed{CreateAfter: now},
			want: []action{create, create}},
		{name: "cooldown expires exactly", pol: base,
			obs:  observed{Sandboxes: []sbView{ready("r1"), ready("r2"), alloc("a1", "x", now.Add(-time.Hour), now.Add(-time.Minute), 0)}},
			want: []action{retire("a1", reasonCooldown), destroy("a1"), wake(later)}},
		{name: "cooldown not yet", pol: base,
			obs:  observed{Sandboxes: []sbView{ready("r1"), ready("r2"), alloc("a1", "x", now.Add(-time.Hour), now.Add(-time.Minute+1), 0)}},
			want: []action{wake(now.Add(1))}},
		{name: "a held lease stops the cooldown", pol: base,
			obs:  observed{Sandboxes: []sbView{ready("r1"), ready("r2"), alloc("a1", "x", now.Add(-time.Hour), now.Add(-time.Hour), 1)}},
			want: []action{wake(later)}},
		{name: "max-alive expires even with a lease", pol: with(func(p *policy) { p.Spec.MaxAlivePeriod = time.Hour }),
			obs:  observed{Sandboxes: []sbView{ready("r1"), ready("r2"), alloc("a1", "x", now.Add(-time.Hour), now, 1)}},
			want: []action{retire("a1", reasonMaxAlive), destroy("a1"), wake(later)}},
		{name: "max-alive before cooldown", pol: with(func(p *policy) { p.Spec.MaxAlivePeriod = 90 * time.Second }),
			obs:  observed{Sandboxes: []sbView{ready("r1"), ready("r2"), alloc("a1", "x", now.Add(-time.Minute), now, 0)}},
			want: []action{wake(now.Add(30 * time.Second))}},
		{name: "OnContainerExit has no cooldown", pol: with(func(p *policy) { p.Spec.LifecycleType = LifecycleOnContainerExit }),
			obs:  observed{Sandboxes: []sbView{ready("r1"), ready("r2"), alloc("a1", "x", now.Add(-time.Hour), now.Add(-time.Hour), 0)}},
			want: []action{wake(later)}},
		{name: "a dead ready sandbox is replaced", pol: base,
			obs:  observed{Sandboxes: []sbView{ready("r1"), {ID: "r2", State: StateReady, ProbeFailures: 2, NextProbe: later}}},
			want: []action{retire("r2", reasonDead), create, destroy("r2"), wake(later)}},
		{name: "one failed probe is not death", pol: base,
			obs:  observed{Sandboxes: []sbView{ready("r1"), {ID: "r2", State: StateReady, ProbeFailures: 1, NextProbe: now}}},
			want: []action{probe("r2"), wake(later)}},
		{name: "a dead session is dropped", pol: base,
			obs:  observed{Sandboxes: []sbView{ready("r1"), ready("r2"), {ID: "a1", State: StateAllocated, Identifier: "x", AllocatedAt: now, LastAccess: now, ProbeFailures: 2}}},
			want: []action{retire("a1", reasonDead), destroy("a1"), wake(later)}},
		{name: "probes are due and bounded", pol: with(func(p *policy) { p.ProbeParallelism = 1; p.Spec.ReadySessionInstances = 3 }),
			obs: observed{Sandboxes: []sbView{
				{ID: "r1", State: StateReady, NextProbe: now}, {ID: "r2", State: StateReady, NextProbe: now},
				{ID: "r3", State: StateReady, NextProbe: now.Add(time.Second), Probing: false}}},
			want: []action{probe("r1"), wake(now.Add(time.Second))}},
		{name: "destroys are bounded", pol: with(func(p *policy) { p.DestroyParallelism = 1 }),
			obs: observed{Sandboxes: []sbView{ready("r1"), ready("r2"),
				{ID: "d1", State: StateDeleting}, {ID: "d2", State: StateDeleting}}},
			want: []action{destroy("d1"), wake(later)}},
		{name: "a failed destroy waits for its retry", pol: base,
			obs: observed{Sandboxes: []sbView{ready("r1"), ready("r2"),
				{ID: "d1", State: StateDeleting, DestroyAfter: now.Add(5 * time.Second)}}},
			want: []action{wake(now.Add(5 * time.Second))}},
		{name: "no destroy while a probe is in flight", pol: base,
			obs: observed{Sandboxes: []sbView{ready("r1"), ready("r2"),
				{ID: "d1", State: StateDeleting, Probing: true}}},
			fl:   inFlight{Probes: 1},
			want: []action{wake(later)}},
		{name: "surplus waits while demand is recent", pol: base,
			obs:  observed{Sandboxes: []sbView{ready("r1"), ready("r2"), ready("r3")}, LastDemand: now.Add(-10 * time.Second)},
			want: []action{wake(now.Add(20 * time.Second))}},
		{name: "surplus goes once demand is quiet, newest first", pol: base,
			obs:  observed{Sandboxes: []sbView{ready("r1"), ready("r2"), ready("r3"), ready("r4")}, LastDemand: now.Add(-30 * time.Second)},
			want: []action{retire("r4", reasonSurplus), retire("r3", reasonSurplus), destroy("r3"), destroy("r4"), wake(later)}},
		{name: "closing destroys everything and creates nothing", pol: base,
			obs: observed{Closing: true, Waiting: 1, Sandboxes: []sbView{
				ready("r1"), pending("p1"), alloc("a1", "x", now, now, 1), {ID: "d1", State: StateDeleting, Destroying: true}}},
			fl:   inFlight{Creates: 1, Destroys: 1},
			want: []action{retire("r1", reasonClosing), retire("a1", reasonClosing), destroy("r1")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := reconcile(tt.pol, tt.obs, tt.fl, now)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("reconcile (-want +got):\n%s", diff)
			}
		})
	}
}

func TestExpiry(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	sb := sbView{AllocatedAt: t0, LastAccess: t0.Add(time.Minute)}
	tests := []struct {
		name       string
		spec       Spec
		leases     int
		wantReason string
		want       time.Time
	}{
		{"cooldown", Spec{LifecycleType: LifecycleTimed, CooldownPeriod: 5 * time.Minute}, 0, reasonCooldown, t0.Add(6 * time.Minute)},
		{"lease held", Spec{LifecycleType: LifecycleTimed, CooldownPeriod: 5 * time.Minute}, 1, "", time.Time{}},
		{"max-alive first", Spec{LifecycleType: LifecycleTimed, CooldownPeriod: 5 * time.Minute, MaxAlivePeriod: 2 * time.Minute}, 0, reasonMaxAlive, t0.Add(2 * time.Minute)},
		{"cooldown first", Spec{LifecycleType: LifecycleTimed, CooldownPeriod: 5 * time.Minute, MaxAlivePeriod: time.Hour}, 0, reasonCooldown, t0.Add(6 * time.Minute)},
		{"max-alive with a lease", Spec{LifecycleType: LifecycleTimed, CooldownPeriod: 5 * time.Minute, MaxAlivePeriod: time.Hour}, 3, reasonMaxAlive, t0.Add(time.Hour)},
		{"on container exit", Spec{LifecycleType: LifecycleOnContainerExit}, 0, "", time.Time{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := sb
			v.Leases = tt.leases
			reason, at := expiry(tt.spec, v)
			if reason != tt.wantReason || !at.Equal(tt.want) {
				t.Errorf("expiry = %q %v, want %q %v", reason, at, tt.wantReason, tt.want)
			}
		})
	}
}

func TestCreateBackoff(t *testing.T) {
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second}
	for i, w := range want {
		if got := createBackoff(i + 1); got != w {
			t.Errorf("createBackoff(%d) = %v, want %v", i+1, got, w)
		}
	}
}

func TestSpecValidate(t *testing.T) {
	good := Spec{Name: "my-pool", MaxConcurrentSessions: 10, ReadySessionInstances: 2, CooldownPeriod: time.Minute}
	if s, err := good.Validate(); err != nil || s.LifecycleType != LifecycleTimed {
		t.Fatalf("Validate(good) = %+v, %v", s, err)
	}
	tests := []struct {
		field string
		edit  func(*Spec)
	}{
		{"name", func(s *Spec) { s.Name = "My_Pool" }},
		{"name", func(s *Spec) { s.Name = "ab" }},
		{"name", func(s *Spec) { s.Name = "pool-" }},
		{"containerType", func(s *Spec) { s.ContainerType = "Python" }},
		{"maxConcurrentSessions", func(s *Spec) { s.MaxConcurrentSessions = 0 }},
		{"readySessionInstances", func(s *Spec) { s.ReadySessionInstances = -1 }},
		{"lifecycleType", func(s *Spec) { s.LifecycleType = "Forever" }},
		{"cooldownPeriodInSeconds", func(s *Spec) { s.CooldownPeriod = 0 }},
		{"cooldownPeriodInSeconds", func(s *Spec) { s.LifecycleType = LifecycleOnContainerExit }},
		{"maxAlivePeriodInSeconds", func(s *Spec) { s.MaxAlivePeriod = -time.Second }},
		{"limits", func(s *Spec) { s.Limits.MemoryBytes = -1 }},
	}
	for _, tt := range tests {
		s := good
		tt.edit(&s)
		_, err := s.Validate()
		if err == nil || !errkindIsInvalid(err) || !contains(err.Error(), tt.field) {
			t.Errorf("Validate(%+v) = %v, want Invalid naming %s", s, err, tt.field)
		}
	}
}

func errkindIsInvalid(err error) bool { return errkind.Is(err, errkind.Invalid) }

func contains(s, sub string) bool { return strings.Contains(s, sub) }
