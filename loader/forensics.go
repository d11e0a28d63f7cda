package loader

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
)

// PinnedFlows describes what the maps pinned in pinDir hold for the
// flows of one client address and port: the flows and shared_flows
// entries, each backend ID resolved to its address, state and
// incarnation now. It opens the pins read-only, so it also works after
// the daemon stopped: a post-mortem of a broken connection.
func PinnedFlows(pinDir string, client netip.AddrPort) string {
	src := client.Addr().As16()
	port := hostToNet16(client.Port())
	match := func(k *keepbitFlowKey) bool { return k.Src == src && k.Sport == port }
	var out []string
	each := func(name string, fn func(m *ebpf.Map) int) {
		m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, name), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			out = append(out, fmt.Sprintf("%s: %v", name, err))
			return
		}
		defer m.Close()
		if fn(m) == 0 {
			out = append(out, "no "+name+" entry")
		}
	}
	each("flows", func(m *ebpf.Map) int {
		var k keepbitFlowKey
		var v keepbitFlowValue
		found := 0
		it := m.Iterate()
		for it.Next(&k, &v) {
			if match(&k) {
				found++
				out = append(out, fmt.Sprintf("flow id %d (%s) inc %d packets %d first_seen %d last_seen %d reported %d",
					v.Backend, backendNow(pinDir, v.Backend), v.Incarnation, v.Packets, v.FirstSeenNs, v.LastSeenNs, v.ReportedNs))
			}
		}
		if err := it.Err(); err != nil {
			out = append(out, fmt.Sprintf("flows: %v", err))
		}
		return found
	})
	each("shared_flows", func(m *ebpf.Map) int {
		var k keepbitFlowKey
		var v keepbitSharedFlowValue
		found := 0
		it := m.Iterate()
		for it.Next(&k, &v) {
			if match(&k) {
				found++
				out = append(out, fmt.Sprintf("shared id %d (%s) inc %d", v.Backend, backendNow(pinDir, v.Backend), v.Incarnation))
			}
		}
		if err := it.Err(); err != nil {
			out = append(out, fmt.Sprintf("shared_flows: %v", err))
		}
		return found
	})
	return strings.Join(out, "; ")
}

// backendNow names a backend ID from the pinned backend_state and
// backends maps.
func backendNow(pinDir string, id uint32) string {
	st, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "backend_state"), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return err.Error()
	}
	defer st.Close()
	var word uint64
	if err := st.Lookup(&id, &word); err != nil {
		return err.Error()
	}
	info, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "backends"), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return err.Error()
	}
	defer info.Close()
	// Each ID has two info slots; the state word says which is live.
	slot := id * 2
	if word&uint64(keepbitStateWordSTATE_INFO_SLOT) != 0 {
		slot++
	}
	var b keepbitBackendInfo
	if err := info.Lookup(&slot, &b); err != nil {
		return err.Error()
	}
	addr := netip.AddrFrom16(b.Addr).Unmap()
	return fmt.Sprintf("%s state %d inc %d", addr, word&uint64(keepbitStateWordSTATE_MASK),
		uint32(word)>>uint32(keepbitStateWordSTATE_INC_SHIFT))
}
