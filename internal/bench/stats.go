// Package bench measures sessiond: scenarios that drive real sandboxes (and later real
// pools and the API) and summarize their latencies as percentiles. `sessiond bench` and the
// Go benchmarks beside the code call it; docs/BENCHMARKS.md records its output.
//
// It imports the contracts it measures (sandbox, agentapi), never their implementations.
package bench

import (
	"fmt"
	"math"
	"sort"
	"time"
)

// Summary describes a sample of durations.
type Summary struct {
	N    int           `json:"n"`
	Min  time.Duration `json:"min"`
	P50  time.Duration `json:"p50"`
	P95  time.Duration `json:"p95"`
	P99  time.Duration `json:"p99"`
	Max  time.Duration `json:"max"`
	Mean time.Duration `json:"mean"`
}

// Summarize returns percentiles of ds (nearest-rank). It does not modify ds.
func Summarize(ds []time.Duration) Summary {
	if len(ds) == 0 {
		return Summary{}
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	rank := func(p float64) time.Duration {
		i := int(math.Ceil(p*float64(len(s)))) - 1
		if i < 0 {
			i = 0
		}
		return s[i]
	}
	return Summary{N: len(s), Min: s[0], P50: rank(0.50), P95: rank(0.95), P99: rank(0.99),
		Max: s[len(s)-1], Mean: sum / time.Duration(len(s))}
}

// ms formats d in milliseconds with two decimals.
func ms(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d)/float64(time.Millisecond)) }
