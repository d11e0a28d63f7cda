// Package recorder is the flight recorder: every backend state change,
// failover and reload as an event with its phase timestamps, kept in a
// bounded ring that the API serves and followers can stream.
package recorder

import (
	"context"
	"sync"
	"time"
)

// Event is one thing that happened, with the timing words of
// ARCHITECTURE.md ("Timing words").
type Event struct {
	// Seq is the order of recording (followers resume after one); Time
	// is when the event happened, which for a state change recorded after
	// it was carried out (a VRRP transition) is its Decide, so events in
	// Seq order need not be in Time order.
	Seq     uint64    `json:"seq"`
	Time    time.Time `json:"time"`
	Kind    string    `json:"kind"` // backend-down, backend-up, backend-draining, held-down, panic, reload, ...
	Service string    `json:"service,omitempty"`
	Backend string    `json:"backend,omitempty"`
	Reason  string    `json:"reason,omitempty"`
	// Phase timestamps; zero when not applicable.
	Detect time.Time `json:"detect,omitzero"`
	Decide time.Time `json:"decide,omitzero"`
	Apply  time.Time `json:"apply,omitzero"`
	// Announce: gratuitous ARP / NA sent (VIP moves only).
	Announce time.Time `json:"announce,omitzero"`
	// Durations between phases, for people and metrics.
	DetectToDecide   time.Duration `json:"detect_to_decide,omitempty"`
	DecideToApply    time.Duration `json:"decide_to_apply,omitempty"`
	DetectToApply    time.Duration `json:"detect_to_apply,omitempty"`
	DetectToAnnounce time.Duration `json:"detect_to_announce,omitempty"`
}

// Recorder keeps the last Size events.
type Recorder struct {
	mu      sync.Mutex
	ring    []Event
	next    uint64 // seq of the next event
	waiters chan struct{}
}

// New returns a recorder that keeps size events.
func New(size int) *Recorder {
	return &Recorder{ring: make([]Event, 0, size), next: 1, waiters: make(chan struct{})}
}

// Add stamps e with a sequence number (and durations when missing, and
// Time, the moment of recording, when the caller did not say when it
// happened) and keeps it.
func (r *Recorder) Add(e Event) Event {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	if !e.Detect.IsZero() && !e.Decide.IsZero() {
		e.DetectToDecide = e.Decide.Sub(e.Detect)
	}
	if !e.Decide.IsZero() && !e.Apply.IsZero() {
		e.DecideToApply = e.Apply.Sub(e.Decide)
	}
	if !e.Detect.IsZero() && !e.Apply.IsZero() {
		e.DetectToApply = e.Apply.Sub(e.Detect)
	}
	if !e.Detect.IsZero() && !e.Announce.IsZero() {
		e.DetectToAnnounce = e.Announce.Sub(e.Detect)
	}
	r.mu.Lock()
	e.Seq = r.next
	r.next++
	if len(r.ring) < cap(r.ring) {
		r.ring = append(r.ring, e)
	} else {
		copy(r.ring, r.ring[1:])
		r.ring[len(r.ring)-1] = e
	}
	close(r.waiters)
	r.waiters = make(chan struct{})
	r.mu.Unlock()
	return e
}

// Since returns the kept events with Seq > after, oldest first.
func (r *Recorder) Since(after uint64) []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Event
	for _, e := range r.ring {
		if e.Seq > after {
			out = append(out, e)
		}
	}
	return out
}

// Wait blocks until an event newer than after exists or ctx ends, then
// returns the newer events.
func (r *Recorder) Wait(ctx context.Context, after uint64) ([]Event, error) {
	for {
		r.mu.Lock()
		ready := r.next-1 > after
		w := r.waiters
		r.mu.Unlock()
		if ready {
			return r.Since(after), nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-w:
		}
	}
}
