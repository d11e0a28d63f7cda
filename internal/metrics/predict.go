package metrics

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keepbit/keepbit/internal/control"
)

// PredictSource is what the predictive metrics read at scrape time
// (*control.Controller).
type PredictSource interface {
	Status() []control.ServiceStatus
}

// WatchPredict adds predictive detection's metrics (backends of services
// with a predictive section only), read at scrape time.
func (m *Metrics) WatchPredict(src PredictSource) {
	m.reg.MustRegister(&predictCollector{src: src})
}

var (
	descPredictDegraded = prometheus.NewDesc("keepbit_backend_degraded",
		"1 while predictive detection flags the backend as an outlier among its service's backends.", []string{"service", "backend"}, nil)
	descPredictDrained = prometheus.NewDesc("keepbit_backend_predict_drained",
		"1 while the backend is drained by predictive detection.", []string{"service", "backend"}, nil)
	descPredictDeweighted = prometheus.NewDesc("keepbit_backend_predict_deweighted",
		"1 while predictive detection has cut the backend's weight (action weight).", []string{"service", "backend"}, nil)
	descPredictFlagged = prometheus.NewDesc("keepbit_backend_degraded_total",
		"Times predictive detection flagged the backend.", []string{"service", "backend"}, nil)
	descPredictLatency = prometheus.NewDesc("keepbit_backend_predict_latency_seconds",
		"The backend's probe latency over the predictive window, by quantile (0.5, 0.9), successful probes only.", []string{"service", "backend", "quantile"}, nil)
	descPredictFailures = prometheus.NewDesc("keepbit_backend_predict_failure_ratio",
		"The share of the backend's probes in the predictive window that failed.", []string{"service", "backend"}, nil)
)

type predictCollector struct{ src PredictSource }

func (c *predictCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPredictDegraded, descPredictDrained, descPredictDeweighted, descPredictFlagged, descPredictLatency, descPredictFailures} {
		ch <- d
	}
}

func (c *predictCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.src.Status() {
		for _, b := range s.Backends {
			p := b.Predict
			if p == nil {
				continue
			}
			addr := b.Address.String()
			ch <- prometheus.MustNewConstMetric(descPredictDegraded, prometheus.GaugeValue, b2f(p.Degraded), s.Name, addr)
			ch <- prometheus.MustNewConstMetric(descPredictDrained, prometheus.GaugeValue, b2f(p.Degraded && p.Acted == "drained"), s.Name, addr)
			ch <- prometheus.MustNewConstMetric(descPredictDeweighted, prometheus.GaugeValue, b2f(p.Degraded && strings.HasPrefix(p.Acted, "de-weighted")), s.Name, addr)
			ch <- prometheus.MustNewConstMetric(descPredictFlagged, prometheus.CounterValue, float64(p.Flagged), s.Name, addr)
			ch <- prometheus.MustNewConstMetric(descPredictLatency, prometheus.GaugeValue, p.P50.Seconds(), s.Name, addr, "0.5")
			ch <- prometheus.MustNewConstMetric(descPredictLatency, prometheus.GaugeValue, p.P90.Seconds(), s.Name, addr, "0.9")
			ratio := 0.0
			if p.Samples > 0 {
				ratio = float64(p.Failures) / float64(p.Samples)
			}
			ch <- prometheus.MustNewConstMetric(descPredictFailures, prometheus.GaugeValue, ratio, s.Name, addr)
		}
	}
}
