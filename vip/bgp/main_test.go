package bgp

import (
	"os"
	"testing"

	"github.com/keepbit/keepbit/internal/privtest"
)

// TestMain: the BIRD interop test needs root and a namespace of its own;
// the other tests run in it too (loopback only).
func TestMain(m *testing.M) { os.Exit(privtest.Main(m)) }
