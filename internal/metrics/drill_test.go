package metrics

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keepbit/keepbit/internal/drill"
)

type fakeDrills struct {
	h      []drill.Result
	counts map[[2]string]uint64
	run    []string
}

func (f fakeDrills) History() []drill.Result      { return f.h }
func (f fakeDrills) Counts() map[[2]string]uint64 { return f.counts }
func (f fakeDrills) Running() []string            { return f.run }

// TestScrapeDrills: counts by kind and result, the last finished drill of
// each kind (an aborted one does not replace it), running drills.
func TestScrapeDrills(t *testing.T) {
	ended := time.Unix(1700000000, 0)
	src := fakeDrills{
		h: []drill.Result{
			{Kind: drill.Backend, Result: drill.ResultFailed, MTTR: time.Second, Ended: ended.Add(-time.Hour)},
			{Kind: drill.Backend, Result: drill.ResultOK, MTTR: 120 * time.Millisecond, Ended: ended, Out: drill.Phase{SinceFault: 30 * time.Microsecond},
				Traffic: drill.Traffic{StoppedAfter: 2 * time.Millisecond, BackAfter: 120 * time.Millisecond, Gap: 1500 * time.Millisecond}},
			{Kind: drill.Backend, Result: drill.ResultAborted, MTTR: 9 * time.Second},
			{Kind: drill.Node, Result: drill.ResultFailed, MTTR: 3 * time.Second, Ended: ended},
		},
		counts: map[[2]string]uint64{{"backend", "ok"}: 1, {"backend", "failed"}: 1, {"backend", "aborted"}: 1, {"backend", "refused"}: 4, {"node", "failed"}: 1},
		run:    []string{"node"},
	}
	want := map[string]float64{
		`keepbit_drills_total{kind="backend",result="ok"}`:                     1,
		`keepbit_drills_total{kind="backend",result="refused"}`:                4,
		`keepbit_drills_total{kind="node",result="failed"}`:                    1,
		`keepbit_drills_running`:                                               1,
		`keepbit_drill_last_seconds{kind="backend",measure="mttr"}`:            0.12,
		`keepbit_drill_last_seconds{kind="backend",measure="out"}`:             0.00003,
		`keepbit_drill_last_seconds{kind="backend",measure="traffic_stopped"}`: 0.002,
		`keepbit_drill_last_seconds{kind="backend",measure="traffic_back"}`:    0.12,
		`keepbit_drill_last_seconds{kind="backend",measure="gap"}`:             1.5,
		`keepbit_drill_last_seconds{kind="node",measure="mttr"}`:               3,
		`keepbit_drill_last_ok{kind="backend"}`:                                1,
		`keepbit_drill_last_ok{kind="node"}`:                                   0,
		`keepbit_drill_last_timestamp_seconds{kind="backend"}`:                 1700000000,
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(&drillCollector{src: src})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
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
