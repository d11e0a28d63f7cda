package metrics

import (
	"net/netip"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keepbit/keepbit/internal/control"
)

// TestScrapePassive: an ejected backend, a quiet one, a flagged one whose
// ejection was refused, and a backend of a service without passive
// detection (no series).
func TestScrapePassive(t *testing.T) {
	src := fakePredict{
		{Name: "web", Backends: []control.BackendStatus{
			{Address: netip.MustParseAddr("10.0.0.1"), Passive: &control.Passivity{Ejected: true, Acted: "ejected", InWindow: 6, Total: 9, Ejections: 2}},
			{Address: netip.MustParseAddr("10.0.0.2"), Passive: &control.Passivity{}},
			{Address: netip.MustParseAddr("10.0.0.3"), Passive: &control.Passivity{Ejected: true, Acted: "not ejected: the last usable backend", InWindow: 5, Total: 5, Ejections: 1}},
		}},
		{Name: "dns", Backends: []control.BackendStatus{{Address: netip.MustParseAddr("10.0.1.1")}}},
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(&passiveCollector{src: src})
	got := series(t, reg)
	for _, c := range []struct {
		metric, backend string
		v               float64
	}{
		{"keepbit_backend_syn_retransmits_total", "10.0.0.1", 9},
		{"keepbit_backend_syn_retransmits_window", "10.0.0.1", 6},
		{"keepbit_backend_passive_ejected", "10.0.0.1", 1},
		{"keepbit_backend_passive_ejections_total", "10.0.0.1", 2},
		{"keepbit_backend_syn_retransmits_total", "10.0.0.2", 0},
		{"keepbit_backend_passive_ejected", "10.0.0.2", 0},
		{"keepbit_backend_passive_ejected", "10.0.0.3", 0},
		{"keepbit_backend_passive_ejections_total", "10.0.0.3", 1},
	} {
		k := c.metric + `{backend="` + c.backend + `",service="web"}`
		if g, ok := got[k]; !ok || g != c.v {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, c.v)
		}
	}
	if n := len(got); n != 12 {
		t.Errorf("%d series, want 12 (4 per backend of web, none for dns)", n)
	}
}
