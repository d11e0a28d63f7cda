package api

import (
	"time"

	"github.com/keepbit/keepbit/internal/control"
)

// Prediction is a backend's predictive detection in GET /v1/services.
type Prediction struct {
	Degraded bool `json:"degraded"`
	// Acted: drained, flagged, or why a degraded backend was not drained
	// ("not drained: the last usable backend"); empty while not degraded.
	Acted    string    `json:"acted,omitempty"`
	Reason   string    `json:"reason"` // the numbers of the latest judgement
	Since    time.Time `json:"since,omitzero"`
	Samples  int       `json:"samples"`
	Failures int       `json:"failures"`
	P50      float64   `json:"p50_seconds"`
	P90      float64   `json:"p90_seconds"`
	Flagged  uint64    `json:"flagged"` // times flagged
}

func prediction(p *control.Prediction) *Prediction {
	if p == nil {
		return nil
	}
	return &Prediction{Degraded: p.Degraded, Acted: p.Acted, Reason: p.Reason, Since: p.Since, Samples: p.Samples,
		Failures: p.Failures, P50: p.P50.Seconds(), P90: p.P90.Seconds(), Flagged: p.Flagged}
}

// PredictColumn is what `keepbitctl services` prints for b: its PREDICT
// column ("-" off, "ok", "degraded") and its REASON, which for a degraded
// backend says what prediction did and the numbers.
func PredictColumn(b Backend) (column, reason string) {
	switch {
	case b.Predict == nil:
		return "-", b.Reason
	case !b.Predict.Degraded:
		return "ok", b.Reason
	}
	return "degraded", "predictive: " + b.Predict.Acted + ": " + b.Predict.Reason + " (" + b.Reason + ")"
}
