package api

import (
	"strconv"
	"time"

	"github.com/keepbit/keepbit/internal/control"
)

// Passivity is a backend's passive detection in GET /v1/services.
type Passivity struct {
	// Ejected: flagged by its clients' retransmitted SYNs (and, with
	// action eject, out if its service could spare it: see Acted).
	Ejected bool `json:"ejected"`
	// Acted: ejected, flagged, or why a flagged backend was not ejected.
	Acted     string    `json:"acted,omitempty"`
	Reason    string    `json:"reason,omitempty"`
	Since     time.Time `json:"since,omitzero"`
	InWindow  uint64    `json:"syn_retransmits_in_window"`
	Total     uint64    `json:"syn_retransmits_total"`
	Ejections uint64    `json:"ejections"`
}

func passivity(p *control.Passivity) *Passivity {
	if p == nil {
		return nil
	}
	return &Passivity{Ejected: p.Ejected, Acted: p.Acted, Reason: p.Reason, Since: p.Since, InWindow: p.InWindow, Total: p.Total, Ejections: p.Ejections}
}

// DetectColumn is what `keepbitctl services` prints for b in its DETECT
// column: predictive and passive detection ("-" when neither is on,
// "ok", "degraded", "syn-retrans N"), and its REASON, which names what
// a flag did.
func DetectColumn(b Backend) (column, reason string) {
	column, reason = PredictColumn(b)
	p := b.Passive
	if p == nil {
		return column, reason
	}
	if column == "-" {
		column = "ok"
	}
	if p.Ejected {
		column = "syn-retrans"
		reason = "passive: " + p.Acted + ": " + p.Reason + " (" + reason + ")"
	} else if p.InWindow > 0 {
		column += " (" + strconv.FormatUint(p.InWindow, 10) + " syn-retrans)"
	}
	return column, reason
}
