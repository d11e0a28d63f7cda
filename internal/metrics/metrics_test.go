package metrics

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/keepbit/keepbit/internal/control"
	"github.com/keepbit/keepbit/internal/recorder"
	"github.com/keepbit/keepbit/loader"
)

// fakeDP is a dataplane's counters: every service's packets are 10 times
// its index, every backend's packets its service's plus the backend index.
type fakeDP struct {
	calls int
	st    loader.Stats
	err   error
}

func (f *fakeDP) Stats() (loader.Stats, error) {
	f.calls++
	return f.st, f.err
}

type fakeSource struct {
	status []control.ServiceStatus
	dp     map[string]*fakeDP // by service name
	key    map[string]loader.ServiceKey
}

func (f *fakeSource) Generation() int                 { return 3 }
func (f *fakeSource) Status() []control.ServiceStatus { return f.status }
func (f *fakeSource) Counters(service string) (counterReader, loader.ServiceKey, bool) {
	dp, ok := f.dp[service]
	if !ok {
		return nil, loader.ServiceKey{}, false
	}
	return dp, f.key[service], true
}

// world builds services spread round-robin over the named interfaces, each
// with two backends, and one fake dataplane per interface.
func world(services int, ifaces []string, failing map[string]bool) (*fakeSource, map[string]*fakeDP) {
	src := &fakeSource{dp: map[string]*fakeDP{}, key: map[string]loader.ServiceKey{}}
	dps := map[string]*fakeDP{}
	for _, ifc := range ifaces {
		dps[ifc] = &fakeDP{st: loader.Stats{Reasons: map[string]loader.Counter{"pass": {Packets: 7}},
			Services: map[loader.ServiceKey]loader.Counter{}, Backends: map[loader.ServiceKey]map[netip.Addr]loader.Counter{}}}
		if failing[ifc] {
			dps[ifc].err = errors.New("read counters: broken")
		}
	}
	for i := range services {
		name := fmt.Sprintf("svc%d", i)
		ifc := ifaces[i%len(ifaces)]
		key := loader.ServiceKey{VIP: netip.AddrFrom4([4]byte{198, 51, byte(i / 250), byte(i%250 + 1)}), Port: 80, Proto: loader.TCP}
		ss := control.ServiceStatus{Name: name, Key: key.String(), Interface: ifc}
		bs := map[netip.Addr]loader.Counter{}
		for j := range 2 {
			addr := netip.AddrFrom4([4]byte{10, byte(i / 250), byte(i % 250), byte(j + 1)})
			ss.Backends = append(ss.Backends, control.BackendStatus{Address: addr.String(), State: "up", Health: "up"})
			bs[addr] = loader.Counter{Packets: uint64(10*i + j + 1)}
		}
		dps[ifc].st.Services[key] = loader.Counter{Packets: uint64(10 * i), Bytes: uint64(1000 * i)}
		dps[ifc].st.Backends[key] = bs
		src.status = append(src.status, ss)
		src.dp[name] = dps[ifc]
		src.key[name] = key
	}
	return src, dps
}

func gather(t *testing.T, src source) map[string][]*dto.Metric {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(&dataplaneCollector{src: src})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]*dto.Metric{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf.GetMetric()
	}
	return out
}

func labelled(ms []*dto.Metric, name, value string) []*dto.Metric {
	var out []*dto.Metric
	for _, m := range ms {
		for _, l := range m.GetLabel() {
			if l.GetName() == name && l.GetValue() == value {
				out = append(out, m)
			}
		}
	}
	return out
}

// TestScrapeReadsEachDataplaneOnce: before the fix the collector called
// Stats once per service, so a scrape of 200 services read every counter
// of the dataplane 200 times.
func TestScrapeReadsEachDataplaneOnce(t *testing.T) {
	cases := []struct {
		name          string
		services      int
		ifaces        []string
		failing       map[string]bool
		wantSvcSeries int // keepbit_service_packets_total series
	}{
		{"200 services, one dataplane", 200, []string{"eth0"}, nil, 200},
		{"200 services, two dataplanes", 200, []string{"eth0", "eth1"}, nil, 200},
		{"one dataplane fails", 200, []string{"eth0", "eth1"}, map[string]bool{"eth1": true}, 100},
		{"no services", 0, []string{"eth0"}, nil, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src, dps := world(c.services, c.ifaces, c.failing)
			const scrapes = 3
			var got map[string][]*dto.Metric
			for range scrapes {
				got = gather(t, src)
			}
			for ifc, dp := range dps {
				want := scrapes
				if c.services == 0 {
					want = 0
				}
				if dp.calls != want {
					t.Errorf("%s: Stats read %d times in %d scrapes, want %d", ifc, dp.calls, scrapes, want)
				}
			}
			if n := len(got["keepbit_service_packets_total"]); n != c.wantSvcSeries {
				t.Errorf("keepbit_service_packets_total: %d series, want %d", n, c.wantSvcSeries)
			}
			if n := len(got["keepbit_backend_state"]); n != 2*c.services {
				t.Errorf("keepbit_backend_state: %d series, want %d (states need no counters)", n, 2*c.services)
			}
			for ifc := range dps {
				want := 1
				if c.failing[ifc] || c.services == 0 {
					want = 0
				}
				if n := len(labelled(got["keepbit_dataplane_packets_total"], "interface", ifc)); n != want {
					t.Errorf("keepbit_dataplane_packets_total{interface=%q}: %d series, want %d", ifc, n, want)
				}
			}
			if c.services == 0 || c.failing["eth0"] {
				return
			}
			// A service on eth0 has its own counters, not another's.
			i := len(c.ifaces) % c.services
			name := fmt.Sprintf("svc%d", i)
			if ms := labelled(got["keepbit_service_packets_total"], "service", name); len(ms) != 1 || ms[0].GetCounter().GetValue() != float64(10*i) {
				t.Errorf("keepbit_service_packets_total{service=%q} = %v, want %d", name, ms, 10*i)
			}
			be := labelled(labelled(got["keepbit_backend_packets_total"], "service", name), "backend", fmt.Sprintf("10.0.%d.2", i))
			if len(be) != 1 || be[0].GetCounter().GetValue() != float64(10*i+2) {
				t.Errorf("keepbit_backend_packets_total{service=%q,backend=10.0.%d.2} = %v, want %d", name, i, be, 10*i+2)
			}
		})
	}
}

// TestScrapeSkipsServiceNotInDataplane: a configured service the dataplane
// does not hold (yet, or any more: mid-reload) has no counter series in that
// scrape; before, it was exported as 0, which Prometheus reads as a reset.
func TestScrapeSkipsServiceNotInDataplane(t *testing.T) {
	src, dps := world(3, []string{"eth0"}, nil)
	gone := src.key["svc1"]
	delete(dps["eth0"].st.Services, gone)
	delete(dps["eth0"].st.Backends, gone)
	got := gather(t, src)
	if ms := labelled(got["keepbit_service_packets_total"], "service", "svc1"); len(ms) != 0 {
		t.Errorf("keepbit_service_packets_total{service=svc1} = %v, want no series", ms)
	}
	if n := len(got["keepbit_service_packets_total"]); n != 2 {
		t.Errorf("keepbit_service_packets_total: %d series, want 2", n)
	}
	if n := len(labelled(got["keepbit_backend_state"], "service", "svc1")); n != 2 {
		t.Errorf("keepbit_backend_state{service=svc1}: %d series, want 2 (states need no counters)", n)
	}
}

// TestFollow: flight-recorder events become counters and phase histograms.
func TestFollow(t *testing.T) {
	m := New(&control.Controller{}, nil)
	rec := recorder.New(64)
	t0 := time.Now()
	for _, e := range []recorder.Event{
		{Kind: "backend-down", Service: "web", Detect: t0, Decide: t0.Add(time.Millisecond), Apply: t0.Add(2 * time.Millisecond)},
		{Kind: "backend-down", Service: "web"}, // operator: no phases
		{Kind: "backend-up", Service: "web", Decide: t0, Apply: t0.Add(time.Millisecond)},
		{Kind: "vrrp-master", Service: "vi", Announce: t0.Add(3 * time.Millisecond), Detect: t0},
		{Kind: "reload"},
		{Kind: "reload", Reason: "service web: backend 10.0.0.1: no MAC"},
		{Kind: "reload-failed"},
		{Kind: "held-down", Service: "web"}, // not counted
	} {
		rec.Add(e)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.Follow(ctx, rec) }()
	defer func() { cancel(); <-done }()

	want := []struct {
		name string
		c    prometheus.Counter
		v    float64
	}{
		{"transitions web down", m.transitions.WithLabelValues("web", "down"), 2},
		{"transitions web up", m.transitions.WithLabelValues("web", "up"), 1},
		{"vrrp vi master", m.vrrpTransitions.WithLabelValues("vi", "master"), 1},
		{"reloads ok", m.reloads.WithLabelValues("ok"), 1},
		{"reloads incomplete", m.reloads.WithLabelValues("incomplete"), 1},
		{"reloads refused", m.reloads.WithLabelValues("refused"), 1},
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, w := range want {
		for value(t, w.c) != w.v && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if got := value(t, w.c); got != w.v {
			t.Errorf("%s = %v, want %v", w.name, got, w.v)
		}
	}
	// Phases: detect_to_* only for the probe-detected change, decide_to_apply
	// for both applied changes, detect_to_announce for the VIP move.
	for phase, n := range map[string]uint64{"detect_to_decide": 1, "detect_to_apply": 1, "decide_to_apply": 2, "detect_to_announce": 1} {
		var metric dto.Metric
		if err := m.phases.WithLabelValues(phase).(prometheus.Histogram).Write(&metric); err != nil {
			t.Fatal(err)
		}
		if got := metric.GetHistogram().GetSampleCount(); got != n {
			t.Errorf("phase %s: %d samples, want %d", phase, got, n)
		}
	}
}

func value(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
