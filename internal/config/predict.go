package config

import (
	"fmt"
	"time"
)

// Predictive is a service's `predictive:` section (nil when absent: off).
// Present, even empty, it turns on predictive detection with the
// defaults below: a backend whose probe latency or intermittent failures
// make it an outlier among the service's backends is flagged, and drained
// (action drain: within the panic threshold and max_drained, never the
// last usable backend) or given a smaller share of new flows (action
// weight: weight_percent of its weight, within max_drained, never the
// only usable backend) before its check fails. internal/predict documents
// the statistic.
//
//	predictive:
//	  action: drain          # drain (default), weight, or flag (report only)
//	  weight_percent: 25     # action weight: the share of its weight it keeps
//	  latency_factor: 3      # p50 at least 3x the peers' median p50 ...
//	  min_latency: 20ms      # ... and at least this
//	  failure_ratio: 0.2     # or failed probes 20 points above the peers'
//	  window: 30s            # of probe results judged
//	  min_samples: 20        # results in the window before judging
//	  max_drained: 1         # backends of the service drained by prediction at once
type Predictive struct {
	Action        string        `yaml:"action"`
	LatencyFactor float64       `yaml:"latency_factor"`
	MinLatency    time.Duration `yaml:"min_latency"`
	FailureRatio  float64       `yaml:"failure_ratio"`
	Window        time.Duration `yaml:"window"`
	MinSamples    int           `yaml:"min_samples"`
	MaxDrained    int           `yaml:"max_drained"`
	WeightPercent int           `yaml:"weight_percent"`
}

// Predictive defaults.
const (
	DefaultPredictAction        = "drain"
	DefaultPredictLatencyFactor = 3
	DefaultPredictMinLatency    = 20 * time.Millisecond
	DefaultPredictFailureRatio  = 0.2
	DefaultPredictWindow        = 30 * time.Second
	DefaultPredictMinSamples    = 20
	DefaultPredictMaxDrained    = 1
	DefaultPredictWeightPercent = 25
	// MaxPredictSamples bounds min_samples (and so each backend's ring).
	MaxPredictSamples = 1000
)

func (d *decoder) predictDefaults(c *Config) {
	for i := range c.Services {
		pr := c.Services[i].Predictive
		if pr == nil {
			continue
		}
		// An explicit 0 is an error (validate), not a request for the default.
		written := func(f string) bool { return d.written(fmt.Sprintf("services[%d].predictive.%s", i, f)) }
		if pr.Action == "" {
			pr.Action = DefaultPredictAction
		}
		if !written("latency_factor") {
			pr.LatencyFactor = DefaultPredictLatencyFactor
		}
		if !written("min_latency") {
			pr.MinLatency = DefaultPredictMinLatency
		}
		if !written("failure_ratio") {
			pr.FailureRatio = DefaultPredictFailureRatio
		}
		if !written("window") {
			pr.Window = DefaultPredictWindow
		}
		if !written("min_samples") {
			pr.MinSamples = DefaultPredictMinSamples
		}
		if !written("max_drained") {
			pr.MaxDrained = DefaultPredictMaxDrained
		}
		if !written("weight_percent") {
			pr.WeightPercent = DefaultPredictWeightPercent
		}
	}
}

func (d *decoder) validatePredict(c *Config) {
	for i := range c.Services {
		s := &c.Services[i]
		pr := s.Predictive
		if pr == nil {
			continue
		}
		p := fmt.Sprintf("services[%d].predictive", i)
		oneOf(d, p+".action", pr.Action, "drain", "weight", "flag")
		if len(s.Backends) < 2 {
			d.fail(p, "compares a backend with its peers: the service needs at least 2 backends, it has %d", len(s.Backends))
		}
		if pr.LatencyFactor <= 1 || pr.LatencyFactor > 1000 {
			d.fail(p+".latency_factor", "%g: want more than 1 and at most 1000 (times the peers' median latency)", pr.LatencyFactor)
		}
		if pr.MinLatency <= 0 {
			d.fail(p+".min_latency", "must be above 0 (default %v)", DefaultPredictMinLatency)
		}
		if pr.FailureRatio <= 0 || pr.FailureRatio > 1 {
			d.fail(p+".failure_ratio", "%g: want a share above 0 and at most 1 (0.2 = 20 points above the peers')", pr.FailureRatio)
		}
		if pr.MaxDrained < 1 {
			d.fail(p+".max_drained", "%d: at least 1 (action flag drains nothing)", pr.MaxDrained)
		}
		inRange(d, p+".weight_percent", pr.WeightPercent, 1, 99)
		if pr.WeightPercent >= 1 && pr.WeightPercent <= 99 && pr.Action == "weight" {
			// The others' weights are scaled up instead (weights are whole
			// numbers, 1 by default), and must stay within the loader's
			// 65536.
			up, _ := PredictWeightScale(pr.WeightPercent)
			for j, b := range s.Backends {
				if uint64(b.Weight)*uint64(up) > 65536 {
					d.fail(p+".weight_percent", "%d%% scales the others' weights by %d: backends[%d]'s weight %d would pass 65536", pr.WeightPercent, up, j, b.Weight)
					break
				}
			}
		}
		if inRange(d, p+".min_samples", pr.MinSamples, 3, MaxPredictSamples) {
			continue
		}
		if pr.Window <= 0 || pr.Window > time.Hour {
			d.fail(p+".window", "%v is outside (0, 1h]", pr.Window)
			continue
		}
		// A window that cannot hold min_samples probes at the check's
		// interval would never judge anything: say so now.
		iv := s.Check.Interval
		for _, b := range s.Backends {
			iv = max(iv, b.Check.Interval)
		}
		if iv > 0 && time.Duration(pr.MinSamples-1)*iv > pr.Window {
			d.fail(p+".window", "%v holds fewer than min_samples (%d) probes at the check interval %v: never judged", pr.Window, pr.MinSamples, iv)
		}
	}
}

// PredictRing is how many results a backend of s keeps for predictive
// detection: the window's worth at its check interval (with room for the
// fast interval and jitter), at least twice min_samples, at most 4096.
func PredictRing(s Service, b Backend) int {
	pr := s.Predictive
	if pr == nil {
		return 0
	}
	n := 2 * pr.MinSamples
	if iv := b.Check.Interval; iv > 0 {
		n = max(n, int(pr.Window/iv)*2)
	}
	return min(n, 4096)
}

// PredictWeightScale is how action weight gives a degraded backend
// percent of its weight when weights are whole numbers: the others'
// weights are multiplied by up and the degraded one's by down
// (25% -> 4 and 1; 30% -> 10 and 3).
func PredictWeightScale(percent int) (up, down uint32) {
	g := gcd(100, percent)
	return uint32(100 / g), uint32(percent / g)
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
