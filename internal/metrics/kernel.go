package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keepbit/keepbit/loader"
)

// KernelMemorySource reads what the kernel charged for each dataplane's
// maps (*control.Controller).
type KernelMemorySource interface {
	KernelMemory() (map[string]loader.KernelMemory, map[string]error)
}

// WatchKernelMemory adds the kernel memory of the dataplanes' maps, which
// no process RSS shows, read at scrape time.
func (m *Metrics) WatchKernelMemory(src KernelMemorySource) {
	m.reg.MustRegister(&kernelCollector{src: src})
}

var descKernelMemory = prometheus.NewDesc("keepbit_kernel_memory_bytes",
	"Kernel memory charged for the dataplane's BPF maps, by map; \"table_buffers\" is every service's two lookup-table buffers (\"tables\" is the map that points at them).",
	[]string{"interface", "map"}, nil)

type kernelCollector struct{ src KernelMemorySource }

func (c *kernelCollector) Describe(ch chan<- *prometheus.Desc) { ch <- descKernelMemory }

// Collect leaves out an interface whose maps could not be read: a 0
// would read as memory freed.
func (c *kernelCollector) Collect(ch chan<- prometheus.Metric) {
	mem, _ := c.src.KernelMemory()
	for iface, km := range mem {
		for name, b := range km.Maps {
			ch <- prometheus.MustNewConstMetric(descKernelMemory, prometheus.GaugeValue, float64(b), iface, name)
		}
		ch <- prometheus.MustNewConstMetric(descKernelMemory, prometheus.GaugeValue, float64(km.Tables), iface, "table_buffers")
	}
}
