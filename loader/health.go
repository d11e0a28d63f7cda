package loader

import (
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
)

// Route health injection announces a VIP only while this node really
// forwards: the program is attached to the interface through our link,
// and it runs on the packets that arrive.
//
// The heartbeat is the sum of the per-reason packet counters: every run of
// the program counts exactly one reason on its CPU (bpf/keepbit_xdp.c), so
// those per-CPU counters already are a per-CPU run counter, and the
// heartbeat costs the packet path nothing.

// Heartbeat returns how many times the program has run, summed over CPUs.
// It survives an adoption (the counters are pinned).
func (d *Dataplane) Heartbeat() (uint64, error) {
	var per []keepbitCounter
	var n uint64
	for r := Reason(0); r < keepbitReasonREASON_MAX; r++ {
		if err := d.objs.ReasonStats.Lookup(uint32(r), &per); err != nil {
			return 0, fmt.Errorf("heartbeat: reason counter %s: %w", ReasonName(r), err)
		}
		n += sum(per).Packets
	}
	return n, nil
}

// aliveSample is what one CheckAlive saw.
type aliveSample struct {
	heartbeat uint64
	rx        uint64 // the interface's received packets
}

// aliveState is what CheckAlive remembers between calls.
//
// One interval in which packets arrived and the program did not run is no
// proof: the two counters are read one after the other, and a packet the
// program runs on between the two reads lands in one counter's sample and
// in the other's next one (CI saw a route withdrawn for a single such
// packet). Whichever order the reads take, that packet makes at most one
// interval look stalled and the one next to it look healthy. So the
// program counts as stopped once two intervals with packets passed without
// a single run. An interval without packets is no evidence either way: it
// reports alive (a withdrawn route draws no traffic, and must not stay
// withdrawn for want of it once the program is back; route damping holds a
// flapping one) but keeps the count, so the next packets the program
// misses report it stopped at once.
type aliveState struct {
	last    *aliveSample
	stalled int    // intervals with packets and no run since the program last ran
	missed  uint64 // packets received over those intervals

	at      time.Time // when CheckAlive last sampled
	verdict error     // and what it answered
}

// aliveMinGap is the shortest interval CheckAlive samples: "two
// intervals" then span at least twice this.
const aliveMinGap = 50 * time.Millisecond

// judge takes the next sample and returns the verdict.
func (s *aliveState) judge(cur aliveSample) error {
	prev := s.last
	s.last = &cur
	switch {
	case prev == nil:
		return nil
	case cur.heartbeat != prev.heartbeat:
		s.stalled, s.missed = 0, 0
		return nil
	case cur.rx <= prev.rx:
		return nil
	}
	s.stalled++
	s.missed += cur.rx - prev.rx
	if s.stalled < 2 {
		return nil
	}
	return fmt.Errorf("heartbeat stopped: the interface received %d packets over the last %d checks, the program ran on none", s.missed, s.stalled)
}

// CheckAlive reports nil while the dataplane forwards: our link is attached
// to the interface with our program, and the program ran on the packets
// the interface received (aliveState). Each call is compared with the
// previous ones, whoever makes it (route health and VRRP tracking both
// poll it), and a call within aliveMinGap of the last sample gets its
// verdict; the first call has nothing to compare and checks the
// attachment only.
func (d *Dataplane) CheckAlive() error {
	if d.xdp == nil {
		return errors.New("dataplane: not attached")
	}
	info, err := d.xdp.Info()
	if err != nil {
		return fmt.Errorf("dataplane: read XDP link: %w", err)
	}
	xi := info.XDP()
	if xi == nil || xi.Ifindex != uint32(d.ifindex) {
		return fmt.Errorf("dataplane: XDP link is detached from %s", d.opts.Interface)
	}
	if info.Program != d.progID {
		return fmt.Errorf("dataplane: XDP link on %s runs program %d, not ours (%d)", d.opts.Interface, info.Program, d.progID)
	}
	d.aliveMu.Lock()
	defer d.aliveMu.Unlock()
	// Callers come close together (route health and every VRRP instance
	// that tracks the dataplane wake on the same change): a sample taken
	// microseconds after another covers no packets and would call a
	// stopped program alive. A recent verdict answers for them all.
	now := time.Now()
	if d.alive.last != nil && now.Sub(d.alive.at) < aliveMinGap {
		return d.alive.verdict
	}
	d.alive.at = now
	d.alive.verdict = d.sampleAlive()
	return d.alive.verdict
}

// sampleAlive reads the heartbeat, then the interface (what runs on it,
// and its received packets), and judges them. Callers hold aliveMu.
func (d *Dataplane) sampleAlive() error {
	hb, err := d.Heartbeat()
	if err != nil {
		return fmt.Errorf("dataplane: %w", err)
	}
	// The link says where it is attached; the interface says what runs.
	nl, err := d.nl.LinkByIndex(d.ifindex)
	if err != nil {
		return fmt.Errorf("dataplane: interface %s: %w", d.opts.Interface, err)
	}
	x := nl.Attrs().Xdp
	if x == nil || !x.Attached {
		return fmt.Errorf("dataplane: no XDP program attached to %s", d.opts.Interface)
	}
	if ebpf.ProgramID(x.ProgId) != d.progID {
		return fmt.Errorf("dataplane: %s runs XDP program %d, not ours (%d)", d.opts.Interface, x.ProgId, d.progID)
	}
	if nl.Attrs().Statistics == nil {
		return fmt.Errorf("dataplane: interface %s reports no counters", d.opts.Interface)
	}
	cur := aliveSample{heartbeat: hb, rx: nl.Attrs().Statistics.RxPackets}
	if err := d.alive.judge(cur); err != nil {
		return fmt.Errorf("dataplane on %s: %w", d.opts.Interface, err)
	}
	return nil
}
