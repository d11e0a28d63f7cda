package loader

import (
	"fmt"

	"github.com/cilium/ebpf"
)

// Flow cache sizes (entries per CPU) Options.FlowCacheSize accepts.
const (
	DefaultFlowCacheSize = uint32(keepbitLimitsFLOW_CACHE_SIZE)
	MinFlowCacheSize     = 256
	MaxFlowCacheSize     = 1 << 20
)

// FlowCacheEntryBytes is what one cache entry costs, per CPU.
const FlowCacheEntryBytes = 96

// ValidFlowCacheSize says why n cannot be a flow cache size (nil: it can;
// 0 means the default).
func ValidFlowCacheSize(n uint32) error {
	if n == 0 {
		return nil
	}
	if n < MinFlowCacheSize || n > MaxFlowCacheSize || n&(n-1) != 0 {
		return fmt.Errorf("flow cache size %d: want a power of two from %d to %d", n, MinFlowCacheSize, MaxFlowCacheSize)
	}
	return nil
}

// sizeFlowCache gives the cache n entries per CPU and the program the
// mask it indexes the cache with; the two must agree, or a lookup past the
// end would miss for good.
func sizeFlowCache(spec *ebpf.CollectionSpec, n uint32) error {
	if err := ValidFlowCacheSize(n); err != nil {
		return err
	}
	if n == 0 {
		n = DefaultFlowCacheSize
	}
	m, ok := spec.Maps[keepbitMapFlowCache]
	if !ok {
		return fmt.Errorf("BPF spec has no %s map", keepbitMapFlowCache)
	}
	v, ok := spec.Variables["flow_cache_mask"]
	if !ok {
		return fmt.Errorf("BPF spec has no flow_cache_mask")
	}
	m.MaxEntries = n
	if err := v.Set(n - 1); err != nil {
		return fmt.Errorf("set flow_cache_mask: %w", err)
	}
	return nil
}
