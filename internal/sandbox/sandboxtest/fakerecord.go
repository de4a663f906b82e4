package sandboxtest

import (
	"encoding/json"
	"os"
	"path/filepath"

	"github.com/sessiond/sessiond/internal/sandbox"
)

func writeFakeRecord(dir string, info sandbox.Info) error {
	b, err := json.Marshal(info)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "info.json"), b, 0o644)
}

func readFakeRecord(dir string) (sandbox.Info, error) {
	var info sandbox.Info
	b, err := os.ReadFile(filepath.Join(dir, "info.json"))
	if err != nil {
		return info, err
	}
	return info, json.Unmarshal(b, &info)
}
