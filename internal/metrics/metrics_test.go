package metrics

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/keepbit/keepbit/internal/control"
	"github.com/keepbit/keepbit/internal/ownership"
	"github.com/keepbit/keepbit/internal/recorder"
	"github.com/keepbit/keepbit/loader"
	"github.com/keepbit/keepbit/probe"
	"github.com/keepbit/keepbit/vip/vrrp"
)

// fakeSource is the controller: services spread round-robin over
// interfaces, two backends each; a service's packets are 10 times its
// index, a backend's its service's plus the backend's index (1, 2).
type fakeSource struct {
	status   []control.ServiceStatus
	counters control.Counters
	reads    int          // Counters calls
	statuses atomic.Int32 // Status calls
}

func (f *fakeSource) Generation() int                 { return 3 }
func (f *fakeSource) Status() []control.ServiceStatus { f.statuses.Add(1); return f.status }
func (f *fakeSource) Counters() control.Counters      { f.reads++; return f.counters }

// world builds services over ifaces; the counters of a failing interface
// are missing, as the controller leaves them.
func world(services int, ifaces []string, failing map[string]bool) *fakeSource {
	src := &fakeSource{counters: control.Counters{Services: map[string]control.ServiceCounters{},
		Reasons: map[string]map[string]loader.Counter{}, Failed: map[string]error{}}}
	for _, ifc := range ifaces {
		if failing[ifc] {
			src.counters.Failed[ifc] = errors.New("read counters: broken")
			continue
		}
		src.counters.Reasons[ifc] = map[string]loader.Counter{"pass": {Packets: 7}}
	}
	for i := range services {
		name := fmt.Sprintf("svc%d", i)
		ifc := ifaces[i%len(ifaces)]
		key := loader.ServiceKey{VIP: netip.AddrFrom4([4]byte{198, 51, byte(i / 250), byte(i%250 + 1)}), Port: 80, Proto: loader.TCP}
		ss := control.ServiceStatus{Name: name, Key: key, Interface: ifc}
		bs := map[netip.Addr]loader.Counter{}
		for j := range 2 {
			addr := netip.AddrFrom4([4]byte{10, byte(i / 250), byte(i % 250), byte(j + 1)})
			ss.Backends = append(ss.Backends, control.BackendStatus{Address: addr, State: loader.Up, Health: probe.Up})
			bs[addr] = loader.Counter{Packets: uint64(10*i + j + 1)}
		}
		if !failing[ifc] {
			src.counters.Services[name] = control.ServiceCounters{Interface: ifc, Service: loader.Counter{Packets: uint64(10 * i), Bytes: uint64(1000 * i)}, Backends: bs}
		}
		src.status = append(src.status, ss)
	}
	return src
}

// fakeVRRP: one instance per state.
type fakeVRRP struct{}

func (fakeVRRP) Status() []ownership.VRRPStatus {
	var out []ownership.VRRPStatus
	for _, st := range []vrrp.State{vrrp.Initialize, vrrp.Backup, vrrp.Master, vrrp.Fault} {
		out = append(out, ownership.VRRPStatus{Name: st.String(), State: st, Priority: uint8(100 + st)})
	}
	return out
}

func gather(t *testing.T, src Source, vr VRRPStatus) map[string][]*dto.Metric {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(&collector{src: src, vrrp: vr})
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

// TestScrape: series per case, counters read once per scrape, each
// service's counters its own, states typed into the promised numbers.
// Before, the collector read a dataplane's counters once per service (200
// reads of everything per scrape at 200 services).
func TestScrape(t *testing.T) {
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
			src := world(c.services, c.ifaces, c.failing)
			const scrapes = 3
			var got map[string][]*dto.Metric
			for range scrapes {
				got = gather(t, src, nil)
			}
			if src.reads != scrapes {
				t.Errorf("Counters read %d times in %d scrapes, want %d", src.reads, scrapes, scrapes)
			}
			if n := len(got["keepbit_service_packets_total"]); n != c.wantSvcSeries {
				t.Errorf("keepbit_service_packets_total: %d series, want %d", n, c.wantSvcSeries)
			}
			if n := len(got["keepbit_backend_state"]); n != 2*c.services {
				t.Errorf("keepbit_backend_state: %d series, want %d (states need no counters)", n, 2*c.services)
			}
			for _, m := range got["keepbit_backend_state"] {
				if v := m.GetGauge().GetValue(); v != 1 {
					t.Fatalf("keepbit_backend_state %v = %v, want 1 (up)", m.GetLabel(), v)
				}
			}
			for _, ifc := range c.ifaces {
				want := 1
				if c.failing[ifc] {
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

// TestScrapeStates: every typed state becomes the number the help text
// gives it.
func TestScrapeStates(t *testing.T) {
	src := world(1, []string{"eth0"}, nil)
	bs := src.status[0].Backends
	bs[0].State, bs[0].Health = loader.Draining, probe.Down
	bs[1].State, bs[1].Health = loader.Down, probe.Unknown
	got := gather(t, src, fakeVRRP{})
	cases := []struct {
		metric, label, value string
		want                 float64
	}{
		{"keepbit_backend_state", "backend", "10.0.0.1", 2},
		{"keepbit_backend_state", "backend", "10.0.0.2", 0},
		{"keepbit_backend_healthy", "backend", "10.0.0.1", 0},
		{"keepbit_backend_healthy", "backend", "10.0.0.2", 0},
		{"keepbit_vrrp_state", "instance", "initialize", 0},
		{"keepbit_vrrp_state", "instance", "backup", 1},
		{"keepbit_vrrp_state", "instance", "master", 2},
		{"keepbit_vrrp_state", "instance", "fault", 3},
		{"keepbit_vrrp_priority", "instance", "master", 102},
		{"keepbit_config_generation", "", "", 3},
	}
	for _, c := range cases {
		ms := got[c.metric]
		if c.label != "" {
			ms = labelled(ms, c.label, c.value)
		}
		if len(ms) != 1 || ms[0].GetGauge().GetValue() != c.want {
			t.Errorf("%s{%s=%q} = %v, want %v", c.metric, c.label, c.value, ms, c.want)
		}
	}
}

// TestScrapeSkipsServiceNotInDataplane: a configured service the dataplane
// does not hold (yet, or any more: mid-reload) has no counter series in that
// scrape; before, it was exported as 0, which Prometheus reads as a reset.
func TestScrapeSkipsServiceNotInDataplane(t *testing.T) {
	src := world(3, []string{"eth0"}, nil)
	delete(src.counters.Services, "svc1")
	got := gather(t, src, nil)
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
	m := New(&fakeSource{}, nil)
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

// TestHandler: what a Prometheus server gets over HTTP.
func TestHandler(t *testing.T) {
	src := world(2, []string{"eth0"}, nil)
	delete(src.counters.Services, "svc1")
	h := New(src, fakeVRRP{}).Handler()
	cases := []struct {
		method, path string
		code         int
		want, not    []string // lines of the body
	}{
		{"GET", "/metrics", 200, []string{
			`keepbit_config_generation 3`,
			`keepbit_backend_state{backend="10.0.0.1",service="svc0"} 1`,
			`keepbit_backend_healthy{backend="10.0.1.2",service="svc1"} 1`,
			`keepbit_service_packets_total{service="svc0"} 0`,
			`keepbit_backend_packets_total{backend="10.0.0.2",service="svc0"} 2`,
			`keepbit_dataplane_packets_total{interface="eth0",reason="pass"} 7`,
			`keepbit_vrrp_state{instance="master"} 2`,
			`keepbit_vrrp_priority{instance="fault"} 103`,
		}, []string{`keepbit_service_packets_total{service="svc1"} 0`}},
		{"GET", "/nope", 404, nil, nil},
		{"POST", "/metrics", 405, nil, nil},
	}
	for _, c := range cases {
		rr := httptest.NewRecorder()
		h.ServeHTTP(rr, httptest.NewRequest(c.method, c.path, nil))
		if rr.Code != c.code {
			t.Errorf("%s %s: %d, want %d", c.method, c.path, rr.Code, c.code)
		}
		lines := strings.Split(rr.Body.String(), "\n")
		for _, w := range c.want {
			if !slices.Contains(lines, w) {
				t.Errorf("%s %s: no line %s", c.method, c.path, w)
			}
		}
		for _, w := range c.not {
			if slices.Contains(lines, w) {
				t.Errorf("%s %s: line %s should not be there", c.method, c.path, w)
			}
		}
	}
}
