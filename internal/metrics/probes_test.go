package metrics

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keepbit/keepbit/internal/control"
)

// TestProbeStats: the compact per-backend records expose the same
// histogram the client library's own would for the same observations,
// and a failure counter only for backends that failed.
func TestProbeStats(t *testing.T) {
	type obs struct {
		service, backend string
		seconds          float64
		failed           bool
	}
	cases := []struct {
		name string
		obs  []obs
	}{
		{"one backend", []obs{{"web", "10.0.0.1", 0.0004, false}, {"web", "10.0.0.1", 0.0001, false}, {"web", "10.0.0.1", 0.02, true}}},
		{"on the bounds and beyond the last", []obs{{"web", "10.0.0.1", 0.0001, false}, {"web", "10.0.0.1", 0.0002, false},
			{"web", "10.0.0.1", 3.2768, false}, {"web", "10.0.0.1", 5, true}, {"web", "10.0.0.1", 0, false}}},
		{"two services, same backend", []obs{{"web", "10.0.0.1", 0.001, false}, {"api", "10.0.0.1", 0.5, true}, {"api", "10.0.0.2", 0.05, false}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := newProbeStats(nil)
			want := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "keepbit_probe_latency_seconds", Help: "Health probe latency.",
				Buckets: probeBounds}, []string{"service", "backend"})
			wantFailed := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keepbit_probe_failures_total", Help: "Failed health probes."},
				[]string{"service", "backend"})
			for _, o := range c.obs {
				got.observe(o.service, o.backend, o.seconds, o.failed)
				want.WithLabelValues(o.service, o.backend).Observe(o.seconds)
				if o.failed {
					wantFailed.WithLabelValues(o.service, o.backend).Inc()
				}
			}
			gr, wr := prometheus.NewPedanticRegistry(), prometheus.NewPedanticRegistry()
			gr.MustRegister(got)
			wr.MustRegister(want, wantFailed)
			gm, err := gr.Gather()
			if err != nil {
				t.Fatal(err)
			}
			wm, err := wr.Gather()
			if err != nil {
				t.Fatal(err)
			}
			if len(gm) != len(wm) {
				t.Fatalf("%d families, want %d", len(gm), len(wm))
			}
			// The client library stamps creation times (not exposed as text).
			for _, f := range wm {
				for _, m := range f.GetMetric() {
					if h := m.GetHistogram(); h != nil {
						h.CreatedTimestamp = nil
					}
					if c := m.GetCounter(); c != nil {
						c.CreatedTimestamp = nil
					}
				}
			}
			for i := range gm {
				if gs, ws := gm[i].String(), wm[i].String(); gs != ws {
					t.Errorf("family %s\n got %s\nwant %s", wm[i].GetName(), gs, ws)
				}
			}
		})
	}
}

// TestProbeStatsForgetsRemovedBackends: a backend a reload removed stops
// being exported (and held) at the next scrape.
func TestProbeStatsForgetsRemovedBackends(t *testing.T) {
	be := func(addr string) control.BackendStatus {
		return control.BackendStatus{Address: netip.MustParseAddr(addr)}
	}
	src := &fakeSource{status: []control.ServiceStatus{{Name: "web", Backends: []control.BackendStatus{be("10.0.0.1"), be("10.0.0.2")}}}}
	p := newProbeStats(src)
	p.grace = 0
	for _, b := range []string{"10.0.0.1", "10.0.0.2"} {
		p.observe("web", b, 0.001, true)
	}
	series := func() []string {
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(p)
		fams, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, f := range fams {
			for _, m := range f.GetMetric() {
				out = append(out, f.GetName()+" "+m.GetLabel()[0].GetValue())
			}
		}
		return out
	}
	cases := []struct {
		name     string
		backends []control.BackendStatus
		want     []string
	}{
		{"both exist", []control.BackendStatus{be("10.0.0.1"), be("10.0.0.2")}, []string{
			"keepbit_probe_failures_total 10.0.0.1", "keepbit_probe_failures_total 10.0.0.2",
			"keepbit_probe_latency_seconds 10.0.0.1", "keepbit_probe_latency_seconds 10.0.0.2"}},
		{"10.0.0.2 removed", []control.BackendStatus{be("10.0.0.1")}, []string{
			"keepbit_probe_failures_total 10.0.0.1", "keepbit_probe_latency_seconds 10.0.0.1"}},
		{"10.0.0.2 back: forgotten, not restored", []control.BackendStatus{be("10.0.0.1"), be("10.0.0.2")}, []string{
			"keepbit_probe_failures_total 10.0.0.1", "keepbit_probe_latency_seconds 10.0.0.1"}},
	}
	for _, c := range cases {
		src.status[0].Backends = c.backends
		if got := series(); !slices.Equal(got, c.want) {
			t.Errorf("%s: series %v, want %v", c.name, got, c.want)
		}
	}
	// Within the grace, a backend not listed yet (a reload adding it) keeps
	// its first results.
	p.grace = time.Minute
	p.pruned = time.Time{} // this scrape prunes
	p.observe("web", "10.0.0.3", 0.001, false)
	if got := series(); !slices.Contains(got, "keepbit_probe_latency_seconds 10.0.0.3") {
		t.Errorf("a backend probed before the status lists it lost its series: %v", got)
	}
	// The status is asked at most every quarter grace, not every scrape.
	before := src.statuses.Load()
	series()
	series()
	if n := src.statuses.Load() - before; n != 0 {
		t.Errorf("two scrapes right after one that pruned asked the status %d times, want 0", n)
	}
}
