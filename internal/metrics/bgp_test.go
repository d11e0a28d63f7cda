package metrics

import (
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keepbit/keepbit/internal/ownership"
	"github.com/keepbit/keepbit/vip/bfd"
	"github.com/keepbit/keepbit/vip/bgp"
)

type fakeBGP ownership.BGPStatus

func (f fakeBGP) Status() ownership.BGPStatus { return ownership.BGPStatus(f) }

// TestScrapeBGP: one series per session, BFD session and VIP, with the
// values the help texts promise; nothing without a bgp section.
func TestScrapeBGP(t *testing.T) {
	st := ownership.BGPStatus{Configured: true, Draining: true, Sessions: []ownership.BGPSession{
		{PeerStatus: bgp.PeerStatus{Address: netip.MustParseAddr("10.91.0.1"), State: bgp.StateEstablished, Uptime: 90 * time.Second},
			Transitions: 5, BFD: &ownership.BFDStatus{State: bfd.Up, Changes: 3}},
		{PeerStatus: bgp.PeerStatus{Address: netip.MustParseAddr("10.91.0.2"), State: bgp.StateIdle, AdminDown: true}, Transitions: 9,
			BFD: &ownership.BFDStatus{State: bfd.Down, Changes: 8}},
		{PeerStatus: bgp.PeerStatus{Address: netip.MustParseAddr("10.91.0.3"), State: bgp.StateActive}},
	}, Routes: []ownership.BGPRoute{
		{VIP: netip.MustParseAddr("10.90.9.9"), Announced: true},
		{VIP: netip.MustParseAddr("10.90.9.8"), Reason: "no usable backend"},
	}}
	want := map[string]map[string]float64{ // metric -> label value -> value
		"keepbit_bgp_session_up":                  {"10.91.0.1": 1, "10.91.0.2": 0, "10.91.0.3": 0},
		"keepbit_bgp_session_established_seconds": {"10.91.0.1": 90, "10.91.0.2": 0, "10.91.0.3": 0},
		"keepbit_bgp_session_transitions_total":   {"10.91.0.1": 5, "10.91.0.2": 9, "10.91.0.3": 0},
		"keepbit_bgp_session_held_down":           {"10.91.0.1": 0, "10.91.0.2": 1, "10.91.0.3": 0},
		"keepbit_bfd_session_up":                  {"10.91.0.1": 1, "10.91.0.2": 0},
		"keepbit_bfd_state_changes_total":         {"10.91.0.1": 3, "10.91.0.2": 8},
		"keepbit_bgp_route_announced":             {"10.90.9.9": 1, "10.90.9.8": 0},
		"keepbit_bgp_draining":                    {"": 1},
	}
	for _, configured := range []bool{true, false} {
		reg := prometheus.NewRegistry()
		src := st
		if !configured {
			src = ownership.BGPStatus{}
		}
		reg.MustRegister(&bgpCollector{src: fakeBGP(src)})
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		if !configured {
			if len(mfs) != 0 {
				t.Errorf("no bgp section: %d metric families, want none", len(mfs))
			}
			continue
		}
		got := map[string]map[string]float64{}
		for _, mf := range mfs {
			got[mf.GetName()] = map[string]float64{}
			for _, m := range mf.GetMetric() {
				label := ""
				if len(m.GetLabel()) > 0 {
					label = m.GetLabel()[0].GetValue()
				}
				v := m.GetGauge().GetValue() + m.GetCounter().GetValue()
				got[mf.GetName()][label] = v
			}
		}
		for name, series := range want {
			if len(got[name]) != len(series) {
				t.Errorf("%s: %v, want %v", name, got[name], series)
				continue
			}
			for label, v := range series {
				if got[name][label] != v {
					t.Errorf("%s{%q} = %v, want %v", name, label, got[name][label], v)
				}
			}
		}
	}
}
