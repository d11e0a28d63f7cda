package loader

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
)

// Flow sharing (bpf/share.h): the program reports flows worth sharing into
// the flow_reports ring buffer, keepbitd sends them to the other nodes, and
// what they report goes into shared_flows, which a local miss consults
// before Maglev. The loader translates between the program's IDs and the
// addresses every node agrees on.

// FlowReportReason says why a flow is worth sharing.
type FlowReportReason uint8

const (
	// Moved: the flow's backend is not the one the live Maglev table
	// picks for it (the backend set changed under the established flow),
	// so another node would pick differently.
	Moved FlowReportReason = FlowReportReason(keepbitFlowReportReasonFLOW_REPORT_MOVED)
	// LongLived: the flow is older than FlowSharing.LongLived.
	LongLived FlowReportReason = FlowReportReason(keepbitFlowReportReasonFLOW_REPORT_LONG_LIVED)
)

func (r FlowReportReason) String() string {
	switch r {
	case Moved:
		return "moved"
	case LongLived:
		return "long-lived"
	}
	return fmt.Sprintf("reason-%d", uint8(r))
}

// FlowReport is a flow this node forwards that other nodes should know.
// Service is the flow's destination (VIP, port, protocol): for a port-0
// service Port is the flow's destination port, not 0, so the flow can be
// rebuilt from it.
type FlowReport struct {
	Service ServiceKey
	Client  netip.AddrPort
	Backend netip.Addr
	Reason  FlowReportReason
}

// SharedFlow is a flow another node forwards: Service is its destination
// as in FlowReport.
type SharedFlow struct {
	Service ServiceKey
	Client  netip.AddrPort
	Backend netip.Addr
}

// FlowSharing configures flow sharing in the program.
type FlowSharing struct {
	// Enabled turns on the reports and the shared_flows lookup.
	Enabled bool
	// LongLived is the age from which a flow is reported as long-lived;
	// 0 means DefaultLongLived.
	LongLived time.Duration
	// Refresh is the least time between two reports of one flow; 0 means
	// DefaultRefresh.
	Refresh time.Duration
}

const (
	DefaultLongLived = 30 * time.Second
	DefaultRefresh   = 30 * time.Second
)

// FlowShareCounters are the program's flow sharing counters, summed over CPUs.
type FlowShareCounters struct {
	Reported      uint64 // reports written to the ring buffer
	ReportDropped uint64 // ring buffer full: not reported (the packet was forwarded)
	SharedHit     uint64 // local misses answered by a shared flow
	SharedStale   uint64 // shared flows whose backend was unusable or reused: Maglev decided
}

func (f FlowSharing) settings() keepbitShareSettingsValue {
	s := keepbitShareSettingsValue{LongLivedNs: uint64(DefaultLongLived), RefreshNs: uint64(DefaultRefresh)}
	if f.Enabled {
		s.Flags |= uint32(keepbitShareFlagsSHARE_F_ENABLED)
	}
	if f.LongLived > 0 {
		s.LongLivedNs = uint64(f.LongLived)
	}
	if f.Refresh > 0 {
		s.RefreshNs = uint64(f.Refresh)
	}
	return s
}

// SetFlowSharing changes the flow sharing settings; the program applies
// them from its next packet.
func (d *Dataplane) SetFlowSharing(f FlowSharing) error {
	if f.LongLived < 0 {
		return fmt.Errorf("flow sharing: long_lived: %s is negative", f.LongLived)
	}
	if f.Refresh < 0 {
		return fmt.Errorf("flow sharing: refresh: %s is negative", f.Refresh)
	}
	s := f.settings()
	if err := d.kernelWrite("share_settings", func() error { return d.objs.ShareSettings.Put(uint32(0), &s) }); err != nil {
		return fmt.Errorf("write flow sharing settings: %w", err)
	}
	d.mu.Lock()
	d.opts.FlowSharing = f
	d.mu.Unlock()
	return nil
}

// FlowShareStats reads the flow sharing counters.
func (d *Dataplane) FlowShareStats() (FlowShareCounters, error) {
	var out FlowShareCounters
	var per []uint64
	dst := []*uint64{&out.Reported, &out.ReportDropped, &out.SharedHit, &out.SharedStale}
	for i, p := range dst {
		if err := d.objs.ShareStats.Lookup(uint32(i), &per); err != nil {
			return out, fmt.Errorf("flow sharing counter %d: %w", i, err)
		}
		for _, v := range per {
			*p += v
		}
	}
	return out, nil
}

// flowReportBatch bounds one call of ReadFlowReports' fn.
const flowReportBatch = 256

// ReadFlowReports reads the program's flow reports and calls fn with them
// in batches (what is in the ring buffer when the first report of a batch
// arrives, at most 256), until ctx ends; it then returns nil. Reports
// naming a backend ID this loader no longer holds (removed meanwhile) are
// left out. The ring buffer has one reader: a second concurrent call
// returns an error. fn runs on the reading goroutine; a slow fn lets the
// ring buffer fill, and the program then drops reports (counted in
// FlowShareCounters.ReportDropped), never packets.
func (d *Dataplane) ReadFlowReports(ctx context.Context, fn func([]FlowReport)) error {
	if !d.reportReader.CompareAndSwap(false, true) {
		return errors.New("flow reports: already being read")
	}
	defer d.reportReader.Store(false)
	rd, err := ringbuf.NewReader(d.objs.FlowReports)
	if err != nil {
		return fmt.Errorf("flow reports: open ring buffer: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { _ = rd.Close() })
	defer stop()
	defer rd.Close()

	var rec ringbuf.Record
	raws := make([]keepbitFlowReport, 0, flowReportBatch)
	for {
		raws = raws[:0]
		for len(raws) < flowReportBatch {
			if len(raws) > 0 && rd.AvailableBytes() == 0 {
				break
			}
			if err := rd.ReadInto(&rec); err != nil {
				if ctx.Err() != nil || errors.Is(err, os.ErrClosed) {
					return nil
				}
				return fmt.Errorf("flow reports: read: %w", err)
			}
			var r keepbitFlowReport
			if len(rec.RawSample) < binary.Size(r) {
				continue
			}
			if _, err := binary.Decode(rec.RawSample, binary.NativeEndian, &r); err != nil {
				continue
			}
			raws = append(raws, r)
		}
		if out := d.resolveReports(raws); len(out) > 0 {
			fn(out)
		}
	}
}

// resolveReports turns the program's reports into addresses under one hold
// of the index lock; a report whose backend ID or incarnation is no longer
// in the index is dropped.
func (d *Dataplane) resolveReports(raws []keepbitFlowReport) []FlowReport {
	out := make([]FlowReport, 0, len(raws))
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, r := range raws {
		m := d.members[r.Backend]
		if m == nil || m.inc != r.Incarnation {
			continue
		}
		out = append(out, FlowReport{
			Service: ServiceKey{VIP: addrFrom16(r.Key.Dst), Port: netToHost16(r.Key.Dport), Proto: Proto(r.Key.Proto)},
			Client:  netip.AddrPortFrom(addrFrom16(r.Key.Src), netToHost16(r.Key.Sport)),
			Backend: m.spec.Addr,
			Reason:  FlowReportReason(r.Reason),
		})
	}
	return out
}

// lookupServiceLocked finds the service that carries packets to k the way
// the program does: the port service, else the VIP's port-0 service.
// Callers hold mu.
func (d *Dataplane) lookupServiceLocked(k ServiceKey) *service {
	k.VIP = k.VIP.Unmap()
	if s := d.services[k]; s != nil {
		return s
	}
	k.Port = 0
	return d.services[k]
}

// ShareFlows writes flows other nodes reported into shared_flows, with
// this node's ID and incarnation of the named backend. A flow whose
// service or backend this node does not have is skipped; applied counts
// the flows written.
func (d *Dataplane) ShareFlows(fs []SharedFlow) (applied int, err error) {
	keys := make([]keepbitFlowKey, 0, len(fs))
	vals := make([]keepbitSharedFlowValue, 0, len(fs))
	d.mu.Lock()
	for _, f := range fs {
		svc := d.lookupServiceLocked(f.Service)
		if svc == nil || !f.Client.IsValid() || (f.Service.Proto != TCP && f.Service.Proto != UDP) {
			continue
		}
		m := svc.members[f.Backend.Unmap()]
		if m == nil {
			continue
		}
		keys = append(keys, keepbitFlowKey{
			Src:   addr16(f.Client.Addr().Unmap()),
			Dst:   addr16(f.Service.VIP.Unmap()),
			Sport: hostToNet16(f.Client.Port()),
			Dport: hostToNet16(f.Service.Port),
			Proto: uint8(f.Service.Proto),
		})
		vals = append(vals, keepbitSharedFlowValue{Backend: m.id, Incarnation: m.inc})
	}
	d.mu.Unlock()
	for i := range keys {
		if err := d.kernelWrite("shared_flows", func() error { return d.objs.SharedFlows.Put(&keys[i], &vals[i]) }); err != nil {
			return applied, fmt.Errorf("shared flow %d: %w", i, err)
		}
		applied++
	}
	return applied, nil
}

// ShareableFlows walks the flow table and calls fn (in batches of up to
// 1024) with the flows a joining node should learn before it takes
// traffic: those whose backend is not the live table's pick for them
// (Moved) and those older than the long-lived age (LongLived). The walk is
// a loose snapshot, like Flows.
func (d *Dataplane) ShareableFlows(fn func([]FlowReport)) error {
	now, err := monotonicNow()
	if err != nil {
		return err
	}
	d.mu.Lock()
	longLived := d.opts.FlowSharing.settings().LongLivedNs
	d.mu.Unlock()
	var picks []rawFlow
	done := d.readerTurn()
	err = d.walkFlows(func(k *keepbitFlowKey, v *keepbitFlowValue) {
		if k.Proto == uint8(TCP) || k.Proto == uint8(UDP) {
			picks = append(picks, rawFlow{*k, *v})
		}
	})
	done()
	if err != nil {
		return err
	}
	owners := d.resolveOwners(picks)
	slots, err := d.liveSlots(owners)
	if err != nil {
		return err
	}
	batch := make([]FlowReport, 0, 1024)
	for _, r := range picks {
		o, ok := owners[r.v.Backend]
		if !ok || o.inc != r.v.Incarnation {
			continue
		}
		reason := FlowReportReason(0)
		if t := slots[o.svc]; len(t) > 0 && t[flowHash(&r.k, d.opts.HashSeed)%uint32(len(t))] != r.v.Backend {
			reason = Moved
		} else if now > r.v.FirstSeenNs && now-r.v.FirstSeenNs >= longLived {
			reason = LongLived
		}
		if reason == 0 {
			continue
		}
		batch = append(batch, FlowReport{
			Service: ServiceKey{VIP: addrFrom16(r.k.Dst), Port: netToHost16(r.k.Dport), Proto: Proto(r.k.Proto)},
			Client:  netip.AddrPortFrom(addrFrom16(r.k.Src), netToHost16(r.k.Sport)),
			Backend: o.addr,
			Reason:  reason,
		})
		if len(batch) == cap(batch) {
			fn(batch)
			batch = make([]FlowReport, 0, 1024)
		}
	}
	if len(batch) > 0 {
		fn(batch)
	}
	return nil
}

// flowOwner is a backend ID's address, incarnation and service.
type flowOwner struct {
	addr netip.Addr
	inc  uint32
	svc  *service
}

func (d *Dataplane) resolveOwners(flows []rawFlow) map[uint32]flowOwner {
	out := map[uint32]flowOwner{}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, f := range flows {
		if _, ok := out[f.v.Backend]; ok {
			continue
		}
		if m := d.members[f.v.Backend]; m != nil {
			out[f.v.Backend] = flowOwner{addr: m.spec.Addr, inc: m.inc, svc: m.svc}
		}
	}
	return out
}

// liveSlots copies the Maglev slots of the live table buffer of every
// service the owners name. It holds applyMu (the buffers of a service in
// d.services are replaced and closed only under it), not mu: state
// changes do not wait for it. A service not in d.services has no slots:
// one being built outside applyMu (its members are indexed already, and a
// failed build closes its buffers), or one deleted.
func (d *Dataplane) liveSlots(owners map[uint32]flowOwner) (map[*service][]uint32, error) {
	d.applyMu.Lock()
	defer d.applyMu.Unlock()
	out := map[*service][]uint32{}
	for _, o := range owners {
		if _, done := out[o.svc]; done {
			continue
		}
		d.mu.Lock()
		var buf *ebpf.Map
		if d.services[o.svc.key] == o.svc {
			buf = o.svc.buffers[o.svc.active]
		}
		d.mu.Unlock()
		if buf == nil {
			out[o.svc] = nil
			continue
		}
		words, err := d.readBuffer(buf) // at least one element: the header
		if err != nil {
			return nil, fmt.Errorf("service %s: read table: %w", o.svc.key, err)
		}
		m := int(words[tblSize])
		if len(words) < tblHdr+m {
			return nil, fmt.Errorf("service %s: read table: buffer holds no table of %d slots", o.svc.key, m)
		}
		out[o.svc] = words[tblHdr : tblHdr+m : tblHdr+m]
	}
	return out, nil
}
