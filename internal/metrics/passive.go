package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
)

// WatchPassive adds passive detection's metrics (backends of services
// with a passive section only), read at scrape time from the same status
// as predictive detection's.
func (m *Metrics) WatchPassive(src PredictSource) {
	m.reg.MustRegister(&passiveCollector{src: src})
}

var (
	descSynRetrans = prometheus.NewDesc("keepbit_backend_syn_retransmits_total",
		"TCP SYNs clients retransmitted for flows on the backend (passive detection's signal), since it was configured.", []string{"service", "backend"}, nil)
	descSynRetransWindow = prometheus.NewDesc("keepbit_backend_syn_retransmits_window",
		"Retransmitted SYNs within the service's passive window now.", []string{"service", "backend"}, nil)
	descPassiveEjected = prometheus.NewDesc("keepbit_backend_passive_ejected",
		"1 while the backend is out because of passive detection.", []string{"service", "backend"}, nil)
	descPassiveEjections = prometheus.NewDesc("keepbit_backend_passive_ejections_total",
		"Times passive detection flagged the backend.", []string{"service", "backend"}, nil)
)

type passiveCollector struct{ src PredictSource }

func (c *passiveCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSynRetrans, descSynRetransWindow, descPassiveEjected, descPassiveEjections} {
		ch <- d
	}
}

func (c *passiveCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.src.Status() {
		for _, b := range s.Backends {
			p := b.Passive
			if p == nil {
				continue
			}
			addr := b.Address.String()
			ch <- prometheus.MustNewConstMetric(descSynRetrans, prometheus.CounterValue, float64(p.Total), s.Name, addr)
			ch <- prometheus.MustNewConstMetric(descSynRetransWindow, prometheus.GaugeValue, float64(p.InWindow), s.Name, addr)
			ch <- prometheus.MustNewConstMetric(descPassiveEjected, prometheus.GaugeValue, b2f(p.Ejected && p.Acted == "ejected"), s.Name, addr)
			ch <- prometheus.MustNewConstMetric(descPassiveEjections, prometheus.CounterValue, float64(p.Ejections), s.Name, addr)
		}
	}
}
