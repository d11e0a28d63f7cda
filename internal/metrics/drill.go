package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keepbit/keepbit/internal/drill"
)

// DrillSource is what the drill metrics read at scrape time
// (*drill.Drills).
type DrillSource interface {
	History() []drill.Result
	Counts() map[[2]string]uint64
	Running() []string
}

// WatchDrills adds the drills' metrics, read at scrape time.
func (m *Metrics) WatchDrills(src DrillSource) {
	m.reg.MustRegister(&drillCollector{src: src})
}

var (
	descDrills = prometheus.NewDesc("keepbit_drills_total",
		"Drills by kind (backend, node) and result (ok, failed, aborted, refused).", []string{"kind", "result"}, nil)
	descDrillRunning = prometheus.NewDesc("keepbit_drills_running", "Drills running now.", nil, nil)
	descDrillLast    = prometheus.NewDesc("keepbit_drill_last_seconds",
		"The last finished drill of each kind: out (fault to the target out), traffic_stopped (fault to the target's last packet), "+
			"traffic_back (restore to its first packet), gap (the target without traffic), mttr.", []string{"kind", "measure"}, nil)
	descDrillLastOK = prometheus.NewDesc("keepbit_drill_last_ok",
		"1 when the last finished drill of the kind was ok.", []string{"kind"}, nil)
	descDrillLastTime = prometheus.NewDesc("keepbit_drill_last_timestamp_seconds",
		"When the last finished drill of the kind ended.", []string{"kind"}, nil)
)

type drillCollector struct{ src DrillSource }

func (c *drillCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descDrills, descDrillRunning, descDrillLast, descDrillLastOK, descDrillLastTime} {
		ch <- d
	}
}

func (c *drillCollector) Collect(ch chan<- prometheus.Metric) {
	for k, n := range c.src.Counts() {
		ch <- prometheus.MustNewConstMetric(descDrills, prometheus.CounterValue, float64(n), k[0], k[1])
	}
	ch <- prometheus.MustNewConstMetric(descDrillRunning, prometheus.GaugeValue, float64(len(c.src.Running())))
	last := map[drill.Kind]drill.Result{}
	for _, r := range c.src.History() { // oldest first: the last one wins
		if r.Result != drill.ResultAborted {
			last[r.Kind] = r
		}
	}
	for kind, r := range last {
		k := string(kind)
		for _, x := range []struct {
			measure string
			v       float64
		}{
			{"out", r.Out.SinceFault.Seconds()},
			{"traffic_stopped", r.Traffic.StoppedAfter.Seconds()},
			{"traffic_back", r.Traffic.BackAfter.Seconds()},
			{"gap", r.Traffic.Gap.Seconds()},
			{"mttr", r.MTTR.Seconds()},
		} {
			ch <- prometheus.MustNewConstMetric(descDrillLast, prometheus.GaugeValue, x.v, k, x.measure)
		}
		ch <- prometheus.MustNewConstMetric(descDrillLastOK, prometheus.GaugeValue, b2f(r.Result == drill.ResultOK), k)
		ch <- prometheus.MustNewConstMetric(descDrillLastTime, prometheus.GaugeValue, float64(r.Ended.UnixNano())/1e9, k)
	}
}
