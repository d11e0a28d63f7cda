package loader

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/keepbit/keepbit/internal/maglev"
)

// readBack rebuilds the in-memory index from pinned maps, so a restarted
// loader can change what an earlier process configured without disturbing
// what is forwarding now.
func (d *Dataplane) readBack() error {
	words, err := d.readStates()
	if err != nil {
		return err
	}
	for id, w := range words {
		d.lastInc[id] = uint32(w) >> stateIncShift
		d.seq[id] = uint32(w >> stateSeqShift)
	}

	var sk keepbitServiceKey
	var sv keepbitServiceValue
	it := d.objs.Services.Iterate()
	for it.Next(&sk, &sv) {
		svc, err := d.readService(sk, sv)
		if err != nil {
			return err
		}
		d.services[svc.key] = svc
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate services: %w", err)
	}
	var vk keepbitVipKey
	var vv keepbitVipValue
	vit := d.objs.Vips.Iterate()
	for vit.Next(&vk, &vv) {
		if vv.Flags&vipFlagCatchall == 0 {
			continue
		}
		svc, err := d.readService(keepbitServiceKey{Addr: vk.Addr, Proto: vk.Proto}, vv.Catchall)
		if err != nil {
			return err
		}
		d.services[svc.key] = svc
	}
	if err := vit.Err(); err != nil {
		return fmt.Errorf("iterate VIPs: %w", err)
	}
	for i := range d.filter {
		if err := d.objs.VipFilter.Lookup(uint32(i), &d.filter[i]); err != nil {
			return fmt.Errorf("read VIP prefilter: %w", err)
		}
	}

	var port, val uint32
	pit := d.objs.TxPorts.Iterate()
	for pit.Next(&port, &val) {
		d.ports[port] = true
	}
	if err := pit.Err(); err != nil {
		return fmt.Errorf("iterate egress ports: %w", err)
	}
	// A backend that no live table of a published service lists must not
	// forward: a per-CPU cache entry skips the service lookup, so after a
	// crash between a DeleteService's unpublish and its state writes (or a
	// removal's) its flows would go on. Write those words down, with a new
	// sequence so no cache entry matches them.
	for id := uint32(1); id < maxBackends; id++ {
		w := words[id]
		if d.members[id] != nil || State(w&stateMask) == Down {
			continue
		}
		d.seq[id]++
		down := w&^(stateMask|0xFFFFFFFF<<stateSeqShift) | uint64(d.seq[id])<<stateSeqShift
		if err := d.kernelWrite("backend_state", func() error { return d.objs.BackendState.Put(id, down) }); err != nil {
			return fmt.Errorf("backend state %d: write down unlisted backend: %w", id, err)
		}
	}
	d.resetIndex()
	// The process that wrote this state may have released IDs or switched
	// tables just before it stopped: its quarantine is lost, so wait out
	// one grace period before anything is reused or rewritten.
	d.waitRCU()
	return nil
}

// readStates reads every backend state word in batches (one lookup per ID
// is 65536 syscalls on every restart), or one by one on kernels without
// batch operations on arrays.
func (d *Dataplane) readStates() ([]uint64, error) {
	words := make([]uint64, maxBackends)
	keys := make([]uint32, 4096)
	var cursor ebpf.MapBatchCursor
	got := 0
	for got < maxBackends {
		n, err := d.objs.BackendState.BatchLookup(&cursor, keys, words[got:got+len(keys)], nil)
		if got == 0 && n == 0 && errors.Is(err, ebpf.ErrNotSupported) {
			return d.readStatesOneByOne(words)
		}
		if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil, fmt.Errorf("read backend states: %w", err)
		}
		// An array batch walks IDs in order; anything else is a surprise
		// to stop on, not a state to adopt.
		for i := range n {
			if keys[i] != uint32(got+i) {
				return nil, fmt.Errorf("read backend states: batch returned ID %d in place of %d", keys[i], got+i)
			}
		}
		got += n
		if err != nil || n == 0 {
			break // ErrKeyNotExist: the walk is complete
		}
	}
	if got != maxBackends {
		return nil, fmt.Errorf("read backend states: %d of %d read", got, maxBackends)
	}
	return words, nil
}

func (d *Dataplane) readStatesOneByOne(words []uint64) ([]uint64, error) {
	for id := uint32(0); id < maxBackends; id++ {
		if err := d.objs.BackendState.Lookup(id, &words[id]); err != nil {
			return nil, fmt.Errorf("backend state %d: %w", id, err)
		}
	}
	return words, nil
}

func (d *Dataplane) readService(sk keepbitServiceKey, sv keepbitServiceValue) (*service, error) {
	key := ServiceKey{VIP: addrFrom16(sk.Addr), Port: netToHost16(sk.Port), Proto: Proto(sk.Proto)}
	svc := &service{key: key, id: sv.Id, members: map[netip.Addr]*member{}}
	if sv.Flags&serviceFlagPassNoBackend != 0 {
		svc.noBackend = PassNoBackend
	}
	var active uint32
	if err := d.objs.ServiceActive.Lookup(sv.Id, &active); err != nil {
		return nil, fmt.Errorf("service %s: active buffer: %w", key, err)
	}
	svc.active = int(active & 1)
	for b := range 2 {
		var m *ebpf.Map
		if err := d.objs.Tables.Lookup(sv.Id*2+uint32(b), &m); err != nil {
			svc.closeBuffers()
			return nil, fmt.Errorf("service %s: table buffer %d: %w", key, b, err)
		}
		svc.buffers[b] = m
	}
	// The header and the member list only: at the default table size the
	// slots are 256 KiB a service that nothing here needs.
	live := svc.buffers[svc.active]
	hdr, err := readWords(live, 0, tblHdr)
	if err != nil {
		svc.closeBuffers()
		return nil, fmt.Errorf("service %s: %w", key, err)
	}
	size, n := hdr[tblSize], min(hdr[tblMembers], MaxMembers)
	svc.tableSize = size
	svc.generation = hdr[tblGen]
	ids, err := readWords(live, uint64(tblHdr)+uint64(size), n)
	if err != nil {
		svc.closeBuffers()
		return nil, fmt.Errorf("service %s: %w", key, err)
	}
	for _, id := range ids {
		if id == 0 || id >= maxBackends || d.members[id] != nil {
			d.dirty[key] = true
			continue
		}
		m, err := d.readMember(svc, id)
		if err != nil {
			svc.closeBuffers()
			return nil, fmt.Errorf("service %s: %w", key, err)
		}
		// A live table may still list an ID whose record now belongs to
		// another service (an earlier loader released it too early): it
		// is not a member, and the table is rebuilt without it at once.
		if m.info.ServiceId != svc.id {
			d.dirty[key] = true
			continue
		}
		if _, dup := svc.members[m.spec.Addr]; dup {
			d.dirty[key] = true
			continue
		}
		svc.members[m.spec.Addr] = m
		d.members[id] = m
	}
	if size == 0 { // a service with no members: the next apply sets the size
		svc.tableSize = maglev.DefaultSize
	}
	return svc, nil
}

func (d *Dataplane) readMember(svc *service, id uint32) (*member, error) {
	var st uint64
	if err := d.objs.BackendState.Lookup(id, &st); err != nil {
		return nil, fmt.Errorf("backend %d: state: %w", id, err)
	}
	m := &member{svc: svc, id: id, inc: uint32(st) >> stateIncShift}
	if st&stateInfoSlot != 0 {
		m.slot = 1
	}
	if err := d.objs.Backends.Lookup(id*2+m.slot, &m.info); err != nil {
		return nil, fmt.Errorf("backend %d: record: %w", id, err)
	}
	m.spec = BackendSpec{
		Addr:   addrFrom16(m.info.Addr),
		MAC:    net.HardwareAddr(append([]byte(nil), m.info.DstMac[:]...)),
		VLAN:   m.info.Vlan,
		Weight: m.info.Weight,
		Group:  uint8(m.info.Group),
		State:  State(st & stateMask),
	}
	if m.info.Ifindex != uint32(d.ifindex) {
		if ifc, err := net.InterfaceByIndex(int(m.info.Ifindex)); err == nil {
			m.spec.Port = ifc.Name
		}
	}
	return m, nil
}
