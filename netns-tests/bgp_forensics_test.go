package netnstests

import (
	"bytes"
	bin "encoding/binary"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/keepbit/keepbit/internal/connload"
	"github.com/keepbit/keepbit/loader"
)

// explainBroken logs, for every broken connection, what each node's
// pinned maps hold for it: its flow table entry (backend ID, incarnation,
// ages) and its shared_flows entry, with the backend IDs each node gives
// its backends. A reset names a packet that reached a backend without the
// connection; this says which node sent it there and from what.
func (l *bgpLab) explainBroken(t testing.TB, r connload.Report) {
	t.Helper()
	broken := r.BrokenConns()
	if len(broken) == 0 {
		return
	}
	for _, c := range broken {
		client, err := netip.ParseAddrPort(c.Local)
		if err != nil {
			t.Logf("forensics: %q: %v", c.Local, err)
			continue
		}
		var b strings.Builder
		fmt.Fprintf(&b, "forensics for %s (answered by %v, broken %s at %s):", c.Local, c.Backends, c.Broken, c.BrokenAt.Format("15:04:05.000"))
		for _, n := range l.nodes {
			fmt.Fprintf(&b, "\n  %s: %s", n.name, nodeMapsFor(filepath.Join(n.dir, "bpf"), client))
		}
		t.Log(b.String())
	}
	for i, n := range l.nodes {
		if n.d == nil {
			continue
		}
		out, err := l.ctl(i, "-o", "json", "flowshare")
		if err != nil {
			out = err.Error() + ": " + out
		}
		t.Logf("forensics: %s flowshare: %s", n.name, strings.TrimSpace(out))
	}
}

// nodeMapsFor reads one node's pinned flows and shared_flows for a client
// address and port, raw: the key layout is struct flow_key (src[16],
// dst[16], sport, dport in network order, proto).
func nodeMapsFor(pinRoot string, client netip.AddrPort) string {
	dir := loader.PinDir(pinRoot, "eth0")
	src := client.Addr().As16()
	port := bin.BigEndian.AppendUint16(nil, client.Port())
	match := func(k []byte) bool {
		return len(k) >= 34 && bytes.Equal(k[:16], src[:]) && bytes.Equal(k[32:34], port)
	}
	var out []string
	for _, name := range []string{"flows", "shared_flows"} {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			out = append(out, fmt.Sprintf("%s: %v", name, err))
			continue
		}
		var k, v []byte
		found := 0
		it := m.Iterate()
		for it.Next(&k, &v) {
			if !match(k) {
				continue
			}
			found++
			u32 := func(o int) uint32 { return bin.NativeEndian.Uint32(v[o:]) }
			u64 := func(o int) uint64 { return bin.NativeEndian.Uint64(v[o:]) }
			switch {
			case name == "flows" && len(v) >= 48:
				out = append(out, fmt.Sprintf("flow id %d (%s) inc %d packets %d first_seen %d last_seen %d reported %d",
					u32(0), backendOf(dir, u32(0)), u32(4), u64(16), u64(32), u64(8), u64(40)))
			case name == "shared_flows" && len(v) >= 8:
				out = append(out, fmt.Sprintf("shared id %d (%s) inc %d", u32(0), backendOf(dir, u32(0)), u32(4)))
			default:
				out = append(out, fmt.Sprintf("%s %x", name, v))
			}
		}
		if err := it.Err(); err != nil {
			out = append(out, fmt.Sprintf("%s: %v", name, err))
		}
		if found == 0 {
			out = append(out, "no "+name+" entry")
		}
		m.Close()
	}
	return strings.Join(out, "; ")
}

// backendOf names a backend ID from the pinned backend_state and backends
// maps: its address, state bits and incarnation now.
func backendOf(dir string, id uint32) string {
	st, err := ebpf.LoadPinnedMap(filepath.Join(dir, "backend_state"), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return err.Error()
	}
	defer st.Close()
	var word uint64
	if err := st.Lookup(&id, &word); err != nil {
		return err.Error()
	}
	info, err := ebpf.LoadPinnedMap(filepath.Join(dir, "backends"), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return err.Error()
	}
	defer info.Close()
	slot := id * 2
	if word&4 != 0 {
		slot++
	}
	var v []byte
	if err := info.Lookup(&slot, &v); err != nil {
		return err.Error()
	}
	addr := "?"
	if len(v) >= 48 {
		a := netip.AddrFrom16([16]byte(v[32:48])).Unmap()
		addr = a.String()
	}
	return fmt.Sprintf("%s state %d inc %d", addr, word&3, uint32(word)>>8)
}
