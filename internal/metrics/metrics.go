// Package metrics measures sessiond for Prometheus: each pool's ready, pending and
// allocated sessions (Azure's PoolReadyPodCount, PoolPendingPodCount and
// PoolExecutingPodCount), allocation latency, sandbox start time by phase, execution
// latency and outcomes, custom-container proxy latency, evictions by reason, sandbox
// failures, and HTTP requests by operation and status, plus the Go runtime's and the
// process's own metrics.
//
// Metrics live in the Metrics' own registry, never in the global one, and are served by
// Handler (internal/api mounts it at GET /metrics). Labels are bounded: pool names (which
// the operator defines), API operation names (constants of the route table), and small
// closed sets of reasons, phases and outcomes, where any value outside the set is counted
// as "other". Session identifiers, sandbox IDs and error texts are never labels.
//
// A Metrics is a pool.Observer, and the API calls Request, Execution and Proxy. Every
// method is safe for concurrent use and does nothing on a nil *Metrics, so a component
// built without metrics needs no checks. Imported by internal/api and cmd/sessiond.
package metrics

import (
	"context"
	"errors"
	"net/http"
	"regexp"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sessiond/sessiond/internal/pool"
)

const namespace = "sessiond"

// other replaces a label value outside its closed set.
const other = "other"

// Execution outcomes, the outcome label of sessiond_execution_duration_seconds.
const (
	OutcomeSucceeded = "Succeeded"
	OutcomeFailed    = "Failed"  // the code raised, or the command exited non-zero
	OutcomeTimeout   = "Timeout" // the execution ran out of time
	OutcomeCanceled  = "Canceled"
	// OutcomeRunning: an asynchronous execution was accepted; its end is not observed.
	OutcomeRunning = "Running"
	// OutcomeError: the execution could not be run or its result not be read (the
	// sandbox's agent failed or did not answer).
	OutcomeError = "Error"
)

// API generations, the api label of sessiond_execution_duration_seconds.
const (
	// APILegacy is code/execute (api-versions before 2024-10-02-preview, and python/execute).
	APILegacy = "legacy"
	// APICurrent is POST executions (2024-10-02-preview and later).
	APICurrent = "current"
)

// Label value sets; a value outside its set becomes "other".
var (
	evictionReasons = []string{pool.ReasonCooldown, pool.ReasonMaxAlive, pool.ReasonDead, pool.ReasonDeleted,
		pool.ReasonSurplus, pool.ReasonClosing}
	failureKinds = []string{failureCreate, failureDestroy, failureDied}
	outcomes     = []string{OutcomeSucceeded, OutcomeFailed, OutcomeTimeout, OutcomeCanceled, OutcomeRunning, OutcomeError}
	apis         = []string{APILegacy, APICurrent}
	phases       = []string{string(pool.PhaseCreate), string(pool.PhasePrepare)}
	// opPattern is what an API operation name looks like (the route table's op).
	opPattern = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_]{0,63}$`)
)

// Kinds of sandbox failure, the kind label of sessiond_sandbox_failures_total.
const (
	failureCreate  = "create"
	failureDestroy = "destroy"
	failureDied    = "died"
)

// Histogram buckets, in seconds, spanning what each measurement promises.
var (
	// A warm allocation takes microseconds; a cold one a sandbox start.
	allocationBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120}
	// Sandbox starts: tens of milliseconds (runc) to a minute (a warm-up under gVisor).
	startBuckets = []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 20, 30, 60, 120}
	// Executions: a few milliseconds up to Azure's 220 s cap.
	executionBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 220}
	// Requests and proxied requests.
	requestBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300}
)

// Options configure a Metrics.
type Options struct {
	// Pools returns every pool's live counts (pool name → pool.Manager.Counts), called at
	// each scrape; nil reports no pool gauges.
	Pools func() map[string]pool.Counts
}

// Metrics holds sessiond's metrics and their registry.
type Metrics struct {
	reg     *prometheus.Registry
	handler http.Handler

	allocation  *prometheus.HistogramVec // pool, start
	start       *prometheus.HistogramVec // pool, phase
	execution   *prometheus.HistogramVec // pool, api, outcome
	proxy       *prometheus.HistogramVec // pool, code
	evictions   *prometheus.CounterVec   // pool, reason
	failures    *prometheus.CounterVec   // pool, kind
	requests    *prometheus.CounterVec   // op, code
	requestTime *prometheus.HistogramVec // op

	// pools are the pools whose counters exist at zero. Pools are added on first sight
	// and removed by ForgetPool.
	pools sync.Map // string → struct{}
}

// New returns a Metrics with its own registry. It has no side effects.
func New(opts Options) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.allocation = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "allocation_duration_seconds",
		Help:    "Time to bind a new session identifier to a sandbox: start=warm from the ready queue, start=cold after waiting for a sandbox to start.",
		Buckets: allocationBuckets,
	}, []string{"pool", "start"})
	m.start = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "sandbox_start_duration_seconds",
		Help:    "Duration of the phases of a successful sandbox start: phase=create (the runtime starts the sandbox and its agent answers), phase=prepare (the kernel warm-up).",
		Buckets: startBuckets,
	}, []string{"pool", "phase"})
	m.execution = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "execution_duration_seconds",
		Help:    "Duration of code executions and shell commands in sessions, by api generation (legacy code/execute, current executions) and outcome (Succeeded, Failed, Timeout, Canceled, Running: accepted asynchronously, Error: could not run).",
		Buckets: executionBuckets,
	}, []string{"pool", "api", "outcome"})
	m.proxy = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "proxy_request_duration_seconds",
		Help:    "Duration of requests proxied to custom-container sessions, by status class of the response.",
		Buckets: requestBuckets,
	}, []string{"pool", "code"})
	m.evictions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "evictions_total",
		Help: "Sandboxes taken out of service, by reason: cooldown, max-alive, dead, deleted, surplus, closing.",
	}, []string{"pool", "reason"})
	m.failures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "sandbox_failures_total",
		Help: "Sandbox failures, by kind: create (a start or warm-up failed), destroy (a destroy attempt failed), died (the agent stopped answering).",
	}, []string{"pool", "kind"})
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "http_requests_total",
		Help: "HTTP requests served, by API operation and status code.",
	}, []string{"op", "code"})
	m.requestTime = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "http_request_duration_seconds",
		Help:    "Duration of HTTP requests served, by API operation.",
		Buckets: requestBuckets,
	}, []string{"op"})
	m.reg.MustRegister(m.allocation, m.start, m.execution, m.proxy, m.evictions, m.failures, m.requests, m.requestTime,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if opts.Pools != nil {
		m.reg.MustRegister(newPoolCollector(opts.Pools))
	}
	m.handler = promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
	return m
}

// Handler serves the metrics in the Prometheus text (or negotiated) format.
func (m *Metrics) Handler() http.Handler {
	if m == nil {
		return http.NotFoundHandler()
	}
	return m.handler
}

// Gatherer returns the registry, for tests and for serving it elsewhere.
func (m *Metrics) Gatherer() prometheus.Gatherer { return m.reg }

var _ pool.Observer = (*Metrics)(nil)

// Transition implements pool.Observer: evictions and sandbox failures.
func (m *Metrics) Transition(poolName string, t pool.Transition) {
	if m == nil {
		return
	}
	m.seePool(poolName)
	switch {
	case t.To == pool.StateDeleting && t.From != pool.StateDeleting:
		m.evictions.WithLabelValues(poolName, oneOf(t.Reason, evictionReasons)).Inc()
		if t.Reason == pool.ReasonDead {
			m.failures.WithLabelValues(poolName, failureDied).Inc()
		}
	case t.From == pool.StatePending && t.To == pool.StateDestroyed && t.Err != nil && !errors.Is(t.Err, context.Canceled):
		// (A create cancelled by the pool's shutdown is no failure.)
		m.failures.WithLabelValues(poolName, failureCreate).Inc()
	case t.From == pool.StateDeleting && t.Err != nil:
		m.failures.WithLabelValues(poolName, failureDestroy).Inc()
	}
}

// Phase implements pool.Observer: successful start phases are timed; failures are
// counted by the Transition that follows.
func (m *Metrics) Phase(poolName string, phase pool.Phase, d time.Duration, err error) {
	if m == nil || err != nil {
		return
	}
	m.start.WithLabelValues(poolName, oneOf(string(phase), phases)).Observe(d.Seconds())
}

// Allocated implements pool.Observer.
func (m *Metrics) Allocated(poolName string, d time.Duration, cold bool) {
	if m == nil {
		return
	}
	start := "warm"
	if cold {
		start = "cold"
	}
	m.allocation.WithLabelValues(poolName, start).Observe(d.Seconds())
}

// Request counts one HTTP request of the API operation op (a route table constant) that
// answered status after d.
func (m *Metrics) Request(op string, status int, d time.Duration) {
	if m == nil {
		return
	}
	if !opPattern.MatchString(op) {
		op = other
	}
	m.requests.WithLabelValues(op, statusCode(status)).Inc()
	m.requestTime.WithLabelValues(op).Observe(d.Seconds())
}

// Execution records one execution in the pool: its api generation (APILegacy,
// APICurrent), its outcome (an Outcome constant) and how long the session took to run it.
func (m *Metrics) Execution(poolName, api, outcome string, d time.Duration) {
	if m == nil {
		return
	}
	m.execution.WithLabelValues(poolName, oneOf(api, apis), oneOf(outcome, outcomes)).Observe(d.Seconds())
}

// Proxy records one request proxied to a custom-container session of the pool, whose
// response had status (0 if none came) after d. The status comes from the container and
// is counted by class ("2xx"), never as is.
func (m *Metrics) Proxy(poolName string, status int, d time.Duration) {
	if m == nil {
		return
	}
	m.proxy.WithLabelValues(poolName, statusClass(status)).Observe(d.Seconds())
}

// ForgetPool removes the pool's series (after the pool is deleted).
func (m *Metrics) ForgetPool(poolName string) {
	if m == nil {
		return
	}
	m.pools.Delete(poolName)
	l := prometheus.Labels{"pool": poolName}
	for _, v := range []interface {
		DeletePartialMatch(prometheus.Labels) int
	}{m.allocation, m.start, m.execution, m.proxy, m.evictions, m.failures} {
		v.DeletePartialMatch(l)
	}
}

// seePool creates the pool's counters at zero the first time the pool is seen, so that
// the first eviction or failure shows as an increase.
func (m *Metrics) seePool(poolName string) {
	if _, seen := m.pools.LoadOrStore(poolName, struct{}{}); seen {
		return
	}
	for _, r := range evictionReasons {
		m.evictions.WithLabelValues(poolName, r)
	}
	for _, k := range failureKinds {
		m.failures.WithLabelValues(poolName, k)
	}
}

// oneOf returns v if it is in set, else "other".
func oneOf(v string, set []string) string {
	for _, s := range set {
		if v == s {
			return v
		}
	}
	return other
}

func statusCode(status int) string {
	if status < 100 || status > 599 {
		return other
	}
	return strconv.Itoa(status)
}

func statusClass(status int) string {
	if status < 100 || status > 599 {
		return other
	}
	return strconv.Itoa(status/100) + "xx"
}

// poolCollector reports each pool's live counts at scrape time.
type poolCollector struct {
	pools                                                func() map[string]pool.Counts
	ready, pending, allocated, deleting, waiting, failed *prometheus.Desc
}

func newPoolCollector(pools func() map[string]pool.Counts) *poolCollector {
	desc := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(namespace, "pool", name), help, []string{"pool"}, nil)
	}
	return &poolCollector{pools: pools,
		ready:     desc("ready_sessions", "Sandboxes started and warmed up, waiting in the ready queue (Azure's PoolReadyPodCount)."),
		pending:   desc("pending_sessions", "Sandboxes starting or warming up (Azure's PoolPendingPodCount)."),
		allocated: desc("allocated_sessions", "Sessions bound to an identifier (Azure's PoolExecutingPodCount)."),
		deleting:  desc("deleting_sandboxes", "Sandboxes taken out of service whose destroy has not finished."),
		waiting:   desc("waiting_requests", "New identifiers waiting for a sandbox to start."),
		failed:    desc("consecutive_create_failures", "Consecutive failed sandbox starts (0 after a success); above 0, starts back off."),
	}
}

// Describe implements prometheus.Collector.
func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.ready, c.pending, c.allocated, c.deleting, c.waiting, c.failed} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	for name, n := range c.pools() {
		for _, g := range []struct {
			desc *prometheus.Desc
			v    int
		}{{c.ready, n.Ready}, {c.pending, n.Pending}, {c.allocated, n.Allocated}, {c.deleting, n.Deleting},
			{c.waiting, n.Waiting}, {c.failed, n.CreateFailures}} {
			ch <- prometheus.MustNewConstMetric(g.desc, prometheus.GaugeValue, float64(g.v), name)
		}
	}
}
