package loader

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/keepbit/keepbit/internal/privtest"
)

// TestVerifierComplexity loads each build of the forwarder that the
// kernel runs and logs how many instructions the verifier processed, so
// that a change's cost in verifier work shows in the test log; it fails
// over a third of the kernel's limit of 1M, before a change that grows the
// program makes it unloadable on an older kernel. A build the kernel
// cannot run (the current one before 5.17) is skipped, and the compatible
// build must load on every kernel CheckKernel accepts.
func TestVerifierComplexity(t *testing.T) {
	privtest.Require(t)
	for _, prog := range []Program{ProgramCurrent, ProgramCompat} {
		t.Run(string(prog), func(t *testing.T) {
			if _, err := chooseProgram(prog, Requirements(), kernelRelease()); err != nil {
				t.Skipf("not on this kernel: %v", err)
			}
			spec, err := programSpec(prog)
			if err != nil {
				t.Fatal(err)
			}
			coll, err := ebpf.NewCollection(spec)
			if err != nil {
				// The verifier's own words, the last of them: what an
				// older kernel (make test-kernels) refuses and where.
				var ve *ebpf.VerifierError
				if errors.As(err, &ve) {
					from := max(0, len(ve.Log)-60)
					t.Fatalf("load: %v\nverifier log (last %d lines):\n%s", err, len(ve.Log)-from, strings.Join(ve.Log[from:], "\n"))
				}
				t.Fatalf("load: %v", err)
			}
			defer coll.Close()
			info, err := coll.Programs[keepbitProgKeepbitXdp].Info()
			if err != nil {
				t.Fatal(err)
			}
			n, ok := info.VerifiedInstructions()
			if !ok {
				// Before 5.16 only the verifier's log says.
				n, ok = processedFromLog(t, spec)
			}
			if !ok {
				t.Fatal("neither the program's info nor the verifier's log says how many instructions it processed")
			}
			t.Logf("keepbit_xdp (%s build): %d instructions processed by the verifier", prog, n)
			// Older verifiers prune less: the same program once took
			// ~725k here and over the 1M limit on Linux 6.1. A third of
			// the limit leaves that margin for every supported kernel
			// (make test-kernels).
			if n > 333000 {
				t.Errorf("verifier processed %d instructions, over a third of the kernel's limit of 1M: older kernels may refuse the program", n)
			}
		})
	}
}

// processedFromLog loads spec again with the verifier's statistics logged
// and reads "processed N insns" from the log.
func processedFromLog(t *testing.T, spec *ebpf.CollectionSpec) (uint32, bool) {
	t.Helper()
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Programs: ebpf.ProgramOptions{LogLevel: ebpf.LogLevelStats}})
	if err != nil {
		t.Fatalf("load with verifier statistics: %v", err)
	}
	defer coll.Close()
	for _, line := range strings.Split(coll.Programs[keepbitProgKeepbitXdp].VerifierLog, "\n") {
		var n uint32
		if _, err := fmt.Sscanf(line, "processed %d insns", &n); err == nil {
			return n, true
		}
	}
	return 0, false
}
