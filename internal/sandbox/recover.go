package sandbox

import (
	"context"
	"errors"
	"fmt"
)

// RecoverResult says what Recover did.
type RecoverResult struct {
	// Adopted sandboxes are running and their agents answer.
	Adopted []Info
	// Reaped lists the IDs of sandboxes that were destroyed.
	Reaped []string
}

// Recover brings a runtime's sandboxes back under control after a control-plane restart:
// every sandbox that keep accepts (nil keeps all) and that Attach can adopt is adopted; all
// others (not wanted, half created, half destroyed, dead, or with a silent agent) are
// destroyed. It returns an error only if some sandbox could not be destroyed; the result
// still lists everything done.
func Recover(ctx context.Context, rt Runtime, keep func(Info) bool) (RecoverResult, error) {
	var res RecoverResult
	infos, err := rt.List(ctx)
	if err != nil {
		return res, fmt.Errorf("recovering %s sandboxes: %w", rt.Name(), err)
	}
	var errs []error
	for _, i := range infos {
		if i.State == StateRunning && (keep == nil || keep(i)) {
			if a, err := rt.Attach(ctx, i.ID); err == nil {
				res.Adopted = append(res.Adopted, a)
				continue
			}
		}
		if err := rt.Destroy(ctx, i.ID); err != nil {
			errs = append(errs, err)
			continue
		}
		res.Reaped = append(res.Reaped, i.ID)
	}
	if len(errs) > 0 {
		return res, fmt.Errorf("recovering %s sandboxes: %w", rt.Name(), errors.Join(errs...))
	}
	return res, nil
}
