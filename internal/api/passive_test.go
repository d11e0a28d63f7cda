package api

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/control"
)

// TestDetectColumn: keepbitctl services' DETECT column and REASON with
// predictive and passive detection, each on or off.
func TestDetectColumn(t *testing.T) {
	ok := &control.Prediction{Reason: "p50 10ms", Samples: 20, P50: 10 * time.Millisecond}
	degraded := &control.Prediction{Degraded: true, Acted: "drained", Reason: "p50 60ms is 6.0x its peers' 10ms"}
	for _, c := range []struct {
		name    string
		predict *control.Prediction
		passive *control.Passivity
		column  string
		reason  string
		json    string // in the backend's JSON; "" no passive key
	}{
		{"neither", nil, nil, "-", "check up", ""},
		{"passive only, quiet", nil, &control.Passivity{}, "ok", "check up",
			`"passive":{"ejected":false,"syn_retransmits_in_window":0,"syn_retransmits_total":0,"ejections":0}`},
		{"passive counting", ok, &control.Passivity{InWindow: 2, Total: 7}, "ok (2 syn-retrans)", "check up", `"syn_retransmits_total":7`},
		{"passive ejected", nil, &control.Passivity{Ejected: true, Acted: "ejected", Reason: "6 retransmitted SYNs within 2s (threshold 5)", InWindow: 6, Total: 6, Ejections: 1},
			"syn-retrans", "passive: ejected: 6 retransmitted SYNs within 2s (threshold 5) (check up)", `"ejected":true,"acted":"ejected"`},
		{"predictive degraded, passive quiet", degraded, &control.Passivity{}, "degraded",
			"predictive: drained: p50 60ms is 6.0x its peers' 10ms (check up)", `"ejected":false`},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := Backend{Reason: "check up", Predict: prediction(c.predict), Passive: passivity(c.passive)}
			col, reason := DetectColumn(b)
			if col != c.column || reason != c.reason {
				t.Fatalf("got %q %q, want %q %q", col, reason, c.column, c.reason)
			}
			js, err := json.Marshal(b)
			if err != nil {
				t.Fatal(err)
			}
			if has := strings.Contains(string(js), `"passive"`); has != (c.json != "") || !strings.Contains(string(js), c.json) {
				t.Fatalf("json %s, want %s", js, c.json)
			}
		})
	}
}
