package controlplane

import "github.com/sessiond/sessiond/internal/pool"

// Counts returns every pool's live counts by pool name, for metrics.Options.Pools: read
// at each scrape, from each pool's last snapshot, without reaching its owner goroutine.
func (cp *ControlPlane) Counts() map[string]pool.Counts {
	cp.mu.RLock()
	defer cp.mu.RUnlock()
	out := make(map[string]pool.Counts, len(cp.pools))
	for name, p := range cp.pools {
		out[name] = p.Counts()
	}
	return out
}
