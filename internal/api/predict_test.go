package api

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/control"
)

// TestPredictColumn: what keepbitctl services prints for a backend, off,
// healthy and degraded, and the wire form of a prediction.
func TestPredictColumn(t *testing.T) {
	for _, c := range []struct {
		name   string
		p      *control.Prediction
		column string
		reason string
		json   string // in the backend's JSON; "" none
	}{
		{"off", nil, "-", "check up", ""},
		{"ok", &control.Prediction{Reason: "p50 10ms", Samples: 20, P50: 10 * time.Millisecond}, "ok", "check up", `"predict":{"degraded":false,"reason":"p50 10ms","samples":20,"failures":0,"p50_seconds":0.01,"p90_seconds":0,"flagged":0}`},
		{"degraded", &control.Prediction{Degraded: true, Acted: "drained", Reason: "p50 60ms is 6.0x its peers' 10ms", Samples: 20, Flagged: 1},
			"degraded", "predictive: drained: p50 60ms is 6.0x its peers' 10ms (check up)", `"degraded":true,"acted":"drained"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := Backend{Reason: "check up", Predict: prediction(c.p)}
			col, reason := PredictColumn(b)
			if col != c.column || reason != c.reason {
				t.Fatalf("got %q %q, want %q %q", col, reason, c.column, c.reason)
			}
			js, err := json.Marshal(b)
			if err != nil {
				t.Fatal(err)
			}
			if has := strings.Contains(string(js), `"predict"`); has != (c.json != "") || !strings.Contains(string(js), c.json) {
				t.Fatalf("json %s, want %s", js, c.json)
			}
		})
	}
}
