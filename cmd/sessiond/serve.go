package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/sessiond/sessiond/internal/api"
	"github.com/sessiond/sessiond/internal/auth"
	"github.com/sessiond/sessiond/internal/config"
	"github.com/sessiond/sessiond/internal/netns"
	"github.com/sessiond/sessiond/internal/store"
	"github.com/sessiond/sessiond/internal/tlscert"
)

// cmdServe runs the control plane: the pools of the configuration behind the
// Azure-compatible data plane.
func cmdServe(ctx context.Context, g *globals, args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(g.Stderr)
	listen := fs.String("listen", "127.0.0.1:8080", "address to serve on")
	configFile := fs.String("config", "", "configuration file (YAML or JSON): pools and auth; default: one PythonLTS pool named default")
	shutdownTimeout := fs.Duration("shutdown-timeout", 30*time.Second, "how long in-flight requests get to finish on shutdown")
	tlsCert := fs.String("tls-cert", "", "TLS certificate file (PEM; reloaded when it changes); with -tls-key, serves HTTPS and HTTP/2")
	tlsKey := fs.String("tls-key", "", "TLS private key file (PEM)")
	metricsListen := fs.String("metrics-listen", "", "also serve GET /metrics without authentication on this address (a private interface for a scraper)")
	fs.StringVar(&g.DataDir, "data-dir", g.DataDir, "directory for images, sandbox state and the store (same as the global -data-dir)")
	if err := fs.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return usagef("serve: unexpected arguments %q", fs.Args())
	}
	if (*tlsCert == "") != (*tlsKey == "") {
		return usagef("serve: -tls-cert and -tls-key go together")
	}
	cfg := &config.Config{Pools: config.Default()}
	if *configFile != "" {
		var err error
		if cfg, err = config.Load(*configFile); err != nil {
			return err
		}
	}
	var authn *auth.Authenticator
	if cfg.Auth.Enabled() {
		var err error
		if authn, err = auth.New(cfg.Auth, g.Log); err != nil {
			return fmt.Errorf("configuring authentication: %w", err)
		}
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if err := authn.Prefetch(pctx); err != nil {
			g.Log.Warn("fetching the issuers' keys (retried on demand)", "err", err)
		}
		cancel()
	} else if err := requireLoopback(*listen); err != nil {
		return err
	}

	// Egress networks: the host's firewall table and DNS forwarder. Started whatever the
	// pools say, so that a previous process's egress sandboxes are torn down properly.
	// Without it (no nf_tables in the kernel, say) the server still runs: sandboxes of
	// pools with EgressEnabled are then refused, each with this reason.
	network, err := netns.New(netns.Config{Log: g.Log})
	if err != nil {
		return err
	}
	if err := network.Start(ctx); err != nil {
		g.Log.Error("egress networking is unavailable: pools with EgressEnabled cannot start sandboxes", "err", err)
		network = nil
	} else {
		defer network.Close() // sandbox networks stay for the next start
		g.Network = network
	}

	st, err := store.OpenBolt(filepath.Join(g.DataDir, store.FileName), store.Options{})
	if err != nil {
		return fmt.Errorf("opening the session store: %w", err)
	}
	defer st.Close()
	obs := newObservability()
	cp, err := newControlPlane(ctx, g, cfg.Pools, st, obs)
	if err != nil {
		return err
	}
	obs.attach(cp)
	if network != nil {
		reapNetworks(ctx, g, network)
	}
	// A shutdown leaves allocated sessions running, with their records, for the next
	// start to adopt; ready sandboxes are destroyed.
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if err := cp.Detach(cctx); err != nil {
			g.Log.Error("stopping pools", "err", err)
		}
	}()

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", *listen, err)
	}
	apiCfg := api.Config{Pools: cp, Manage: cp, Log: g.Log, Auth: authn, Metrics: obs.metrics, Events: obs.events}
	if authn == nil {
		// Without authentication the server listens on loopback only, and answers only
		// requests addressed to loopback names: a DNS-rebinding page cannot reach it.
		apiCfg.AllowedHosts = loopbackHosts(*listen)
	}
	srv := &http.Server{
		Handler:           api.New(apiCfg),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		// No WriteTimeout: executions last up to the pool's cap; each handler bounds its own work.
	}
	scheme := "http"
	if *tlsCert != "" {
		certs, err := tlscert.New(*tlsCert, *tlsKey, g.Log)
		if err != nil {
			ln.Close()
			return err
		}
		srv.TLSConfig = certs.TLSConfig()
		ln = tls.NewListener(ln, srv.TLSConfig)
		scheme = "https"
	}
	base := scheme + "://" + ln.Addr().String()
	for _, name := range cp.Names() {
		p, _ := cp.Get(name)
		s := p.Spec()
		fmt.Fprintf(g.Stdout, "sessiond: pool %s (%s, %s) at %s/subscriptions/local/resourceGroups/local/sessionPools/%s (or %s/pools/%s)\n",
			s.Name, s.ContainerType, p.Runtime(), base, s.Name, base, s.Name)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	mctx, stopMetrics := context.WithCancel(context.WithoutCancel(ctx))
	defer stopMetrics()
	metricsDone := make(chan error, 1)
	if *metricsListen != "" {
		mln, err := net.Listen("tcp", *metricsListen)
		if err != nil {
			srv.Close()
			return fmt.Errorf("listening on %s: %w", *metricsListen, err)
		}
		go func() { metricsDone <- serveMetrics(mctx, mln, obs.metrics.Handler()) }()
	} else {
		metricsDone <- nil
	}
	defer func() {
		stopMetrics()
		if err := <-metricsDone; err != nil {
			g.Log.Error("serving metrics", "err", err)
		}
	}()
	select {
	case err := <-errc:
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
	}
	g.Log.Info("shutting down: finishing requests in flight", "timeout", *shutdownTimeout)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), *shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutting down: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serving: %w", err)
	}
	return nil
}

// reapNetworks removes the egress networks of sandboxes that no runtime has any more (a
// previous process died between a sandbox's destroy and its network's teardown).
func reapNetworks(ctx context.Context, g *globals, network *netns.Manager) {
	rts, err := allRuntimes(g)
	if err != nil {
		g.Log.Warn("listing sandboxes for network cleanup", "err", err)
		return
	}
	live := map[string]bool{}
	for _, rt := range rts {
		if !rt.Capabilities().Available {
			continue
		}
		infos, err := rt.List(ctx)
		if err != nil {
			g.Log.Warn("listing sandboxes for network cleanup", "runtime", rt.Name(), "err", err)
			return // keep everything rather than tear down a live sandbox's network
		}
		for _, i := range infos {
			live[i.ID] = true
		}
	}
	if gone, err := network.Reap(ctx, func(id string) bool { return live[id] }); err != nil {
		g.Log.Warn("removing orphaned sandbox networks", "err", err)
	} else if len(gone) > 0 {
		g.Log.Info("removed orphaned sandbox networks", "sandboxes", gone)
	}
}

// requireLoopback refuses addresses beyond loopback: without authentication anyone who
// reaches the port could run code.
func requireLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return usagef("-listen %q: %v", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(strings.Trim(host, "[]")); ip != nil && ip.IsLoopback() {
		return nil
	}
	return usagef("-listen %q: refusing to listen beyond loopback without authentication: configure auth in the -config file, or use 127.0.0.1:PORT", addr)
}

// loopbackHosts are the Host names a loopback server answers to.
func loopbackHosts(listen string) []string {
	hosts := []string{"localhost", "127.0.0.1", "::1"}
	if h, _, err := net.SplitHostPort(listen); err == nil && h != "" {
		hosts = append(hosts, strings.Trim(h, "[]"))
	}
	return hosts
}
