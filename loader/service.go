package loader

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/cilium/ebpf"

	"github.com/keepbit/keepbit/internal/maglev"
)

// Mirrors of bpf/maps.h; TestLimitsMatchBPF keeps them equal.
const (
	maxServices = 4096
	maxBackends = 65536
	tblHdr      = 16
	tblSize     = 0
	tblMembers  = 1
	tblGroups   = 2
	tblGen      = 3
	tblGroupEnd = 4

	stateMask     = 0x3
	stateInfoSlot = 0x4
	stateIncShift = 8
	stateSeqShift = 32
	incMask       = 0xFFFFFF

	// tblChunk is how many table words one buffer element holds.
	tblChunk = 16

	serviceFlagPassNoBackend = 1
	backendFlagIPv6          = 1
)

type service struct {
	key        ServiceKey
	id         uint32
	noBackend  NoBackendPolicy
	tableSize  uint32
	active     int
	buffers    [2]*ebpf.Map
	retired    [2]uint64 // epoch at which each buffer stopped being live
	generation uint32
	members    map[netip.Addr]*member
}

type member struct {
	svc  *service
	id   uint32
	inc  uint32
	slot uint32      // live backend_info slot
	spec BackendSpec // spec.State is the state the dataplane holds
	info keepbitBackendInfo

	// slotRetired is the epoch at which the idle slot stopped being live
	// (0: never live): it is rewritten only after a grace period past it.
	slotRetired uint64
}

func (m *member) word() uint32 {
	w := uint32(m.spec.State) | m.inc<<stateIncShift
	if m.slot == 1 {
		w |= stateInfoSlot
	}
	return w
}

// writeStateLocked writes m's state word with the next sequence of its
// ID. The sequence goes up on every write and is never reset (it lives in
// the map, and readBack continues from it), so a flap that restores a
// state never restores a word: a per-CPU flow cache entry filled before
// the flap cannot match again. Callers hold mu.
func (d *Dataplane) writeStateLocked(m *member) error {
	d.seq[m.id]++
	w := uint64(m.word()) | uint64(d.seq[m.id])<<stateSeqShift
	return d.kernelWrite("backend_state", func() error { return d.objs.BackendState.Put(m.id, w) })
}

func (s *service) closeBuffers() {
	for i, b := range s.buffers {
		if b != nil {
			b.Close()
			s.buffers[i] = nil
		}
	}
}

func (d *Dataplane) resetIndex() {
	used := map[uint32]bool{}
	for _, s := range d.services {
		used[s.id] = true
	}
	d.freeSvc = d.freeSvc[:0]
	for id := uint32(0); id < maxServices; id++ {
		if !used[id] {
			d.freeSvc = append(d.freeSvc, id)
		}
	}
	d.freeBe = d.freeBe[:0]
	for id := uint32(1); id < maxBackends; id++ {
		if _, used := d.members[id]; !used {
			d.freeBe = append(d.freeBe, id)
		}
	}
}

// validate checks a spec before anything is written; every error names the
// field that is wrong.
func validate(key ServiceKey, spec *ServiceSpec) error {
	if !key.VIP.IsValid() {
		return fmt.Errorf("service %s: vip: not a valid address", key)
	}
	switch key.Proto {
	case TCP, UDP, ICMP, ICMPv6:
	default:
		return fmt.Errorf("service %s: proto: %d is not tcp, udp, icmp or icmpv6", key, key.Proto)
	}
	if (key.Proto == ICMP || key.Proto == ICMPv6) && key.Port != 0 {
		return fmt.Errorf("service %s: port: must be 0 for %s", key, key.Proto)
	}
	size := spec.TableSize
	if size == 0 {
		size = maglev.DefaultSize
	}
	if size > maglev.MaxSize || !maglev.IsPrime(size) {
		return fmt.Errorf("service %s: table_size: %d is not a prime up to %d", key, size, maglev.MaxSize)
	}
	if len(spec.Backends) > MaxMembers {
		return fmt.Errorf("service %s: backends: %d, at most %d", key, len(spec.Backends), MaxMembers)
	}
	seen := map[netip.Addr]bool{}
	for i, b := range spec.Backends {
		where := fmt.Sprintf("service %s: backend %d (%s)", key, i, b.Addr)
		switch {
		case !b.Addr.IsValid():
			return fmt.Errorf("service %s: backend %d: addr: not a valid address", key, i)
		case seen[b.Addr.Unmap()]:
			return fmt.Errorf("%s: addr: listed twice", where)
		case len(b.MAC) != 6:
			return fmt.Errorf("%s: mac: want a 6-byte Ethernet address, got %q", where, b.MAC)
		case b.MAC[0]&1 == 1:
			return fmt.Errorf("%s: mac: %s is a multicast address", where, b.MAC)
		case b.VLAN > 4094:
			return fmt.Errorf("%s: vlan: %d is outside 0-4094", where, b.VLAN)
		case b.Weight == 0 || b.Weight > 1<<16:
			return fmt.Errorf("%s: weight: %d is outside 1-65536", where, b.Weight)
		case b.Group >= MaxGroups:
			return fmt.Errorf("%s: group: %d, at most %d", where, b.Group, MaxGroups-1)
		case b.State > Draining:
			return fmt.Errorf("%s: state: %d is not up, down or draining", where, b.State)
		}
		seen[b.Addr.Unmap()] = true
	}
	return nil
}

// portOf resolves a backend's egress port to ifindex and MAC.
func (d *Dataplane) portOf(name string) (uint32, net.HardwareAddr, error) {
	if name == "" || name == d.opts.Interface {
		return uint32(d.ifindex), d.ifmac, nil
	}
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return 0, nil, fmt.Errorf("port %q: %w", name, err)
	}
	if len(ifc.HardwareAddr) != 6 {
		return 0, nil, fmt.Errorf("port %q: has no Ethernet address", name)
	}
	return uint32(ifc.Index), ifc.HardwareAddr, nil
}

func (d *Dataplane) infoFor(svcID uint32, b BackendSpec) (keepbitBackendInfo, error) {
	ifindex, srcMAC, err := d.portOf(b.Port)
	if err != nil {
		return keepbitBackendInfo{}, fmt.Errorf("backend %s: %w", b.Addr, err)
	}
	info := keepbitBackendInfo{
		Vlan:      b.VLAN,
		Ifindex:   ifindex,
		Weight:    b.Weight,
		Group:     uint32(b.Group),
		ServiceId: svcID,
		Addr:      addr16(b.Addr),
	}
	copy(info.DstMac[:], b.MAC)
	copy(info.SrcMac[:], srcMAC)
	if b.Addr.Unmap().Is6() {
		info.Flags = backendFlagIPv6
	}
	return info, nil
}

// ApplyService makes the dataplane serve key as spec says: it creates the
// service or updates it in place (flows of unchanged backends stay), and
// returns one Change per write that altered forwarding. A spec that fails
// validation changes nothing. BackendSpec.State applies only to backends
// this call adds: a backend the service already has keeps the state the
// dataplane holds, which only SetBackendState changes.
func (d *Dataplane) ApplyService(key ServiceKey, spec ServiceSpec) ([]Change, error) {
	started := time.Now()
	key.VIP = key.VIP.Unmap()
	if err := validate(key, &spec); err != nil {
		return nil, err
	}
	if spec.TableSize == 0 {
		spec.TableSize = maglev.DefaultSize
	}
	// Resolve ports before touching anything, so a bad port changes nothing.
	for i := range spec.Backends {
		spec.Backends[i].Addr = spec.Backends[i].Addr.Unmap()
		if _, err := d.infoFor(0, spec.Backends[i]); err != nil {
			return nil, fmt.Errorf("service %s: %w", key, err)
		}
	}

	// A new service is built before taking applyMu: its buffers installed
	// (each install may wait for an RCU grace period), its backends
	// written, its first table filled and switched to. Nothing reaches it
	// meanwhile: until it is in d.services, no state change, rebuild or
	// delete finds it, and no packet before it is published. Creations of
	// different services so overlap their waits and use every CPU rather
	// than queue behind each other (0.41-0.45 -> 0.36-0.41 s for 1,000
	// services of 16 backends here).
	d.mu.Lock()
	_, exists := d.services[key]
	d.mu.Unlock()
	var fresh *service
	var table Change
	if !exists {
		var err error
		if fresh, table, err = d.buildService(key, spec, started); err != nil {
			return nil, err
		}
	}

	d.applyMu.Lock()
	defer d.applyMu.Unlock()
	d.mu.Lock()
	svc, exists := d.services[key]
	d.mu.Unlock()
	switch {
	case exists && fresh != nil: // created concurrently by another caller
		d.abandon(fresh)
	case !exists && fresh != nil:
		return d.addService(fresh, table, started)
	case !exists:
		// Deleted since the first look, by a DeleteService that took
		// applyMu before this call did: built anew under applyMu (its
		// install waits for RCU there; a rare path).
		fresh, table, err := d.buildService(key, spec, started)
		if err != nil {
			return nil, err
		}
		return d.addService(fresh, table, started)
	}
	d.mu.Lock() // Services reads these under mu
	svc.tableSize = spec.TableSize
	svc.noBackend = spec.NoBackend
	d.mu.Unlock()

	// Removed members are down and out of svc.members from here on, so
	// the table written next leaves them out; their IDs are released only
	// after that table is live. On an error they go back in (down), so the
	// next apply removes them again and no ID leaks.
	removed, err := d.updateMembers(svc, spec.Backends)
	if err != nil {
		d.restoreMembers(removed)
		return nil, err
	}
	ch, err := d.writeTable(svc, started)
	if err != nil {
		d.restoreMembers(removed)
		return nil, err
	}
	// The table without the removed members is live: release their IDs
	// now, so that a failure to publish below does not leak them.
	d.releaseMembers(removed)
	changes := []Change{ch}
	if err := d.publish(svc); err != nil {
		return changes, err
	}
	return changes, nil
}

// buildService creates a service that nothing names yet: its ID, its
// buffers, its members and its first table, switched to. On an error it
// keeps nothing.
func (d *Dataplane) buildService(key ServiceKey, spec ServiceSpec, started time.Time) (*service, Change, error) {
	svc, err := d.newService(key, spec)
	if err != nil {
		return nil, Change{}, err
	}
	svc.noBackend = spec.NoBackend
	// A new service has no members to remove.
	if _, err := d.updateMembers(svc, spec.Backends); err != nil {
		d.abandon(svc)
		return nil, Change{}, err
	}
	ch, err := d.writeTable(svc, started)
	if err != nil {
		d.abandon(svc)
		return nil, Change{}, err
	}
	return svc, ch, nil
}

// addService makes a built service known and publishes it; the caller
// holds applyMu. A failed publish leaves it known, so a retry or a delete
// finds it.
func (d *Dataplane) addService(svc *service, table Change, started time.Time) ([]Change, error) {
	d.mu.Lock()
	d.services[svc.key] = svc
	d.mu.Unlock()
	changes := []Change{table}
	if err := d.publish(svc); err != nil {
		return changes, err
	}
	return append(changes, Change{Service: svc.key, What: "service added", Started: started, Returned: time.Now(), Generation: svc.generation}), nil
}

func serviceKeyOf(k ServiceKey) keepbitServiceKey {
	return keepbitServiceKey{Addr: addr16(k.VIP), Port: hostToNet16(k.Port), Proto: uint8(k.Proto)}
}

// newService reserves an ID and installs the two table buffers. Installing
// an inner map may wait for an RCU grace period (installFDs), and that
// happens only here, never when a table changes.
func (d *Dataplane) newService(key ServiceKey, spec ServiceSpec) (*service, error) {
	d.mu.Lock()
	if len(d.freeSvc) == 0 {
		d.mu.Unlock()
		return nil, fmt.Errorf("service %s: the dataplane holds %d services already", key, maxServices)
	}
	id := d.freeSvc[0]
	d.freeSvc = d.freeSvc[1:]
	d.mu.Unlock()

	svc := &service{key: key, id: id, tableSize: spec.TableSize, members: map[netip.Addr]*member{}}
	capacity := bufferCapacity(spec.TableSize, len(spec.Backends))
	if err := d.installBuffers(svc, capacity); err != nil {
		d.mu.Lock()
		d.freeSvc = append(d.freeSvc, id)
		d.mu.Unlock()
		return nil, fmt.Errorf("service %s: %w", key, err)
	}
	zero := make([]keepbitCounter, ebpf.MustPossibleCPU())
	if err := d.kernelWrite("service_stats", func() error { return d.objs.ServiceStats.Put(id, zero) }); err != nil {
		d.discardService(svc)
		return nil, fmt.Errorf("service %s: reset counters: %w", key, err)
	}
	return svc, nil
}

// abandon undoes a creation that failed before the service was kept: it
// was never published, so no packet reached its table or members, and it
// must keep nothing reserved (its ID, its buffers, its members' backend
// IDs), or each retry of a create that cannot succeed would take more until
// the dataplane is full. The members' IDs go through quarantine as usual.
func (d *Dataplane) abandon(svc *service) {
	d.mu.Lock()
	ms := make([]*member, 0, len(svc.members))
	for _, m := range svc.members {
		ms = append(ms, m)
	}
	d.mu.Unlock()
	d.releaseMembers(ms)
	d.discardService(svc)
}

// discardService undoes newService for a service that was never published.
func (d *Dataplane) discardService(s *service) {
	for b := range 2 {
		_ = d.kernelWrite("tables_delete", func() error { return d.objs.Tables.Delete(s.id*2 + uint32(b)) })
	}
	s.closeBuffers()
	d.mu.Lock()
	d.freeSvc = append(d.freeSvc, s.id)
	d.mu.Unlock()
}

// tableChunk is one element of a table buffer: tblChunk words.
type tableChunk = [tblChunk]uint32

// bufferCapacity is the elements a buffer needs for a table of size slots
// and members (rounded up to 64, so that a few more members fit without a
// new buffer).
func bufferCapacity(size uint32, members int) uint32 {
	return chunksFor(tblHdr + size + uint32((members+63)/64*64))
}

// chunksFor is the buffer elements that hold words table words.
func chunksFor(words uint32) uint32 {
	return (words + tblChunk - 1) / tblChunk
}

func (d *Dataplane) installBuffer(svcID uint32, b int, capacity uint32) (*ebpf.Map, error) {
	m, err := d.newBuffer(capacity)
	if err != nil {
		return nil, err
	}
	if err := d.installFDs([]uint32{svcID*2 + uint32(b)}, []uint32{uint32(m.FD())}); err != nil {
		m.Close()
		return nil, fmt.Errorf("install table buffer: %w", err)
	}
	return m, nil
}

// installBuffers creates a new service's two table buffers and installs
// them in one write. On an error svc holds none.
func (d *Dataplane) installBuffers(svc *service, capacity uint32) error {
	var fds [2]uint32
	for b := range 2 {
		m, err := d.newBuffer(capacity)
		if err != nil {
			svc.closeBuffers()
			return err
		}
		svc.buffers[b], fds[b] = m, uint32(m.FD())
	}
	keys := []uint32{svc.id * 2, svc.id*2 + 1}
	if err := d.installFDs(keys, fds[:]); err != nil {
		// The batch may have installed one of them.
		for _, k := range keys {
			_ = d.kernelWrite("tables_delete", func() error { return d.objs.Tables.Delete(k) })
		}
		svc.closeBuffers()
		return fmt.Errorf("install table buffers: %w", err)
	}
	return nil
}

// installFDs puts inner maps into tables.
func (d *Dataplane) installFDs(keys, fds []uint32) error {
	return installInner(d.objs.Tables, keys, fds, d.noBatch, func(write func() error) error {
		return d.kernelWrite("tables_install", write)
	})
}

// installInner puts inner maps (by FD) into a map of maps, each write
// through write. A batch waits for one RCU grace period (Linux 6.8 on;
// 5.18-6.7 wait for none); kernels before 5.18 have no batch for maps of
// maps, and there the writes go in parallel, so that their waits overlap.
func installInner(outer *ebpf.Map, keys, fds []uint32, noBatch bool, write func(func() error) error) error {
	if !noBatch {
		err := write(func() error { return batchUpdate(outer, keys, fds) })
		if !errors.Is(err, ebpf.ErrNotSupported) {
			return err
		}
	}
	// At most 64 at once: a migration installs every service's buffers,
	// and each waiting write holds a thread.
	errs := make([]error, len(keys))
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	for i := range keys {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			errs[i] = write(func() error { return outer.Put(keys[i], fds[i]) })
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (d *Dataplane) newBuffer(capacity uint32) (*ebpf.Map, error) {
	spec := d.inner.Copy()
	spec.Name = "kb_table"
	spec.MaxEntries = capacity
	m, err := ebpf.NewMap(spec)
	if err != nil {
		return nil, fmt.Errorf("create table buffer: %w", err)
	}
	return m, nil
}

// fillBuffer writes words into an idle table buffer from its first
// element: one batch update of tblChunk words an element (the last one
// padded with zeros), or an update per element where the kernel has no
// batches for arrays (before 5.6; tests with noBatch). A 2,053-slot table
// is 135 elements: 9.7 us by batch here, where the same words one to an
// element (and the buffer mmap-able) took 101 us.
func (d *Dataplane) fillBuffer(buf *ebpf.Map, words []uint32) error {
	return writeBuffer(buf, words, d.noBatch)
}

func writeBuffer(buf *ebpf.Map, words []uint32, noBatch bool) error {
	n := chunksFor(uint32(len(words)))
	if n > buf.MaxEntries() {
		return fmt.Errorf("buffer of %d elements holds no table of %d words", buf.MaxEntries(), len(words))
	}
	keys := make([]uint32, n)
	chunks := make([]tableChunk, n)
	for i := range keys {
		keys[i] = uint32(i)
		copy(chunks[i][:], words[i*tblChunk:])
	}
	if !noBatch {
		err := batchUpdate(buf, keys, chunks)
		if !errors.Is(err, ebpf.ErrNotSupported) {
			return err
		}
	}
	for i := range keys {
		if err := buf.Put(keys[i], &chunks[i]); err != nil {
			return err
		}
	}
	return nil
}

// readBuffer returns the words of a table buffer, all of its elements.
func (d *Dataplane) readBuffer(buf *ebpf.Map) ([]uint32, error) {
	chunks, err := lookupAll[tableChunk](buf, d.noBatch)
	if err != nil {
		return nil, fmt.Errorf("read table buffer: %w", err)
	}
	return wordsOf(chunks), nil
}

// readWords returns count words of a table buffer from word start,
// reading only the elements that hold them; words past the buffer's end
// read as 0.
func readWords(buf *ebpf.Map, start uint64, count uint32) ([]uint32, error) {
	out := make([]uint32, count)
	var c tableChunk
	have := uint64(math.MaxUint64)
	for i := range uint64(count) {
		w := start + i
		e := w / tblChunk
		if e >= uint64(buf.MaxEntries()) {
			break
		}
		if e != have {
			if err := buf.Lookup(uint32(e), &c); err != nil {
				return nil, fmt.Errorf("read table buffer element %d: %w", e, err)
			}
			have = e
		}
		out[i] = c[w%tblChunk]
	}
	return out, nil
}

// lookupAll reads every element of an array: one batch lookup, or a
// lookup per element where the kernel has no batches for arrays.
func lookupAll[V any](m *ebpf.Map, noBatch bool) ([]V, error) {
	n := m.MaxEntries()
	if n == 0 {
		return nil, errors.New("array of 0 elements")
	}
	vals := make([]V, n)
	if !noBatch {
		keys := make([]uint32, n)
		var cursor ebpf.MapBatchCursor
		done, err := 0, error(nil)
		for done < len(keys) {
			var got int
			got, err = m.BatchLookup(&cursor, keys[done:], vals[done:], nil)
			done += got
			if err != nil || got == 0 {
				break
			}
		}
		// An array's batch ends with ErrKeyNotExist once the last element
		// is read.
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			err = nil
		}
		switch {
		case err == nil:
			for i, k := range keys[:done] {
				if k != uint32(i) {
					return nil, fmt.Errorf("batch read element %d at position %d", k, i)
				}
			}
			if done != len(keys) {
				return nil, fmt.Errorf("batch read %d of %d elements", done, n)
			}
			return vals, nil
		case !errors.Is(err, ebpf.ErrNotSupported) || done > 0:
			return nil, err
		}
	}
	for i := range n {
		if err := m.Lookup(i, &vals[i]); err != nil {
			return nil, fmt.Errorf("element %d: %w", i, err)
		}
	}
	return vals, nil
}

func wordsOf(chunks []tableChunk) []uint32 {
	words := make([]uint32, 0, len(chunks)*tblChunk)
	for i := range chunks {
		words = append(words, chunks[i][:]...)
	}
	return words
}

// updateMembers writes backend records and states for spec. Members no
// longer listed are marked down (their established flows move at once) and
// taken out of svc.members, so the next layout leaves them out; they are
// returned, also with an error, for release after the table without them
// is live (or for restoreMembers).
func (d *Dataplane) updateMembers(svc *service, specs []BackendSpec) ([]*member, error) {
	want := map[netip.Addr]BackendSpec{}
	for _, b := range specs {
		want[b.Addr] = b
	}
	var removed []*member
	for addr, m := range svc.members {
		if _, ok := want[addr]; ok {
			continue
		}
		d.mu.Lock()
		prev := m.spec.State
		m.spec.State = Down
		err := d.writeStateLocked(m)
		if err != nil {
			m.spec.State = prev
		} else {
			delete(svc.members, addr)
		}
		d.mu.Unlock()
		if err != nil {
			return removed, fmt.Errorf("service %s: backend %s: mark removed: %w", svc.key, addr, err)
		}
		removed = append(removed, m)
	}
	var adds []newMember
	for _, b := range specs {
		info, err := d.infoFor(svc.id, b)
		if err != nil {
			return removed, fmt.Errorf("service %s: %w", svc.key, err)
		}
		if err := d.ensurePort(info.Ifindex); err != nil {
			return removed, fmt.Errorf("service %s: backend %s: %w", svc.key, b.Addr, err)
		}
		if m, ok := svc.members[b.Addr]; ok {
			if err := d.updateMember(svc, m, b, info); err != nil {
				return removed, err
			}
			continue
		}
		adds = append(adds, newMember{b, info})
	}
	return removed, d.addMembers(svc, adds)
}

// backendsOf names the backends of a batch for an error: which one the
// kernel refused, a batch does not say.
func backendsOf(adds []newMember) string {
	if len(adds) == 1 {
		return "backend " + adds[0].spec.Addr.String()
	}
	return fmt.Sprintf("backends %s and %d more", adds[0].spec.Addr, len(adds)-1)
}

// newMember is a backend addMembers is to add.
type newMember struct {
	spec BackendSpec
	info keepbitBackendInfo
}

// restoreMembers puts members that updateMembers took out (they are down)
// back into their service after a failed apply: the live table may still
// list them, so their IDs must stay owned until a later table drops them.
func (d *Dataplane) restoreMembers(ms []*member) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, m := range ms {
		if _, taken := m.svc.members[m.spec.Addr]; !taken {
			m.svc.members[m.spec.Addr] = m
		}
	}
}

// allocBackendID takes the free backend ID released longest ago. A
// quarantined ID becomes free after a grace period; when nothing else is
// free, this waits for one.
func (d *Dataplane) allocBackendID() (uint32, bool) {
	for waited := false; ; waited = true {
		d.mu.Lock()
		d.reclaimLocked()
		if len(d.freeBe) > 0 {
			id := d.freeBe[0]
			d.freeBe = d.freeBe[1:]
			d.mu.Unlock()
			return id, true
		}
		pending := len(d.quarantine) > 0
		d.mu.Unlock()
		if !pending || waited {
			return 0, false
		}
		d.grace()
	}
}

// reclaimLocked frees the quarantined IDs that a completed grace period
// covers. Callers hold mu.
func (d *Dataplane) reclaimLocked() {
	done := d.graceDone.Load()
	n := 0
	for _, q := range d.quarantine {
		if q.epoch > done {
			break // released in epoch order
		}
		d.freeBe = append(d.freeBe, q.id)
		n++
	}
	d.quarantine = d.quarantine[n:]
}

// countersCreated records that this process created the counter maps:
// every backend ID's counters are zero.
func (d *Dataplane) countersCreated() {
	d.countersZero = make([]uint64, maxBackends/64)
	for i := range d.countersZero {
		d.countersZero[i] = ^uint64(0)
	}
}

// takeZeroCounters reports whether id's counters are known zero, and
// forgets it: from now on a backend counts on them. Callers hold mu.
func (d *Dataplane) takeZeroCounters(id uint32) bool {
	w, bit := id/64, uint64(1)<<(id%64)
	if int(w) >= len(d.countersZero) || d.countersZero[w]&bit == 0 {
		return false
	}
	d.countersZero[w] &^= bit
	return true
}

// addMembers gives each backend of adds an ID, its record and its state,
// in two batched writes (a start adds 16,000 backends; a write per record
// and per state was 32,000 system calls): all records, then all state
// words, so a state word never names an unwritten record. On an error no
// backend is added and their IDs are free again.
func (d *Dataplane) addMembers(svc *service, adds []newMember) error {
	if len(adds) == 0 {
		return nil
	}
	ids := make([]uint32, 0, len(adds))
	free := func() {
		d.mu.Lock()
		d.freeBe = append(d.freeBe, ids...)
		d.mu.Unlock()
	}
	for _, a := range adds {
		id, ok := d.allocBackendID()
		if !ok {
			free()
			return fmt.Errorf("service %s: backend %s: the dataplane holds %d backends already", svc.key, a.spec.Addr, maxBackends-1)
		}
		ids = append(ids, id)
	}
	// No table and no member names these IDs yet, so their slots are
	// written without mu, which state changes wait for: a batch for a
	// service of 1,024 backends holds no failover back.

	keys := make([]uint32, len(ids))
	infos := make([]keepbitBackendInfo, len(ids))
	for i, id := range ids {
		keys[i], infos[i] = id*2, adds[i].info
	}
	if err := batchWrite(d, "backends", d.objs.Backends, keys, infos); err != nil {
		free()
		return fmt.Errorf("service %s: %s: write records: %w", svc.key, backendsOf(adds), err)
	}
	d.mu.Lock()
	reset := make([]bool, len(ids))
	for i, id := range ids {
		reset[i] = !d.takeZeroCounters(id)
	}
	d.mu.Unlock()
	zero := make([]keepbitCounter, ebpf.MustPossibleCPU())
	for i, id := range ids {
		if !reset[i] {
			continue
		}
		// Another backend had the ID: its counts must not show up as
		// this one's.
		if err := d.kernelWrite("backend_stats", func() error { return d.objs.BackendStats.Put(id, zero) }); err != nil {
			free()
			return fmt.Errorf("service %s: backend %s: reset counters: %w", svc.key, adds[i].spec.Addr, err)
		}
		if err := d.kernelWrite("backend_syn_retrans", func() error { return d.objs.BackendSynRetrans.Put(id, uint64(0)) }); err != nil {
			free()
			return fmt.Errorf("service %s: backend %s: reset SYN retransmissions: %w", svc.key, adds[i].spec.Addr, err)
		}
	}
	ms := make([]*member, len(ids))
	words := make([]uint64, len(ids))
	d.mu.Lock()
	for i, id := range ids {
		ms[i] = &member{svc: svc, id: id, inc: (d.lastInc[id] + 1) & incMask, spec: adds[i].spec, info: adds[i].info}
		d.seq[id]++
		words[i] = uint64(ms[i].word()) | uint64(d.seq[id])<<stateSeqShift
		// Spent even if the batch below fails part way: nothing that saw
		// one of its words can mistake the ID's next backend for this one.
		d.lastInc[id] = ms[i].inc
	}
	d.mu.Unlock()
	if err := batchWrite(d, "backend_state", d.objs.BackendState, ids, words); err != nil {
		free()
		return fmt.Errorf("service %s: %s: write states: %w", svc.key, backendsOf(adds), err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, id := range ids {
		svc.members[adds[i].spec.Addr] = ms[i]
		d.members[id] = ms[i]
	}
	return nil
}

// batchUpdate writes values at keys in one system call; all of them or
// an error.
func batchUpdate[K, V any](m *ebpf.Map, keys []K, values []V) error {
	n, err := m.BatchUpdate(keys, values, nil)
	if err == nil && n != len(keys) {
		err = fmt.Errorf("batch wrote %d of %d", n, len(keys))
	}
	return err
}

// batchWrite writes values at keys in one system call, or one by one on
// kernels without batch operations on the map (arrays before 5.6, maps of
// maps before 5.18), each write then a kernel write of its own for the
// crash tests.
func batchWrite[K, V any](d *Dataplane, op string, m *ebpf.Map, keys []K, values []V) error {
	if !d.noBatch {
		err := d.kernelWrite(op, func() error { return batchUpdate(m, keys, values) })
		if !errors.Is(err, ebpf.ErrNotSupported) {
			return err
		}
	}
	for i := range keys {
		if err := d.kernelWrite(op, func() error { return m.Put(keys[i], values[i]) }); err != nil {
			return err
		}
	}
	return nil
}

// updateMember rewrites a member in place. A changed record goes to the
// idle info slot and the state word flips to it in one write, so the XDP
// program never reads half a record. The member keeps the state the
// dataplane holds: b.State is ignored, because SetBackendState is the only
// writer of an existing member's state (a spec built before a concurrent
// SetBackendState would otherwise undo it).
func (d *Dataplane) updateMember(svc *service, m *member, b BackendSpec, info keepbitBackendInfo) error {
	if info != m.info {
		// The idle slot was live until the previous flip: a packet that
		// read the state word before it may still be copying that record,
		// which is not written atomically. The grace period started in
		// the background at that flip, so this rarely waits. Only
		// applyMu holders write m.info and m.slotRetired.
		d.waitGrace(m.slotRetired)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	b.State = m.spec.State
	if info == m.info {
		m.spec = b
		return nil
	}
	next := 1 - m.slot
	if err := d.kernelWrite("backends", func() error { return d.objs.Backends.Put(m.id*2+next, &info) }); err != nil {
		return fmt.Errorf("service %s: backend %s: write record: %w", svc.key, b.Addr, err)
	}
	prevSlot := m.slot
	m.slot = next
	if err := d.writeStateLocked(m); err != nil {
		m.slot = prevSlot
		return fmt.Errorf("service %s: backend %s: write state: %w", svc.key, b.Addr, err)
	}
	m.slotRetired = d.retire()
	m.info = info
	m.spec = b
	return nil
}

// releaseMembers gives up the IDs of members that no live table lists any
// more. A packet that read the previous table before the switch may still
// be on its way to one of them, so each ID waits in quarantine for a grace
// period before it can name another backend.
func (d *Dataplane) releaseMembers(ms []*member) {
	if len(ms) == 0 {
		return
	}
	e := d.retire()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, m := range ms {
		if cur, ok := m.svc.members[m.spec.Addr]; ok && cur == m {
			delete(m.svc.members, m.spec.Addr)
		}
		delete(d.members, m.id)
		d.quarantine = append(d.quarantine, quarantined{id: m.id, epoch: e})
	}
}

func (d *Dataplane) ensurePort(ifindex uint32) error {
	if ifindex == uint32(d.ifindex) {
		return nil
	}
	d.mu.Lock()
	known := d.ports[ifindex]
	d.mu.Unlock()
	if known {
		return nil
	}
	if err := d.kernelWrite("tx_ports", func() error { return d.objs.TxPorts.Put(ifindex, ifindex) }); err != nil {
		return fmt.Errorf("add egress port %d: %w", ifindex, err)
	}
	d.mu.Lock()
	d.ports[ifindex] = true
	d.mu.Unlock()
	return nil
}

// layout computes the buffer contents for svc from its members' current
// states: the Maglev table of the most preferred group that has a backend
// up (or, with none up, of the most preferred group, so that a backend
// coming up takes effect with its state write alone), and the member list
// in group order for the dataplane's fallback scan.
func (d *Dataplane) layout(svc *service) ([]uint32, error) {
	d.mu.Lock()
	ms := make([]*member, 0, len(svc.members))
	for _, m := range svc.members {
		ms = append(ms, m)
	}
	states := make(map[*member]State, len(ms))
	for _, m := range ms {
		states[m] = m.spec.State
	}
	d.mu.Unlock()

	slices.SortFunc(ms, func(a, b *member) int {
		if c := cmp.Compare(a.spec.Group, b.spec.Group); c != 0 {
			return c
		}
		return a.spec.Addr.Compare(b.spec.Addr)
	})
	var groupEnds []uint32
	for i, m := range ms {
		if i+1 == len(ms) || ms[i+1].spec.Group != m.spec.Group {
			groupEnds = append(groupEnds, uint32(i+1))
		}
	}

	var m uint32
	var slots []uint32
	if len(ms) > 0 {
		chosen, anyUp := ms[0].spec.Group, false
		for _, mb := range ms {
			if states[mb] == Up {
				chosen, anyUp = mb.spec.Group, true
				break
			}
		}
		var group []*member
		var bs []maglev.Backend
		for _, mb := range ms {
			if mb.spec.Group == chosen && (states[mb] == Up || !anyUp) {
				group = append(group, mb)
				bs = append(bs, maglev.Backend{Name: mb.spec.Addr.String(), Weight: mb.spec.Weight})
			}
		}
		table, err := maglev.Build(bs, svc.tableSize, uint64(d.opts.HashSeed))
		if err != nil {
			return nil, fmt.Errorf("service %s: %w", svc.key, err)
		}
		m = svc.tableSize
		slots = make([]uint32, m)
		for i, e := range table {
			slots[i] = group[e].id
		}
	}

	words := make([]uint32, tblHdr+int(m)+len(ms))
	words[tblSize] = m
	words[tblMembers] = uint32(len(ms))
	words[tblGroups] = uint32(len(groupEnds))
	words[tblGen] = svc.generation + 1
	copy(words[tblGroupEnd:], groupEnds)
	copy(words[tblHdr:], slots)
	for i, mb := range ms {
		words[tblHdr+int(m)+i] = mb.id
	}
	return words, nil
}

// writeTable prepares the idle buffer of svc and makes it live with one
// 4-byte write. Only a buffer too small for the table is replaced, which
// waits for RCU; a table of the same size never does.
func (d *Dataplane) writeTable(svc *service, started time.Time) (Change, error) {
	words, err := d.layout(svc)
	if err != nil {
		return Change{}, err
	}
	idle := 1 - svc.active
	if need := chunksFor(uint32(len(words))); svc.buffers[idle] == nil || svc.buffers[idle].MaxEntries() < need {
		// A new buffer: installing it waits for RCU, and nobody reads it yet.
		buf, err := d.installBuffer(svc.id, idle, bufferCapacity(svc.tableSize, len(svc.members)))
		if err != nil {
			return Change{}, fmt.Errorf("service %s: %w", svc.key, err)
		}
		if old := svc.buffers[idle]; old != nil {
			old.Close()
		}
		svc.buffers[idle] = buf
	} else {
		// The idle buffer was live until the previous switch: a packet
		// that looked it up before that switch may still be reading it,
		// and would see a mix of two tables if it were rewritten now.
		// The grace period started in the background at that switch,
		// so this rarely waits; state changes never do (they take mu
		// only, not applyMu).
		d.waitGrace(svc.retired[idle])
	}
	if err := d.kernelWrite("table_write", func() error { return d.fillBuffer(svc.buffers[idle], words) }); err != nil {
		return Change{}, fmt.Errorf("service %s: write table: %w", svc.key, err)
	}
	prepared := time.Now()
	// Release ordering: the table words above are plain stores (the
	// kernel's copy of the batch or of each element); the switch
	// below is a store in the kernel. On a weakly ordered
	// CPU (arm64) another CPU could see the switch before the words. An
	// atomic read-modify-write orders them: LOCK XADD on amd64 is a full
	// fence, and on arm64 Go uses LDADDAL, the instruction Linux uses for
	// its fully ordered atomics (ARMv8.1 LSE; a v8.0 core without LSE gets
	// LDAXR/STLXR, which orders the words before the RMW and the RMW
	// before the switch, but is not formally a full fence). The reader
	// needs no barrier: it loads the active index, and the buffer it then
	// reads is found through that value (map lookup by an index computed
	// from it), an address dependency that orders the loads on every CPU
	// Linux runs BPF on.
	d.fence.Add(1)
	if err := d.kernelWrite("service_active", func() error { return d.objs.ServiceActive.Put(svc.id, uint32(idle)) }); err != nil {
		return Change{}, fmt.Errorf("service %s: switch table: %w", svc.key, err)
	}
	returned := time.Now()
	retired := d.retire()
	d.mu.Lock() // Services and SetBackendState read the generation under mu
	svc.retired[svc.active] = retired
	svc.active = idle
	svc.generation++
	gen := svc.generation
	d.mu.Unlock()
	return Change{Service: svc.key, What: "table", Started: started, Prepared: prepared, Returned: returned, Generation: gen}, nil
}

// SetBackendState changes one backend's state with a single 8-byte map
// write that the XDP program honours from its next packet: down moves new
// and established flows away, draining keeps established flows. The
// service's table is then rebuilt in the background without blocking the
// caller; Sync waits for that.
func (d *Dataplane) SetBackendState(key ServiceKey, addr netip.Addr, st State) (Change, error) {
	started := time.Now()
	key.VIP = key.VIP.Unmap()
	addr = addr.Unmap()
	if st > Draining {
		return Change{}, fmt.Errorf("state: %d is not up, down or draining", st)
	}
	d.mu.Lock()
	svc, ok := d.services[key]
	if !ok {
		d.mu.Unlock()
		return Change{}, fmt.Errorf("service %s: not configured", key)
	}
	m, ok := svc.members[addr]
	if !ok {
		d.mu.Unlock()
		return Change{}, fmt.Errorf("service %s: backend %s: not configured", key, addr)
	}
	prev := m.spec.State
	m.spec.State = st
	err := d.writeStateLocked(m)
	returned := time.Now()
	if err != nil {
		m.spec.State = prev
		d.mu.Unlock()
		return Change{}, fmt.Errorf("service %s: backend %s: write state: %w", key, addr, err)
	}
	d.dirty[key] = true
	gen := svc.generation
	d.mu.Unlock()
	select {
	case d.kick <- struct{}{}:
	default:
	}
	return Change{Service: key, Backend: addr, What: "state " + st.String(), Started: started, Returned: returned, Generation: gen}, nil
}

// DeleteService stops serving key: its packets pass to the stack from the
// next packet on, and its backends' flows are released. The members are
// written down before the service is unpublished: a process that dies in
// between leaves a published service with no usable backend (its packets
// dropped or passed by its policy), never an unpublished service whose
// cached flows are still forwarded (the fast path does not look the
// service up again).
func (d *Dataplane) DeleteService(key ServiceKey) (Change, error) {
	started := time.Now()
	key.VIP = key.VIP.Unmap()
	d.applyMu.Lock()
	defer d.applyMu.Unlock()
	d.mu.Lock()
	svc, ok := d.services[key]
	if !ok {
		d.mu.Unlock()
		return Change{}, fmt.Errorf("service %s: not configured", key)
	}
	var ms []*member
	for _, m := range svc.members {
		prev := m.spec.State
		m.spec.State = Down
		if err := d.writeStateLocked(m); err != nil {
			m.spec.State = prev
			d.mu.Unlock()
			return Change{}, fmt.Errorf("service %s: backend %s: mark down: %w", key, m.spec.Addr, err)
		}
		ms = append(ms, m)
	}
	delete(d.services, key)
	d.mu.Unlock()
	if err := d.unpublish(key); err != nil {
		// Still (partly) published, with every member down: a retry
		// deletes it.
		d.mu.Lock()
		d.services[key] = svc
		d.mu.Unlock()
		return Change{}, err
	}
	returned := time.Now()
	d.mu.Lock()
	delete(d.dirty, key)
	d.mu.Unlock()
	d.releaseMembers(ms)
	// Removing the buffers waits for RCU; nothing reads them any more.
	for b := range 2 {
		_ = d.kernelWrite("tables_delete", func() error { return d.objs.Tables.Delete(svc.id*2 + uint32(b)) })
	}
	svc.closeBuffers()
	d.mu.Lock()
	d.freeSvc = append(d.freeSvc, svc.id)
	d.mu.Unlock()
	return Change{Service: key, What: "service removed", Started: started, Returned: returned}, nil
}

// Sync rebuilds now every table that a state change left stale.
func (d *Dataplane) Sync() error {
	d.applyMu.Lock()
	defer d.applyMu.Unlock()
	return d.rebuildDirty()
}

func (d *Dataplane) rebuildDirty() error {
	// Callers hold applyMu, so no service is added or removed meanwhile.
	d.mu.Lock()
	todo := map[ServiceKey]*service{}
	for key := range d.dirty {
		if s, ok := d.services[key]; ok {
			todo[key] = s
		}
		delete(d.dirty, key)
	}
	d.building += len(todo)
	d.mu.Unlock()
	var errs []error
	for key, s := range todo {
		_, err := d.writeTable(s, time.Now())
		d.mu.Lock()
		d.building--
		if err != nil {
			// Stale still: the next change or Sync tries again, and
			// TablesCurrent keeps saying so meanwhile.
			d.dirty[key] = true
			errs = append(errs, err)
		}
		d.mu.Unlock()
	}
	return errors.Join(errs...)
}

// TablesCurrent reports whether every service's lookup table is built
// from its members' states as they are now. A state change takes effect at
// once for the member it names (a member down is skipped by the packet
// path), but a member coming up joins its service's table only when the
// table is rebuilt, which happens after SetBackendState returns: until
// then new flows that the rebuilt table would give it go to the others.
// A node must not draw traffic before this holds, or the flows that its
// peers send to that member it sends elsewhere.
func (d *Dataplane) TablesCurrent() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.dirty) == 0 && d.building == 0
}

func (d *Dataplane) rebuildLoop() {
	defer close(d.done)
	for {
		select {
		case <-d.stop:
			return
		case <-d.kick:
			d.applyMu.Lock()
			if err := d.rebuildDirty(); err != nil {
				d.log.Error("table rebuild failed", "error", err)
			}
			d.applyMu.Unlock()
		}
	}
}
