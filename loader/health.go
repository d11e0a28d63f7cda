package loader

import (
	"errors"
	"fmt"

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

// aliveVerdict judges two consecutive samples: the program is alive when
// it ran since the previous sample, or when the interface received nothing
// meanwhile (no traffic is no evidence either way).
func aliveVerdict(prev *aliveSample, cur aliveSample) error {
	if prev == nil || cur.heartbeat != prev.heartbeat || cur.rx == prev.rx {
		return nil
	}
	return fmt.Errorf("heartbeat stopped: the interface received %d packets since the last check, the program ran on none", cur.rx-prev.rx)
}

// CheckAlive reports nil while the dataplane forwards: our link is attached
// to the interface with our program, and the heartbeat advanced since the
// previous call or the interface received no packet since. Each call is
// compared with the previous one, so callers poll it from one place (the
// first call has nothing to compare and checks the attachment only).
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
	// Heartbeat first, then the rx counter: a packet that arrives between
	// the two reads is in this rx figure and in the next heartbeat, never
	// in the rx figure of the next sample only, which would look like a
	// packet the program missed.
	hb, err := d.Heartbeat()
	if err != nil {
		return fmt.Errorf("dataplane: %w", err)
	}
	nl, err = d.nl.LinkByIndex(d.ifindex)
	if err != nil {
		return fmt.Errorf("dataplane: interface %s: %w", d.opts.Interface, err)
	}
	if nl.Attrs().Statistics == nil {
		return fmt.Errorf("dataplane: interface %s reports no counters", d.opts.Interface)
	}
	cur := aliveSample{heartbeat: hb, rx: nl.Attrs().Statistics.RxPackets}
	d.aliveMu.Lock()
	prev := d.lastAlive
	d.lastAlive = &cur
	d.aliveMu.Unlock()
	if err := aliveVerdict(prev, cur); err != nil {
		return fmt.Errorf("dataplane on %s: %w", d.opts.Interface, err)
	}
	return nil
}
