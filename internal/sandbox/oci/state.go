package oci

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/sessiond/sessiond/internal/sandbox"
)

// recordVersion is the version of the state record format; a record of another version
// is not adopted (the sandbox is reaped).
const recordVersion = 1

// record is the state a runtime keeps for each sandbox in <state dir>/<id>/state.json, so
// that a later control-plane process can adopt or reap it. It is written before anything
// is started and updated as the sandbox moves through its life.
type record struct {
	Version int               `json:"version"`
	ID      string            `json:"id"`
	Runtime string            `json:"runtime"`
	Image   string            `json:"image,omitempty"`
	RootFS  string            `json:"rootfs"`
	State   sandbox.State     `json:"state"`
	Created time.Time         `json:"created"`
	Labels  map[string]string `json:"labels,omitempty"`
	Limits  sandbox.Limits    `json:"limits"`
	// UIDBase is the first host uid of the sandbox's user namespace (runc), 0 without one.
	UIDBase uint32 `json:"uidBase,omitempty"`
	// PID is the host pid of the container's init as the runtime reported it.
	PID int `json:"pid,omitempty"`
}

func (r record) info() sandbox.Info {
	return sandbox.Info{ID: r.ID, Runtime: r.Runtime, Image: r.Image, State: r.State,
		Created: r.Created, Labels: r.Labels, Limits: r.Limits, PID: r.PID}
}

// writeRecord replaces dir/state.json atomically.
func writeRecord(dir string, r record) error {
	r.Version = recordVersion
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encoding sandbox record: %w", err)
	}
	tmp := filepath.Join(dir, "state.json.tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("writing sandbox record: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing sandbox record: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "state.json")); err != nil {
		return fmt.Errorf("writing sandbox record: %w", err)
	}
	return nil
}

// readRecord reads dir/state.json.
func readRecord(dir string) (record, error) {
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		return record{}, fmt.Errorf("reading sandbox record: %w", err)
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return record{}, fmt.Errorf("decoding sandbox record: %w", err)
	}
	if r.Version != recordVersion {
		return record{}, fmt.Errorf("sandbox record version %d, want %d", r.Version, recordVersion)
	}
	return r, nil
}
