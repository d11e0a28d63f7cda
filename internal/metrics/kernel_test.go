package metrics

import (
	"errors"
	"maps"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keepbit/keepbit/loader"
)

type fakeKernel struct {
	mem    map[string]loader.KernelMemory
	failed map[string]error
}

func (f fakeKernel) KernelMemory() (map[string]loader.KernelMemory, map[string]error) {
	return f.mem, f.failed
}

// TestScrapeKernelMemory: one series per map and one for the table
// buffers per interface, apart from the outer "tables" map (the same label
// made every scrape fail); an interface that could not be read has none.
func TestScrapeKernelMemory(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(&kernelCollector{src: fakeKernel{
		mem:    map[string]loader.KernelMemory{"eth0": {Maps: map[string]uint64{"flows": 4096, "tables": 512}, Tables: 1 << 20, Services: 2}},
		failed: map[string]error{"eth1": errors.New("bad fd")},
	}})
	want := map[string]float64{
		`keepbit_kernel_memory_bytes{interface="eth0",map="flows"}`:         4096,
		`keepbit_kernel_memory_bytes{interface="eth0",map="tables"}`:        512,
		`keepbit_kernel_memory_bytes{interface="eth0",map="table_buffers"}`: 1 << 20,
	}
	if got := series(t, reg); !maps.Equal(got, want) {
		t.Errorf("series %v, want %v", got, want)
	}
}
