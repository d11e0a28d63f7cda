package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keepbit/keepbit/internal/control"
	"github.com/keepbit/keepbit/internal/flowshare"
	"github.com/keepbit/keepbit/internal/ownership"
	"github.com/keepbit/keepbit/loader"
)

type fakeShare ownership.FlowShareStatus

func (f fakeShare) Status() ownership.FlowShareStatus { return ownership.FlowShareStatus(f) }

type fakeShareDP []control.InterfaceShareCounters

func (f fakeShareDP) FlowShareCounters() ([]control.InterfaceShareCounters, error) { return f, nil }

// TestScrapeFlowShare: every transport and program counter under the name
// and labels the help texts promise; nothing when flow sharing is off.
func TestScrapeFlowShare(t *testing.T) {
	st := ownership.FlowShareStatus{Enabled: true, Warm: true, Skipped: 4, Node: flowshare.Stats{
		SentDatagrams: 10, SentFlows: 300, Received: 7, ReceivedFlows: 200, AppliedFlows: 196,
		Dropped:          flowshare.Drops{QueueFull: 2, SendError: 1},
		Rejected:         flowshare.Rejects{MAC: 3, Replay: 5},
		SyncRequestsSent: 2, SyncEndsReceived: 2,
	}}
	dp := fakeShareDP{{Interface: "eth1", Counters: loader.FlowShareCounters{Reported: 50, ReportDropped: 1, SharedHit: 9, SharedStale: 2}}}
	want := map[string]float64{
		`keepbit_flowshare_warm`:                                                     1,
		`keepbit_flowshare_sent_total{what="datagrams"}`:                             10,
		`keepbit_flowshare_sent_total{what="flows"}`:                                 300,
		`keepbit_flowshare_received_total{what="datagrams"}`:                         7,
		`keepbit_flowshare_received_total{what="flows"}`:                             200,
		`keepbit_flowshare_received_total{what="applied"}`:                           196,
		`keepbit_flowshare_received_total{what="skipped"}`:                           4,
		`keepbit_flowshare_dropped_flows_total{reason="queue_full"}`:                 2,
		`keepbit_flowshare_dropped_flows_total{reason="send_error"}`:                 1,
		`keepbit_flowshare_dropped_flows_total{reason="invalid"}`:                    0,
		`keepbit_flowshare_rejected_datagrams_total{reason="mac"}`:                   3,
		`keepbit_flowshare_rejected_datagrams_total{reason="replay"}`:                5,
		`keepbit_flowshare_rejected_datagrams_total{reason="clock"}`:                 0,
		`keepbit_flowshare_sync_total{what="requests_sent"}`:                         2,
		`keepbit_flowshare_sync_total{what="ends_received"}`:                         2,
		`keepbit_flowshare_dataplane_total{event="reported",interface="eth1"}`:       50,
		`keepbit_flowshare_dataplane_total{event="report_dropped",interface="eth1"}`: 1,
		`keepbit_flowshare_dataplane_total{event="shared_hit",interface="eth1"}`:     9,
		`keepbit_flowshare_dataplane_total{event="shared_stale",interface="eth1"}`:   2,
	}
	for _, enabled := range []bool{true, false} {
		src := st
		if !enabled {
			src = ownership.FlowShareStatus{}
		}
		reg := prometheus.NewRegistry()
		reg.MustRegister(&flowShareCollector{src: fakeShare(src), dp: dp})
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		if !enabled {
			if len(mfs) != 0 {
				t.Errorf("flow sharing off: %d metric families, want none", len(mfs))
			}
			continue
		}
		got := map[string]float64{}
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				var labels []string
				for _, l := range m.GetLabel() {
					labels = append(labels, l.GetName()+`="`+l.GetValue()+`"`)
				}
				name := mf.GetName()
				if len(labels) > 0 {
					name += "{" + strings.Join(labels, ",") + "}"
				}
				v := m.GetCounter().GetValue()
				if m.GetGauge() != nil {
					v = m.GetGauge().GetValue()
				}
				got[name] = v
			}
		}
		for k, v := range want {
			if g, ok := got[k]; !ok || g != v {
				t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
			}
		}
	}
}
