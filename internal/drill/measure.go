package drill

import (
	"fmt"
	"time"

	"github.com/keepbit/keepbit/internal/recorder"
)

// Sample is one read of the dataplane counters a drill watches: the
// target's packets (the backend's; for a node drill, every service's) and
// its service's (for a node drill, the same sum).
type Sample struct {
	At      time.Time
	Target  uint64
	Service uint64
}

// Timeline is what a drill saw, the input of Measure: its moments, the
// counter samples and the flight recorder's events from its start on.
type Timeline struct {
	Kind    Kind
	Service string // backend drills
	Backend string // backend drills
	Start   time.Time
	// Fault: when the failure was injected (the verdict handed to the
	// controller, the VRRP resignation or BGP drain asked for).
	Fault time.Time
	// Restore: when the fault ended (checks given back, priority and
	// routes restored).
	Restore time.Time
	End     time.Time
	// Settle: how long the fault may take to move the traffic away. A
	// backend's state write takes effect at the next packet (0); a node's
	// VIPs move when the peer announces them, after its skew time.
	Settle  time.Duration
	Samples []Sample
	Events  []recorder.Event
}

// Phase is one transition of a drill as the flight recorder has it, with
// the timing words of ARCHITECTURE.md (detect, decide, apply, announce).
type Phase struct {
	Event            string        `json:"event"`
	Reason           string        `json:"reason,omitempty"`
	At               time.Time     `json:"at"`
	DetectToDecide   time.Duration `json:"detect_to_decide"`
	DecideToApply    time.Duration `json:"decide_to_apply"`
	DetectToApply    time.Duration `json:"detect_to_apply"`
	DetectToAnnounce time.Duration `json:"detect_to_announce,omitempty"`
	// SinceFault: from the injected fault (or its end, for the return) to
	// this event's apply (or announce, or its time when it has neither).
	SinceFault time.Duration `json:"since_fault"`
}

// Rates is packets per second before the fault, during it and after the
// return.
type Rates struct {
	Before float64 `json:"before"`
	During float64 `json:"during"`
	After  float64 `json:"after"`
}

// Traffic is what the counters showed.
type Traffic struct {
	Samples  int           `json:"samples"`
	Interval time.Duration `json:"sample_interval"` // mean time between samples
	// StoppedAt: the sample that saw the target's last packet before the
	// return (the packet arrived in the interval before it), or the first
	// sample after the fault when that packet came before it: an upper
	// bound within one sample interval. Zero when traffic never stopped
	// or there was none.
	StoppedAt    time.Time     `json:"stopped_at,omitzero"`
	StoppedAfter time.Duration `json:"stopped_after"` // after the fault
	// Leaked: packets the target counted while it should have had none
	// (from the second sample after the fault settled to the restore).
	Leaked uint64 `json:"leaked"`
	// BackAt: the first sample after the restore that saw a packet.
	BackAt    time.Time     `json:"back_at,omitzero"`
	BackAfter time.Duration `json:"back_after"` // after the restore
	// Gap: how long the target had no traffic (BackAt - StoppedAt).
	Gap     time.Duration `json:"gap"`
	Target  Rates         `json:"target_pps"`
	Service Rates         `json:"service_pps"`
}

// Measure reads a drill's timeline: the transitions out and back from the
// recorder, the target's traffic from the samples, and MTTR, from the end
// of the fault until the target carried traffic again (until it was
// restored in the dataplane, when there was no traffic to see). Problems
// lists what makes the drill a failure.
func Measure(tl Timeline) (out Phase, back Phase, tr Traffic, mttr time.Duration, problems []string) {
	outEv, backEv, outOK, backOK := findPhases(tl)
	if outOK {
		out = phaseOf(outEv, tl.Fault)
	} else {
		problems = append(problems, fmt.Sprintf("no %s event: the target was never taken out", outKinds(tl.Kind)))
	}
	if backOK {
		back = phaseOf(backEv, tl.Restore)
	} else if !tl.Restore.IsZero() {
		problems = append(problems, fmt.Sprintf("no %s event after the restore: the target did not come back", backKinds(tl.Kind)))
	}
	tr = traffic(tl)
	hadTraffic := tr.Target.Before > 0
	switch {
	case !hadTraffic:
		// Nothing to see: not a failure, but said in the report.
	case tr.Leaked > 0:
		problems = append(problems, fmt.Sprintf("traffic still reached the target during the drill (%d packets)", tr.Leaked))
	case tr.StoppedAt.IsZero():
		problems = append(problems, "traffic never stopped reaching the target")
	}
	switch {
	case !tr.BackAt.IsZero():
		mttr = tr.BackAt.Sub(tl.Restore)
	case backOK:
		mttr = back.SinceFault
		if hadTraffic && outOK {
			problems = append(problems, "traffic did not come back to the target after it was restored")
		}
	}
	return out, back, tr, mttr, problems
}

func outKinds(k Kind) string {
	if k == Node {
		return "vrrp-fault, vrrp-backup or bgp-withdraw"
	}
	return "backend-down"
}

func backKinds(k Kind) string {
	if k == Node {
		return "vrrp-master or bgp-announce"
	}
	return "backend-up"
}

// findPhases picks the first "out" event after the fault and the first
// "back" event after the restore.
func findPhases(tl Timeline) (out, back recorder.Event, outOK, backOK bool) {
	for _, e := range tl.Events {
		switch tl.Kind {
		case Backend:
			if e.Service != tl.Service || e.Backend != tl.Backend {
				continue
			}
			if !outOK && e.Kind == "backend-down" && !e.Time.Before(tl.Fault) {
				out, outOK = e, true
			}
			if outOK && !backOK && e.Kind == "backend-up" && !tl.Restore.IsZero() && !e.Time.Before(tl.Restore) {
				back, backOK = e, true
			}
		case Node:
			if !outOK && (e.Kind == "vrrp-fault" || e.Kind == "vrrp-backup" || e.Kind == "bgp-withdraw") && !e.Time.Before(tl.Fault) {
				out, outOK = e, true
			}
			if outOK && !backOK && (e.Kind == "vrrp-master" || e.Kind == "bgp-announce") && !tl.Restore.IsZero() && !e.Time.Before(tl.Restore) {
				back, backOK = e, true
			}
		}
	}
	return out, back, outOK, backOK
}

func phaseOf(e recorder.Event, from time.Time) Phase {
	p := Phase{Event: e.Kind, Reason: e.Reason, At: e.Time, DetectToDecide: e.DetectToDecide, DecideToApply: e.DecideToApply,
		DetectToApply: e.DetectToApply, DetectToAnnounce: e.DetectToAnnounce}
	at := e.Time
	switch {
	case !e.Announce.IsZero():
		at = e.Announce
	case !e.Apply.IsZero():
		at = e.Apply
	case !e.Decide.IsZero():
		at = e.Decide
	}
	if !from.IsZero() {
		p.SinceFault = at.Sub(from)
	}
	return p
}

// traffic finds when the target's counter stopped moving and when it
// moved again, and the rates around them.
func traffic(tl Timeline) Traffic {
	s := tl.Samples
	tr := Traffic{Samples: len(s)}
	if len(s) < 2 {
		return tr
	}
	tr.Interval = s[len(s)-1].At.Sub(s[0].At) / time.Duration(len(s)-1)
	restore := tl.Restore
	if restore.IsZero() {
		restore = tl.End
	}
	// Last increase at or before the restore; the first increase after it.
	last := -1
	for i := 1; i < len(s) && !s[i].At.After(restore); i++ {
		if s[i].Target > s[i-1].Target {
			last = i
		}
	}
	// Leaks: counted from the second sample after the fault has settled
	// (the first may hold packets forwarded before) up to the restore.
	leakFrom := -1
	for i := range s {
		if s[i].At.After(tl.Fault.Add(tl.Settle)) {
			leakFrom = i + 1
			break
		}
	}
	for i := max(leakFrom, 1); leakFrom > 0 && i < len(s) && !s[i].At.After(restore); i++ {
		tr.Leaked += s[i].Target - s[i-1].Target
	}
	quietFrom := tl.Fault // when the target stopped getting traffic
	if last > 0 && tr.Leaked == 0 {
		// The last packet arrived before s[last]; when that sample was
		// taken before the fault, the first sample after it is the first
		// to show the target quiet. Either way this is an upper bound,
		// within one sample interval of the truth.
		tr.StoppedAt = s[last].At
		if tr.StoppedAt.Before(tl.Fault) {
			for i := range s {
				if s[i].At.After(tl.Fault) {
					tr.StoppedAt = s[i].At
					break
				}
			}
		}
		tr.StoppedAfter = tr.StoppedAt.Sub(tl.Fault)
		quietFrom = tr.StoppedAt
	}
	backFrom := -1
	if !tl.Restore.IsZero() {
		for i := 1; i < len(s); i++ {
			if s[i].At.After(tl.Restore) && s[i].Target > s[i-1].Target {
				backFrom = i
				tr.BackAt = s[i].At
				tr.BackAfter = tr.BackAt.Sub(tl.Restore)
				break
			}
		}
	}
	if !tr.BackAt.IsZero() && !tr.StoppedAt.IsZero() {
		tr.Gap = tr.BackAt.Sub(tr.StoppedAt)
	}
	afterFrom := tl.Restore
	if backFrom > 0 {
		afterFrom = s[backFrom-1].At
	}
	rate := func(from, to time.Time, pick func(Sample) uint64) float64 {
		i, j := -1, -1
		for k := range s {
			if s[k].At.Before(from) {
				continue
			}
			if s[k].At.After(to) {
				break
			}
			if i < 0 {
				i = k
			}
			j = k
		}
		if i < 0 || j <= i {
			return 0
		}
		dt := s[j].At.Sub(s[i].At).Seconds()
		return float64(pick(s[j])-pick(s[i])) / dt
	}
	target := func(x Sample) uint64 { return x.Target }
	service := func(x Sample) uint64 { return x.Service }
	tr.Target = Rates{Before: rate(s[0].At, tl.Fault, target), During: rate(quietFrom, restore, target)}
	tr.Service = Rates{Before: rate(s[0].At, tl.Fault, service), During: rate(quietFrom, restore, service)}
	if !tl.Restore.IsZero() {
		tr.Target.After = rate(afterFrom, tl.End, target)
		tr.Service.After = rate(afterFrom, tl.End, service)
	}
	return tr
}
