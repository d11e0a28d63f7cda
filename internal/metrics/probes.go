package metrics

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// probeBounds are the probe latency buckets: 100 us to 3.3 s, doubling.
var probeBounds = prometheus.ExponentialBuckets(0.0001, 2, probeBuckets)

const probeBuckets = 16

// probeStats keeps every backend's probe latency histogram and failure
// count in one compact record and turns them into
// keepbit_probe_latency_seconds and keepbit_probe_failures_total at scrape
// time. The client library's histogram and counter cost ~1.5 KiB per
// backend, a third of the daemon's heap at 16,000 backends; a record here
// is ~200 bytes.
type probeStats struct {
	latency, failures *prometheus.Desc
	// src, when set, lists the backends that exist: a scrape forgets the
	// series of backends a reload removed, once they have had no result
	// for grace (a scrape during a start or a reload sees new backends
	// probed before the list has them).
	src   Source
	grace time.Duration

	mu     sync.Mutex
	series map[probeKey]*probeSeries
	pruned time.Time // when a scrape last asked src (mu)
}

type probeKey struct{ service, backend string }

type probeSeries struct {
	buckets [probeBuckets]uint64 // per bound, not cumulative; above the last bound only in count (+Inf)
	count   uint64
	sum     float64
	failed  uint64
	last    time.Time // of the latest result
}

func newProbeStats(src Source) *probeStats {
	return &probeStats{
		src:     src,
		latency: prometheus.NewDesc("keepbit_probe_latency_seconds", "Health probe latency.", []string{"service", "backend"}, nil),
		failures: prometheus.NewDesc("keepbit_probe_failures_total", "Failed health probes.",
			[]string{"service", "backend"}, nil),
		series: map[probeKey]*probeSeries{},
	}
}

func (p *probeStats) observe(service, backend string, seconds float64, failed bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	k := probeKey{service, backend}
	s := p.series[k]
	if s == nil {
		s = &probeSeries{}
		p.series[k] = s
	}
	for i, b := range probeBounds {
		if seconds <= b {
			s.buckets[i]++
			break
		}
	}
	s.count++
	s.sum += seconds
	s.last = time.Now()
	if failed {
		s.failed++
	}
}

func (p *probeStats) Describe(ch chan<- *prometheus.Desc) {
	ch <- p.latency
	ch <- p.failures
}

func (p *probeStats) Collect(ch chan<- prometheus.Metric) {
	type snap struct {
		k probeKey
		s probeSeries
	}
	// The status lists every backend (16,000 at scale) and the state
	// collector asks for it too: forgetting removed backends a little
	// late is fine, so it is asked at most every quarter grace.
	p.mu.Lock()
	prune := p.src != nil && time.Since(p.pruned) >= p.grace/4
	if prune {
		p.pruned = time.Now()
	}
	p.mu.Unlock()
	var exists map[probeKey]bool
	if prune {
		exists = map[probeKey]bool{}
		for _, s := range p.src.Status() {
			for _, b := range s.Backends {
				exists[probeKey{s.Name, b.Address.String()}] = true
			}
		}
	}
	p.mu.Lock()
	snaps := make([]snap, 0, len(p.series))
	for k, s := range p.series {
		if exists != nil && !exists[k] && time.Since(s.last) >= p.grace {
			delete(p.series, k)
			continue
		}
		snaps = append(snaps, snap{k, *s})
	}
	p.mu.Unlock()
	for _, sn := range snaps {
		cum := make(map[float64]uint64, probeBuckets)
		var n uint64
		for i, b := range probeBounds {
			n += sn.s.buckets[i]
			cum[b] = n
		}
		ch <- prometheus.MustNewConstHistogram(p.latency, sn.s.count, sn.s.sum, cum, sn.k.service, sn.k.backend)
		if sn.s.failed > 0 {
			ch <- prometheus.MustNewConstMetric(p.failures, prometheus.CounterValue, float64(sn.s.failed), sn.k.service, sn.k.backend)
		}
	}
}
