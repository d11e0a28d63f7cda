package loader

import (
	"errors"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/keepbit/keepbit/internal/privtest"
)

// TestVerifierComplexity loads the forwarder and logs how many instructions
// the verifier processed, so that a change's cost in verifier work shows in
// the test log; it fails over a third of the kernel's limit of 1M, before a
// change that grows the program makes it unloadable on an older kernel.
func TestVerifierComplexity(t *testing.T) {
	privtest.Require(t)
	spec, err := loadKeepbit()
	if err != nil {
		t.Fatal(err)
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		// The verifier's own words, the last of them: what an older
		// kernel (make test-kernels) refuses and where.
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
		t.Skip("kernel does not report verified instructions")
	}
	t.Logf("keepbit_xdp: %d instructions processed by the verifier", n)
	// Older verifiers prune less: the same program once took ~725k here
	// and over the 1M limit on Linux 6.1. A third of the limit leaves
	// that margin for every supported kernel (make test-kernels).
	if n > 333000 {
		t.Errorf("verifier processed %d instructions, over a third of the kernel's limit of 1M: older kernels may refuse the program", n)
	}
}
