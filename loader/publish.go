package loader

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// Mirrors of bpf/maps.h.
const (
	vipFlagPorts    = 1
	vipFlagCatchall = 2
	vipFilterWords  = 1024
)

// vipFilterBit is the Go twin of vip_filter_bit in bpf/hash.h.
func vipFilterBit(a netip.Addr) uint32 {
	b := addr16(a)
	var x uint32
	for i := 0; i < 16; i += 4 {
		x ^= uint32(b[i]) | uint32(b[i+1])<<8 | uint32(b[i+2])<<16 | uint32(b[i+3])<<24
	}
	return (x * 0x9E3779B1) >> 16
}

func serviceFlags(s *service) uint32 {
	if s.noBackend == PassNoBackend {
		return serviceFlagPassNoBackend
	}
	return 0
}

// publish makes svc visible to the program: prefilter bit first, then the
// port entry, then the VIP entry that leads to it. Callers hold applyMu.
func (d *Dataplane) publish(svc *service) error {
	if err := d.setFilterBit(svc.key.VIP); err != nil {
		return err
	}
	if svc.key.Port != 0 {
		sk := serviceKeyOf(svc.key)
		sv := keepbitServiceValue{Id: svc.id, Flags: serviceFlags(svc)}
		if err := d.kernelWrite("services", func() error { return d.objs.Services.Put(&sk, &sv) }); err != nil {
			return fmt.Errorf("service %s: publish: %w", svc.key, err)
		}
	}
	return d.writeVIP(svc.key.VIP, svc.key.Proto)
}

// unpublish undoes publish in reverse order after key left d.services.
func (d *Dataplane) unpublish(key ServiceKey) error {
	if err := d.writeVIP(key.VIP, key.Proto); err != nil {
		return err
	}
	if key.Port != 0 {
		sk := serviceKeyOf(key)
		if err := d.kernelWrite("services", func() error { return d.objs.Services.Delete(&sk) }); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("service %s: unpublish: %w", key, err)
		}
	}
	return d.writeFilter()
}

// writeVIP recomputes the vips entry of (vip, proto) from d.services.
func (d *Dataplane) writeVIP(vip netip.Addr, proto Proto) error {
	var v keepbitVipValue
	d.mu.Lock()
	for k, s := range d.services {
		if k.VIP != vip || k.Proto != proto {
			continue
		}
		if k.Port == 0 {
			v.Flags |= vipFlagCatchall
			v.Catchall = keepbitServiceValue{Id: s.id, Flags: serviceFlags(s)}
		} else {
			v.Flags |= vipFlagPorts
		}
	}
	d.mu.Unlock()
	vk := keepbitVipKey{Addr: addr16(vip), Proto: uint8(proto)}
	if v.Flags == 0 {
		if err := d.kernelWrite("vips", func() error { return d.objs.Vips.Delete(&vk) }); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("vip %s/%s: remove: %w", vip, proto, err)
		}
		return nil
	}
	if err := d.kernelWrite("vips", func() error { return d.objs.Vips.Put(&vk, &v) }); err != nil {
		return fmt.Errorf("vip %s/%s: publish: %w", vip, proto, err)
	}
	return nil
}

// setFilterBit sets vip's prefilter bit. d.filter is what the kernel
// holds (read back at adoption, updated after each write), so a bit
// already set costs nothing: recomputing every word from every service,
// as writeFilter does, cost a start of 1,000 services a quadratic 44 us
// per service. Clearing bits is writeFilter's, when a service leaves.
func (d *Dataplane) setFilterBit(vip netip.Addr) error {
	bit := vipFilterBit(vip)
	i, b := bit/64, uint64(1)<<(bit%64)
	if d.filter[i]&b != 0 {
		return nil
	}
	w := d.filter[i] | b
	if err := d.kernelWrite("vip_filter", func() error { return d.objs.VipFilter.Put(uint32(i), w) }); err != nil {
		return fmt.Errorf("write VIP prefilter: %w", err)
	}
	d.filter[i] = w
	return nil
}

// writeFilter rewrites the prefilter words that differ from the VIP set.
func (d *Dataplane) writeFilter() error {
	var want [vipFilterWords]uint64
	d.mu.Lock()
	for k := range d.services {
		bit := vipFilterBit(k.VIP)
		want[bit/64] |= 1 << (bit % 64)
	}
	d.mu.Unlock()
	for i, w := range want {
		if w == d.filter[i] {
			continue
		}
		if err := d.kernelWrite("vip_filter", func() error { return d.objs.VipFilter.Put(uint32(i), w) }); err != nil {
			return fmt.Errorf("write VIP prefilter: %w", err)
		}
		d.filter[i] = w
	}
	return nil
}
