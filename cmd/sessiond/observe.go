package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/sessiond/sessiond/internal/controlplane"
	"github.com/sessiond/sessiond/internal/events"
	"github.com/sessiond/sessiond/internal/metrics"
	"github.com/sessiond/sessiond/internal/pool"
)

// Logs, metrics and events: what serve wires for an operator to watch sessiond.

// Log formats of the global -log-format flag.
const (
	logFormatText = "text"
	logFormatJSON = "json"
)

// newLogger returns the process's logger: format is "text" (logfmt-like key=value) or
// "json" (one JSON object per line, for log collectors).
func newLogger(w io.Writer, format string, level slog.Level) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: level}
	switch format {
	case logFormatText:
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case logFormatJSON:
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log format %q: want %s or %s", format, logFormatText, logFormatJSON)
}

// observability holds serve's metrics and events. The metrics read the pools' counts from
// the control plane at each scrape; the control plane is attached once it is built,
// because its pools report to the observer from the start.
type observability struct {
	metrics *metrics.Metrics
	events  *events.Log
	cp      atomic.Pointer[controlplane.ControlPlane]
}

// newObservability returns metrics and an event log of events.DefaultSize per pool.
func newObservability() *observability {
	o := &observability{events: events.New(events.DefaultSize)}
	o.metrics = metrics.New(metrics.Options{Pools: func() map[string]pool.Counts {
		if cp := o.cp.Load(); cp != nil {
			return cp.Counts()
		}
		return nil
	}})
	return o
}

// observer is the pools' observer: controlplane.Config.Observer.
func (o *observability) observer() pool.Observer { return pool.Observers(o.metrics, o.events) }

// poolEvent is the control plane's PoolEvent: a Pool event in the log, or, for a deleted
// pool, its events and metrics forgotten.
func (o *observability) poolEvent(pool string, kind events.Kind, message string, forget bool) {
	if forget {
		o.events.Forget(pool)
		o.metrics.ForgetPool(pool)
		return
	}
	o.events.Add(events.Event{Pool: pool, Category: events.Pool, Kind: kind, Message: message})
}

// attach makes the metrics report cp's pools.
func (o *observability) attach(cp *controlplane.ControlPlane) { o.cp.Store(cp) }

// metricsShutdownTimeout bounds the shutdown of the -metrics-listen server: a scrape
// takes milliseconds.
const metricsShutdownTimeout = 5 * time.Second

// serveMetrics serves h at GET /metrics, and nothing else, on ln until ctx ends, then
// shuts down. It is serve's -metrics-listen: metrics without authentication, on an
// address of their own (a private interface a Prometheus scrapes), while the API's own
// GET /metrics requires the Reader role on every pool. It returns nil after a shutdown.
func serveMetrics(ctx context.Context, ln net.Listener, h http.Handler) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", h)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, WriteTimeout: time.Minute, IdleTimeout: 2 * time.Minute}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serving metrics: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), metricsShutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("shutting down the metrics server: %w", err)
	}
	return nil
}
