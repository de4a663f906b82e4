package image

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves goroutines behind: pulls run downloads and
// HTTP connections that must all end with the pull.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
