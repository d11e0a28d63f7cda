package flowshare

import (
	"slices"
	"testing"
)

// TestGrouper: the grouping holds every flow once, each service's flows
// together, its backends' flows together, services and backends in order.
func TestGrouper(t *testing.T) {
	var g grouper
	var dst []Flow
	for _, n := range []int{0, 1, 7, 1000, 3} { // reused between calls
		src := testFlows(n, 1)
		slices.Reverse(src)
		orig := slices.Clone(src)
		dst = g.group(dst, src)
		if !slices.Equal(src, orig) {
			t.Fatal("src changed")
		}
		if !sameFlows(dst, src) {
			t.Fatalf("%d flows: grouped holds other flows", n)
		}
		for i := 1; i < len(dst); i++ {
			a, b := dst[i-1], dst[i]
			a.Client = b.Client // within a group, clients keep their arrival order
			if compareForWire(a, b) > 0 {
				t.Fatalf("%d flows: %v before %v", n, dst[i-1], dst[i])
			}
		}
	}
}
