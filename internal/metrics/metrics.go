// Package metrics exposes keepbitd to Prometheus: dataplane counters and
// backend states read at scrape time, failovers and phase durations from
// the flight recorder, probe latencies as they come.
package metrics

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/keepbit/keepbit/internal/control"
	"github.com/keepbit/keepbit/internal/ownership"
	"github.com/keepbit/keepbit/internal/recorder"
	"github.com/keepbit/keepbit/internal/version"
	"github.com/keepbit/keepbit/loader"
	"github.com/keepbit/keepbit/probe"
	"github.com/keepbit/keepbit/vip/vrrp"
)

// Metrics is one registry for one daemon.
type Metrics struct {
	reg             *prometheus.Registry
	probes          *probeStats
	transitions     *prometheus.CounterVec
	phases          *prometheus.HistogramVec
	reloads         *prometheus.CounterVec
	vrrpTransitions *prometheus.CounterVec
}

// VRRPStatus is the VRRP owner's status (*ownership.VRRP).
type VRRPStatus interface {
	Status() []ownership.VRRPStatus
}

// Source is what a scrape reads of the controller (*control.Controller):
// never the dataplane itself.
type Source interface {
	Generation() int
	Status() []control.ServiceStatus
	// Counters reads every dataplane's counters once.
	Counters() control.Counters
}

// New registers Keepbit's metrics for ctl and the VRRP instances of vr
// (nil: none). Probe latencies come through ObserveProbe, which the
// caller hands to the controller (control.Controller.ProbeObserver).
func New(ctl Source, vr VRRPStatus) *Metrics {
	m := &Metrics{
		reg:    prometheus.NewRegistry(),
		probes: newProbeStats(ctl),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keepbit_backend_transitions_total", Help: "Backend state changes written to the dataplane, by new state."},
			[]string{"service", "state"}),
		phases: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "keepbit_failover_phase_seconds", Help: "Failover phase durations: detect_to_decide, decide_to_apply, detect_to_apply, detect_to_announce.",
			Buckets: prometheus.ExponentialBuckets(0.000001, 4, 14)}, []string{"phase"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keepbit_config_reloads_total", Help: "Config reloads by result."}, []string{"result"}),
		vrrpTransitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keepbit_vrrp_transitions_total", Help: "VRRP state changes by new state."}, []string{"instance", "state"}),
	}
	bi := version.Get()
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "keepbit_build_info", Help: "Always 1; the labels say which keepbitd build is running."},
		[]string{"version", "revision", "goversion"})
	build.WithLabelValues(bi.Version, bi.Revision, bi.GoVersion).Set(1)
	m.reg.MustRegister(build)
	m.reg.MustRegister(m.probes, m.transitions, m.phases, m.reloads, m.vrrpTransitions,
		&collector{src: ctl, vrrp: vr}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// ObserveProbe records one probe's latency and failure.
func (m *Metrics) ObserveProbe(service, backend string, r probe.Result) {
	m.probes.observe(service, backend, r.Latency.Seconds(), r.Err != nil)
}

// Follow turns flight-recorder events into counters and histograms until
// ctx ends.
func (m *Metrics) Follow(ctx context.Context, rec *recorder.Recorder) {
	var after uint64
	for {
		evs, err := rec.Wait(ctx, after)
		if err != nil {
			return
		}
		for _, e := range evs {
			after = e.Seq
			switch {
			case strings.HasPrefix(e.Kind, "backend-"):
				m.transitions.WithLabelValues(e.Service, strings.TrimPrefix(e.Kind, "backend-")).Inc()
				if !e.Detect.IsZero() {
					m.phases.WithLabelValues("detect_to_decide").Observe(e.DetectToDecide.Seconds())
					m.phases.WithLabelValues("detect_to_apply").Observe(e.DetectToApply.Seconds())
				}
				if !e.Apply.IsZero() {
					m.phases.WithLabelValues("decide_to_apply").Observe(e.DecideToApply.Seconds())
				}
			case strings.HasPrefix(e.Kind, "vrrp-"):
				m.vrrpTransitions.WithLabelValues(e.Service, strings.TrimPrefix(e.Kind, "vrrp-")).Inc()
				if !e.Announce.IsZero() {
					m.phases.WithLabelValues("detect_to_announce").Observe(e.DetectToAnnounce.Seconds())
				}
			case e.Kind == "reload":
				result := "ok"
				if strings.Contains(e.Reason, ": ") {
					result = "incomplete"
				}
				m.reloads.WithLabelValues(result).Inc()
			case e.Kind == "reload-failed":
				m.reloads.WithLabelValues("refused").Inc()
			}
		}
	}
}

// Handler answers GET /metrics.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	return mux
}

// Serve answers /metrics on addr until ctx ends.
func (m *Metrics) Serve(ctx context.Context, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: m.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

var (
	descState = prometheus.NewDesc("keepbit_backend_state", "Backend state in the dataplane: 0 down, 1 up, 2 draining.",
		[]string{"service", "backend"}, nil)
	descHealth = prometheus.NewDesc("keepbit_backend_healthy", "1 when the backend's health check says up.",
		[]string{"service", "backend"}, nil)
	descSvcPackets = prometheus.NewDesc("keepbit_service_packets_total", "Packets the dataplane matched to the service.", []string{"service"}, nil)
	descSvcBytes   = prometheus.NewDesc("keepbit_service_bytes_total", "Bytes the dataplane matched to the service.", []string{"service"}, nil)
	descBePackets  = prometheus.NewDesc("keepbit_backend_packets_total", "Packets forwarded to the backend.", []string{"service", "backend"}, nil)
	descBeBytes    = prometheus.NewDesc("keepbit_backend_bytes_total", "Bytes forwarded to the backend.", []string{"service", "backend"}, nil)
	descReasons    = prometheus.NewDesc("keepbit_dataplane_packets_total", "Packets seen by the XDP program, by verdict reason.", []string{"interface", "reason"}, nil)
	descGeneration = prometheus.NewDesc("keepbit_config_generation", "Config generation in force.", nil, nil)
	descVRRP       = prometheus.NewDesc("keepbit_vrrp_state", "VRRP instance state: 0 initialize, 1 backup, 2 master, 3 fault.", []string{"instance"}, nil)
	descVRRPPrio   = prometheus.NewDesc("keepbit_vrrp_priority", "VRRP priority in force (after tracking).", []string{"instance"}, nil)
)

// collector reads the controller and the VRRP owner at scrape time.
type collector struct {
	src  Source
	vrrp VRRPStatus
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descState, descHealth, descSvcPackets, descSvcBytes, descBePackets, descBeBytes, descReasons, descGeneration, descVRRP, descVRRPPrio} {
		ch <- d
	}
}

// The numbers the gauges' help texts promise, from the typed states.
var (
	vrrpValue    = map[vrrp.State]float64{vrrp.Initialize: 0, vrrp.Backup: 1, vrrp.Master: 2, vrrp.Fault: 3}
	backendValue = map[loader.State]float64{loader.Down: 0, loader.Up: 1, loader.Draining: 2}
)

// Collect reads the counters once per scrape (the controller reads each
// dataplane once, whatever the number of services on it). A service the
// dataplane does not hold (mid-reload), or whose dataplane could not be
// read, has no counter series in that scrape: a 0 would read as a reset.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(descGeneration, prometheus.GaugeValue, float64(c.src.Generation()))
	if c.vrrp != nil {
		for _, v := range c.vrrp.Status() {
			ch <- prometheus.MustNewConstMetric(descVRRP, prometheus.GaugeValue, vrrpValue[v.State], v.Name)
			ch <- prometheus.MustNewConstMetric(descVRRPPrio, prometheus.GaugeValue, float64(v.Priority), v.Name)
		}
	}
	counters := c.src.Counters()
	for iface, reasons := range counters.Reasons {
		for reason, rc := range reasons {
			ch <- prometheus.MustNewConstMetric(descReasons, prometheus.CounterValue, float64(rc.Packets), iface, reason)
		}
	}
	for _, s := range c.src.Status() {
		for _, b := range s.Backends {
			addr := b.Address.String()
			ch <- prometheus.MustNewConstMetric(descState, prometheus.GaugeValue, backendValue[b.State], s.Name, addr)
			healthy := 0.0
			if b.Health == probe.Up {
				healthy = 1
			}
			ch <- prometheus.MustNewConstMetric(descHealth, prometheus.GaugeValue, healthy, s.Name, addr)
		}
		sc, held := counters.Services[s.Name]
		if !held {
			continue
		}
		ch <- prometheus.MustNewConstMetric(descSvcPackets, prometheus.CounterValue, float64(sc.Service.Packets), s.Name)
		ch <- prometheus.MustNewConstMetric(descSvcBytes, prometheus.CounterValue, float64(sc.Service.Bytes), s.Name)
		for addr, bc := range sc.Backends {
			ch <- prometheus.MustNewConstMetric(descBePackets, prometheus.CounterValue, float64(bc.Packets), s.Name, addr.String())
			ch <- prometheus.MustNewConstMetric(descBeBytes, prometheus.CounterValue, float64(bc.Bytes), s.Name, addr.String())
		}
	}
}
