package controlplane_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/sessiond/sessiond/internal/bench"
	"github.com/sessiond/sessiond/internal/image/imagetest"
	"github.com/sessiond/sessiond/internal/pool"
	"github.com/sessiond/sessiond/internal/sandbox/oci"
)

// BenchmarkProxy measures, per runtime, a request proxied to a custom container (the API,
// the agent's tunnel, the container's own HTTP server) against the same request sent to
// the same server binary running on the host, and the first request of new identifiers on
// a warm pool. It ignores b.N (run it with -benchtime=1x) and reports percentiles:
//
//	go test -run '^$' -bench Proxy -benchtime 1x ./internal/controlplane/
func BenchmarkProxy(b *testing.B) {
	const requests, ready, firsts = 1000, 5, 30
	for _, rtName := range oci.Names() {
		b.Run(rtName, func(b *testing.B) {
			w := newWorld(b, rtName, imagetest.RegistryOptions{})
			ref := w.push("bench/web:v1", "1")
			cp, base := w.start(w.spec("web", ref, func(s *pool.Spec) {
				s.ReadySessionInstances, s.MaxConcurrentSessions = ready, firsts+ready+1
			}))
			p := getPool(b, cp, "web")
			direct := hostServer(b)
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
			get := func(url string) time.Duration {
				start := time.Now()
				resp, err := client.Get(url)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b.Fatalf("GET %s: %s", url, resp.Status)
				}
				return time.Since(start)
			}
			proxied := base + "/pools/web/health?identifier=bench-existing"
			get(proxied) // binds the session
			for range 20 {
				get(direct)
				get(proxied)
			}
			var d, pr []time.Duration
			for range requests {
				d = append(d, get(direct))
				pr = append(pr, get(proxied))
			}
			var first []time.Duration
			for round := 0; len(first) < firsts; round++ {
				waitFor(b, "the ready queue", 2*time.Minute, func() bool { c := p.Counts(); return c.Ready >= ready && c.Pending == 0 })
				for i := range ready {
					first = append(first, get(fmt.Sprintf("%s/pools/web/health?identifier=bench-new-%d-%d", base, round, i)))
				}
			}
			ds, ps, fs := bench.Summarize(d), bench.Summarize(pr), bench.Summarize(first)
			b.ReportMetric(ms(ds.P50), "direct-p50-ms")
			b.ReportMetric(ms(ds.P99), "direct-p99-ms")
			b.ReportMetric(ms(ps.P50), "proxied-p50-ms")
			b.ReportMetric(ms(ps.P99), "proxied-p99-ms")
			b.ReportMetric(ms(fs.P50), "first-p50-ms")
			b.ReportMetric(ms(fs.P99), "first-p99-ms")
			b.ReportMetric(float64(ps.P50)/float64(ds.P50), "proxied/direct-p50")
			b.Logf("%s: direct n=%d p50 %.2f p99 %.2f ms; proxied n=%d p50 %.2f p99 %.2f ms (ratio p50 %.1f); first request on a new identifier n=%d p50 %.2f p95 %.2f p99 %.2f ms",
				rtName, ds.N, ms(ds.P50), ms(ds.P99), ps.N, ms(ps.P50), ms(ps.P99), float64(ps.P50)/float64(ds.P50),
				fs.N, ms(fs.P50), ms(fs.P95), ms(fs.P99))
		})
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// hostServer runs the test server binary on the host and returns its /health URL.
func hostServer(b *testing.B) string {
	bin := filepath.Join(b.TempDir(), "server")
	if err := os.WriteFile(bin, imagetest.HTTPServer(b), 0o755); err != nil {
		b.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), fmt.Sprintf("PORT=%d", port))
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	url := fmt.Sprintf("http://127.0.0.1:%d/health", port)
	waitFor(b, "the host server", 10*time.Second, func() bool {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})
	return url
}
