package loader

import (
	"fmt"

	"github.com/cilium/ebpf"
)

// LoadBaseline loads baseline_xdp, the least a forwarder can do: swap the
// MACs and send the frame back. Benchmarks run it on the same port and in
// the same run as Keepbit, so the machine's own limit is measured next to
// Keepbit's figure instead of assumed. The caller closes the program.
func LoadBaseline() (*ebpf.Program, error) {
	var objs baselineObjects
	if err := loadBaselineObjects(&objs, nil); err != nil {
		return nil, fmt.Errorf("load baseline: %w", err)
	}
	return objs.BaselineXdp, nil
}
