package loader

import (
	"fmt"
	"os"
	"testing"

	"github.com/cilium/ebpf/rlimit"

	"github.com/keepbit/keepbit/internal/privtest"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(helperMain())
	}
	// Tests that load objects without Open need the memlock limit lifted
	// on kernels before 5.11 as well (make test-kernels boots 5.10).
	if os.Geteuid() == 0 {
		if err := rlimit.RemoveMemlock(); err != nil {
			fmt.Fprintln(os.Stderr, "lift the memlock limit:", err)
			os.Exit(1)
		}
	}
	os.Exit(privtest.Main(m))
}
