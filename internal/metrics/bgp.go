package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keepbit/keepbit/internal/ownership"
	"github.com/keepbit/keepbit/vip/bfd"
	"github.com/keepbit/keepbit/vip/bgp"
)

// BGPStatus is the BGP owner's status (*ownership.BGP).
type BGPStatus interface {
	Status() ownership.BGPStatus
}

// WatchBGP adds the BGP sessions, their BFD sessions and the VIP routes of
// src, read at scrape time.
func (m *Metrics) WatchBGP(src BGPStatus) {
	m.reg.MustRegister(&bgpCollector{src: src})
}

var (
	descBGPUp = prometheus.NewDesc("keepbit_bgp_session_up", "1 while the BGP session with the peer is established.",
		[]string{"peer"}, nil)
	descBGPUptime = prometheus.NewDesc("keepbit_bgp_session_established_seconds", "How long the BGP session has been established (0 when it is not).",
		[]string{"peer"}, nil)
	descBGPTransitions = prometheus.NewDesc("keepbit_bgp_session_transitions_total", "BGP session state changes.",
		[]string{"peer"}, nil)
	descBGPAdminDown = prometheus.NewDesc("keepbit_bgp_session_held_down", "1 while BFD holds the BGP session down.",
		[]string{"peer"}, nil)
	descBGPRoute = prometheus.NewDesc("keepbit_bgp_route_announced", "1 while the VIP's route is announced.",
		[]string{"vip"}, nil)
	descBGPDraining = prometheus.NewDesc("keepbit_bgp_draining", "1 while the node drains (every route withdrawn).", nil, nil)
	descBFDUp       = prometheus.NewDesc("keepbit_bfd_session_up", "1 while the BFD session with the peer is up.",
		[]string{"peer"}, nil)
	descBFDChanges = prometheus.NewDesc("keepbit_bfd_state_changes_total", "BFD session state changes.",
		[]string{"peer"}, nil)
)

type bgpCollector struct{ src BGPStatus }

func (c *bgpCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descBGPUp, descBGPUptime, descBGPTransitions, descBGPAdminDown, descBGPRoute, descBGPDraining, descBFDUp, descBFDChanges} {
		ch <- d
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (c *bgpCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.src.Status()
	if !st.Configured {
		return
	}
	ch <- prometheus.MustNewConstMetric(descBGPDraining, prometheus.GaugeValue, b2f(st.Draining))
	for _, s := range st.Sessions {
		peer := s.Address.String()
		ch <- prometheus.MustNewConstMetric(descBGPUp, prometheus.GaugeValue, b2f(s.State == bgp.StateEstablished), peer)
		ch <- prometheus.MustNewConstMetric(descBGPUptime, prometheus.GaugeValue, s.Uptime.Seconds(), peer)
		ch <- prometheus.MustNewConstMetric(descBGPTransitions, prometheus.CounterValue, float64(s.Transitions), peer)
		ch <- prometheus.MustNewConstMetric(descBGPAdminDown, prometheus.GaugeValue, b2f(s.AdminDown), peer)
		if b := s.BFD; b != nil {
			ch <- prometheus.MustNewConstMetric(descBFDUp, prometheus.GaugeValue, b2f(b.State == bfd.Up), peer)
			ch <- prometheus.MustNewConstMetric(descBFDChanges, prometheus.CounterValue, float64(b.Changes), peer)
		}
	}
	for _, r := range st.Routes {
		ch <- prometheus.MustNewConstMetric(descBGPRoute, prometheus.GaugeValue, b2f(r.Announced), r.VIP.String())
	}
}
