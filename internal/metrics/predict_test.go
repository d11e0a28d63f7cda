package metrics

import (
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keepbit/keepbit/internal/control"
)

type fakePredict []control.ServiceStatus

func (f fakePredict) Status() []control.ServiceStatus { return f }

// TestScrapePredict: a drained degraded backend, a healthy one, and a
// backend of a service without predictive detection (no series).
func TestScrapePredict(t *testing.T) {
	src := fakePredict{
		{Name: "web", Backends: []control.BackendStatus{
			{Address: netip.MustParseAddr("10.0.0.1"), Predict: &control.Prediction{Degraded: true, Acted: "drained", Samples: 20, Failures: 5,
				P50: 60 * time.Millisecond, P90: 80 * time.Millisecond, Flagged: 2}},
			{Address: netip.MustParseAddr("10.0.0.2"), Predict: &control.Prediction{Samples: 20, P50: 10 * time.Millisecond, P90: 12 * time.Millisecond}},
		}},
		{Name: "dns", Backends: []control.BackendStatus{{Address: netip.MustParseAddr("10.0.1.1")}}},
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(&predictCollector{src: src})
	want := map[string]float64{}
	for _, c := range []struct {
		metric, backend string
		extra           []string
		v               float64
	}{
		{"keepbit_backend_degraded", "10.0.0.1", nil, 1},
		{"keepbit_backend_degraded", "10.0.0.2", nil, 0},
		{"keepbit_backend_predict_drained", "10.0.0.1", nil, 1},
		{"keepbit_backend_predict_drained", "10.0.0.2", nil, 0},
		{"keepbit_backend_predict_deweighted", "10.0.0.1", nil, 0},
		{"keepbit_backend_degraded_total", "10.0.0.1", nil, 2},
		{"keepbit_backend_predict_latency_seconds", "10.0.0.1", []string{"0.5"}, 0.06},
		{"keepbit_backend_predict_latency_seconds", "10.0.0.1", []string{"0.9"}, 0.08},
		{"keepbit_backend_predict_failure_ratio", "10.0.0.1", nil, 0.25},
		{"keepbit_backend_predict_failure_ratio", "10.0.0.2", nil, 0},
	} {
		key := c.metric + `{backend="` + c.backend + `"`
		if c.extra != nil {
			key += `,quantile="` + c.extra[0] + `"`
		}
		want[key+`,service="web"}`] = c.v
	}
	got := series(t, reg)
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
		}
	}
	if n := len(got); n != 14 {
		t.Errorf("%d series, want 14 (7 per backend of web, none for dns)", n)
	}
}

// series gathers reg into name{labels} -> value.
func series(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			name := mf.GetName() + "{"
			for i, l := range m.GetLabel() {
				if i > 0 {
					name += ","
				}
				name += l.GetName() + `="` + l.GetValue() + `"`
			}
			v := m.GetCounter().GetValue()
			if m.GetGauge() != nil {
				v = m.GetGauge().GetValue()
			}
			got[name+"}"] = v
		}
	}
	return got
}
