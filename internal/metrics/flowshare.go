package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keepbit/keepbit/internal/control"
	"github.com/keepbit/keepbit/internal/ownership"
)

// FlowShareStatus is the flow-sharing owner's status (*ownership.FlowShare).
type FlowShareStatus interface {
	Status() ownership.FlowShareStatus
}

// FlowShareCounters are the programs' flow-sharing counters
// (*control.Controller).
type FlowShareCounters interface {
	FlowShareCounters() ([]control.InterfaceShareCounters, error)
}

// WatchFlowShare adds the flow-sharing transport's counters (src) and the
// programs' (dp), read at scrape time.
func (m *Metrics) WatchFlowShare(src FlowShareStatus, dp FlowShareCounters) {
	m.reg.MustRegister(&flowShareCollector{src: src, dp: dp})
}

var (
	descShareWarm = prometheus.NewDesc("keepbit_flowshare_warm",
		"1 once this node has learnt the other nodes' flows (or its warm-up timed out).", nil, nil)
	descShareSent = prometheus.NewDesc("keepbit_flowshare_sent_total",
		"Flow-sharing datagrams and flows sent (each copy to each peer).", []string{"what"}, nil)
	descShareReceived = prometheus.NewDesc("keepbit_flowshare_received_total",
		"Accepted flow-sharing datagrams and their flows; applied: flows a dataplane took; skipped: flows none took.", []string{"what"}, nil)
	descShareDropped = prometheus.NewDesc("keepbit_flowshare_dropped_flows_total",
		"Flows submitted for sharing that never went out, by reason.", []string{"reason"}, nil)
	descShareRejected = prometheus.NewDesc("keepbit_flowshare_rejected_datagrams_total",
		"Flow-sharing datagrams refused, by reason.", []string{"reason"}, nil)
	descShareSync = prometheus.NewDesc("keepbit_flowshare_sync_total",
		"Warm-up sync messages: requests sent and received, snapshots answered and refused, sync ends received.", []string{"what"}, nil)
	descShareDataplane = prometheus.NewDesc("keepbit_flowshare_dataplane_total",
		"The program's flow-sharing events: flows reported, reports dropped (ring buffer full), shared hits and stale shared entries.",
		[]string{"interface", "event"}, nil)
)

type flowShareCollector struct {
	src FlowShareStatus
	dp  FlowShareCounters
}

func (c *flowShareCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descShareWarm, descShareSent, descShareReceived, descShareDropped, descShareRejected, descShareSync, descShareDataplane} {
		ch <- d
	}
}

func (c *flowShareCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.src.Status()
	if !st.Enabled {
		return
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	ch <- prometheus.MustNewConstMetric(descShareWarm, prometheus.GaugeValue, b2f(st.Warm))
	n := st.Node
	counter(descShareSent, n.SentDatagrams, "datagrams")
	counter(descShareSent, n.SentFlows, "flows")
	counter(descShareReceived, n.Received, "datagrams")
	counter(descShareReceived, n.ReceivedFlows, "flows")
	counter(descShareReceived, n.AppliedFlows, "applied")
	counter(descShareReceived, st.Skipped, "skipped")
	for _, r := range []struct {
		reason string
		v      uint64
	}{{"queue_full", n.Dropped.QueueFull}, {"invalid", n.Dropped.Invalid}, {"send_error", n.Dropped.SendError}, {"stopped", n.Dropped.Stopped}} {
		counter(descShareDropped, r.v, r.reason)
	}
	for _, r := range []struct {
		reason string
		v      uint64
	}{{"truncated", n.Rejected.Truncated}, {"malformed", n.Rejected.Malformed}, {"version", n.Rejected.Version},
		{"mac", n.Rejected.MAC}, {"clock", n.Rejected.Clock}, {"replay", n.Rejected.Replay}} {
		counter(descShareRejected, r.v, r.reason)
	}
	counter(descShareSync, n.SyncRequestsSent, "requests_sent")
	counter(descShareSync, n.SyncRequestsReceived, "requests_received")
	counter(descShareSync, n.SyncAnswers, "answers")
	counter(descShareSync, n.SyncAnswersRefused, "answers_refused")
	counter(descShareSync, n.SyncEndsReceived, "ends_received")
	dps, _ := c.dp.FlowShareCounters() // a failed read leaves that interface out of this scrape
	for _, d := range dps {
		counter(descShareDataplane, d.Counters.Reported, d.Interface, "reported")
		counter(descShareDataplane, d.Counters.ReportDropped, d.Interface, "report_dropped")
		counter(descShareDataplane, d.Counters.SharedHit, d.Interface, "shared_hit")
		counter(descShareDataplane, d.Counters.SharedStale, d.Interface, "shared_stale")
	}
}
