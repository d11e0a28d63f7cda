package loader

import (
	"testing"

	"github.com/cilium/ebpf"

	"github.com/keepbit/keepbit/internal/privtest"
)

// TestVerifierComplexity loads the forwarder and logs how many instructions
// the verifier processed, so that a change's cost in verifier work shows in
// the test log; it fails within 10% of the kernel's limit of 1M, before a
// change that grows the program further makes it unloadable.
func TestVerifierComplexity(t *testing.T) {
	privtest.Require(t)
	spec, err := loadKeepbit()
	if err != nil {
		t.Fatal(err)
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
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
	if n > 900000 {
		t.Errorf("verifier processed %d instructions, within 10%% of the kernel's limit of 1M", n)
	}
}
