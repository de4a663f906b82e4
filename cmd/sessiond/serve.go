package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/sessiond/sessiond/internal/api"
	"github.com/sessiond/sessiond/internal/config"
)

// cmdServe runs the control plane: the pools of the configuration behind the
// Azure-compatible data plane.
func cmdServe(ctx context.Context, g *globals, args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(g.Stderr)
	listen := fs.String("listen", "127.0.0.1:8080", "address to serve HTTP on")
	configFile := fs.String("config", "", "pool configuration file (YAML or JSON); default: one PythonLTS pool named default")
	shutdownTimeout := fs.Duration("shutdown-timeout", 30*time.Second, "how long in-flight requests get to finish on shutdown")
	fs.StringVar(&g.DataDir, "data-dir", g.DataDir, "directory for images, sandbox state and the store (same as the global -data-dir)")
	if err := fs.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return usagef("serve: unexpected arguments %q", fs.Args())
	}
	if err := requireLoopback(*listen); err != nil {
		return err
	}
	specs := config.Default()
	if *configFile != "" {
		var err error
		if specs, err = config.Load(*configFile); err != nil {
			return err
		}
	}
	cp, err := newControlPlane(ctx, g, specs)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if err := cp.Close(cctx); err != nil {
			g.Log.Error("stopping pools", "err", err)
		}
	}()

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", *listen, err)
	}
	srv := &http.Server{
		// Until authentication exists the server listens on loopback only, and answers only
		// requests addressed to loopback names: a DNS-rebinding page cannot reach it.
		Handler:           api.New(api.Config{Pools: cp, Log: g.Log, AllowedHosts: loopbackHosts(*listen)}),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		// No WriteTimeout: executions last up to the pool's cap; each handler bounds its own work.
	}
	base := "http://" + ln.Addr().String()
	for _, s := range specs {
		fmt.Fprintf(g.Stdout, "sessiond: pool %s (%s, %s) at %s/subscriptions/local/resourceGroups/local/sessionPools/%s (or %s/pools/%s)\n",
			s.Name, s.ContainerType, cp.runtimeName(s.Name), base, s.Name, base, s.Name)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
	}
	g.Log.Info("shutting down", "timeout", *shutdownTimeout)
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

// requireLoopback refuses addresses beyond loopback: without authentication (a later
// issue) anyone who reaches the port could run code.
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
	return usagef("-listen %q: refusing to listen beyond loopback without authentication, which sessiond does not have yet; use 127.0.0.1:PORT", addr)
}

// loopbackHosts are the Host names a loopback server answers to.
func loopbackHosts(listen string) []string {
	hosts := []string{"localhost", "127.0.0.1", "::1"}
	if h, _, err := net.SplitHostPort(listen); err == nil && h != "" {
		hosts = append(hosts, strings.Trim(h, "[]"))
	}
	return hosts
}
