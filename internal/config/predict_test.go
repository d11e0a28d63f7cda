package config

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

const predictBase = `interfaces: [{name: eth0}]
defaults:
  check: {type: tcp, interval: 1s}
services:
  - name: web
    vip: 10.0.0.100
    port: 80
    backends: [{address: 10.0.0.1}, {address: 10.0.0.2}]
`

// TestPredictive: the section decoded with its defaults; absent, off.
func TestPredictive(t *testing.T) {
	for _, c := range []struct {
		name string
		yaml string
		want *Predictive
	}{
		{"absent: off", "", nil},
		{"empty: on with the defaults", "    predictive: {}\n", &Predictive{Action: "drain", LatencyFactor: 3, MinLatency: 20 * time.Millisecond,
			FailureRatio: 0.2, Window: 30 * time.Second, MinSamples: 20, MaxDrained: 1, WeightPercent: 25}},
		{"every field", "    predictive: {action: flag, latency_factor: 2.5, min_latency: 5ms, failure_ratio: 0.5, window: 10s, min_samples: 8, max_drained: 2, weight_percent: 30}\n",
			&Predictive{Action: "flag", LatencyFactor: 2.5, MinLatency: 5 * time.Millisecond, FailureRatio: 0.5, Window: 10 * time.Second, MinSamples: 8, MaxDrained: 2, WeightPercent: 30}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := Parse("k.yaml", []byte(predictBase+c.yaml))
			if err != nil {
				t.Fatal(err)
			}
			if got := cfg.Services[0].Predictive; !reflect.DeepEqual(got, c.want) {
				t.Fatalf("got %+v\nwant %+v", got, c.want)
			}
		})
	}
}

// TestBadPredictive: every error names file:line and the field.
func TestBadPredictive(t *testing.T) {
	for _, c := range []struct {
		name, yaml, want string
	}{
		{"unknown action", "    predictive: {action: eject}\n", `k.yaml:9: services[0].predictive.action: "eject" is not one of drain, weight, flag`},
		{"weight percent 100", "    predictive: {action: weight, weight_percent: 100}\n", "k.yaml:9: services[0].predictive.weight_percent: 100 is outside 1-99"},
		{"weight percent scaling past 65536", "    predictive: {action: weight, weight_percent: 33}\n  - name: heavy\n    vip: 10.0.0.101\n    port: 80\n    backends: [{address: 10.0.0.1}, {address: 10.0.0.2, weight: 700}]\n    predictive: {action: weight, weight_percent: 33}\n",
			"k.yaml:14: services[1].predictive.weight_percent: 33% scales the others' weights by 100: backends[1]'s weight 700 would pass 65536"},
		{"factor 1", "    predictive: {latency_factor: 1}\n", "k.yaml:9: services[0].predictive.latency_factor: 1: want more than 1"},
		{"factor not a number", "    predictive: {latency_factor: x3}\n", `k.yaml:9: services[0].predictive.latency_factor: "x3" is not a number`},
		{"min latency 0", "    predictive: {min_latency: 0s}\n", "k.yaml:9: services[0].predictive.min_latency: must be above 0"},
		{"failure ratio over 1", "    predictive: {failure_ratio: 20}\n", "k.yaml:9: services[0].predictive.failure_ratio: 20: want a share above 0 and at most 1"},
		{"max drained 0", "    predictive: {max_drained: 0}\n", "k.yaml:9: services[0].predictive.max_drained: 0: at least 1"},
		{"too few min samples", "    predictive: {min_samples: 2}\n", "k.yaml:9: services[0].predictive.min_samples: 2 is outside 3-1000"},
		{"window 0", "    predictive: {window: 0s}\n", "k.yaml:9: services[0].predictive.window: 0s is outside (0, 1h]"},
		{"window too short for the samples", "    predictive: {window: 10s, min_samples: 20}\n",
			"k.yaml:9: services[0].predictive.window: 10s holds fewer than min_samples (20) probes at the check interval 1s: never judged"},
		{"a backend's slower check counts", "    predictive: {window: 30s, min_samples: 20}\n    check: {interval: 500ms}\n" +
			"  - name: api\n    vip: 10.0.0.101\n    port: 80\n    backends: [{address: 10.0.0.1, check: {interval: 2s}}, {address: 10.0.0.2}]\n    predictive: {window: 30s}\n",
			"k.yaml:15: services[1].predictive.window: 30s holds fewer than min_samples (20) probes at the check interval 2s"},
		{"one backend has no peers", "  - name: one\n    vip: 10.0.0.102\n    port: 80\n    backends: [{address: 10.0.0.1}]\n    predictive:\n      action: flag\n",
			"k.yaml:13: services[1].predictive: compares a backend with its peers: the service needs at least 2 backends, it has 1"},
		{"unknown field", "    predictive: {factor: 3}\n", "k.yaml:9: services[0].predictive.factor: unknown field (known: action, failure_ratio, latency_factor, max_drained, min_latency, min_samples, weight_percent, window)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("k.yaml", []byte(predictBase+c.yaml))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v\nwant %q", err, c.want)
			}
		})
	}
}

// TestPredictRing: a window's worth of probes, twice min_samples at
// least, 4096 at most; none when off.
func TestPredictRing(t *testing.T) {
	pr := &Predictive{Window: 30 * time.Second, MinSamples: 20}
	for _, c := range []struct {
		pr   *Predictive
		iv   time.Duration
		want int
	}{
		{nil, time.Second, 0},
		{pr, time.Second, 60},
		{pr, 10 * time.Second, 40},
		{pr, time.Millisecond, 4096},
	} {
		if got := PredictRing(Service{Predictive: c.pr}, Backend{Check: Check{Interval: c.iv}}); got != c.want {
			t.Errorf("interval %v: ring %d, want %d", c.iv, got, c.want)
		}
	}
}

// TestPredictWeightScale: the others' multiplier and the degraded one's.
func TestPredictWeightScale(t *testing.T) {
	for _, c := range []struct {
		percent  int
		up, down uint32
	}{{25, 4, 1}, {50, 2, 1}, {30, 10, 3}, {1, 100, 1}, {99, 100, 99}} {
		if up, down := PredictWeightScale(c.percent); up != c.up || down != c.down {
			t.Errorf("%d%%: %d, %d; want %d, %d", c.percent, up, down, c.up, c.down)
		}
	}
}
