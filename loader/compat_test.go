package loader

import (
	"bytes"
	"errors"
	"net"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"
)

// TestChooseProgram: auto takes the current build when the kernel has all
// it needs and the compatible one otherwise; asking for the current build
// on a kernel without it names the missing feature; compat is always
// taken as asked.
func TestChooseProgram(t *testing.T) {
	have := func() error { return nil }
	lack := func() error { return ebpf.ErrNotSupported }
	broken := func() error { return errors.New("probe broke") }
	reqs := func(loop func() error) []Requirement {
		return []Requirement{
			{Feature: "XDP programs", Kernel: "4.8", probe: have},
			{Feature: "the Loop helper", Kernel: "5.17", Program: ProgramCurrent, probe: loop},
			{Feature: "the KtimeGetNs helper", Kernel: "4.1", Program: ProgramCompat, probe: have},
		}
	}
	for _, c := range []struct {
		name    string
		want    Program
		loop    func() error
		got     Program
		errText string
	}{
		{"auto on a new kernel", ProgramAuto, have, ProgramCurrent, ""},
		{"auto on an old kernel", ProgramAuto, lack, ProgramCompat, ""},
		{"current on a new kernel", ProgramCurrent, have, ProgramCurrent, ""},
		{"current on an old kernel", ProgramCurrent, lack, "", "kernel 5.10.0-32-amd64 lacks the Loop helper, which the current build of the forwarder needs (Linux 5.17 or later; the compatible build runs here)"},
		{"compat on a new kernel", ProgramCompat, have, ProgramCompat, ""},
		{"a probe that fails", ProgramAuto, broken, "", "probe the kernel for the Loop helper: probe broke"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := chooseProgram(c.want, reqs(c.loop), "5.10.0-32-amd64")
			if c.errText != "" {
				if err == nil || !bytes.Contains([]byte(err.Error()), []byte(c.errText)) {
					t.Fatalf("chooseProgram = %q, %v; want an error containing %q", got, err, c.errText)
				}
				return
			}
			if err != nil || got != c.got {
				t.Fatalf("chooseProgram = %q, %v; want %q", got, err, c.got)
			}
		})
	}
	for _, c := range []struct {
		in   string
		want Program
		bad  bool
	}{{"", ProgramAuto, false}, {"auto", ProgramAuto, false}, {"current", ProgramCurrent, false}, {"compat", ProgramCompat, false}, {"5.10", "", true}} {
		got, err := ParseProgram(c.in)
		if (err != nil) != c.bad || got != c.want {
			t.Errorf("ParseProgram(%q) = %q, %v; want %q (error %v)", c.in, got, err, c.want, c.bad)
		}
	}
}

// TestForwardWithoutContext runs each build the kernel can load through
// the forwarding cases with frames that carry no xdp_md, which is all a
// kernel before 5.15 can run (make test-kernels runs this on 5.10, where
// only the compatible build loads): a new flow picks a backend (slow path,
// table), its next packets stay there (flow cache), a backend marked down
// moves its flow at once (the member scan, before any rebuild), new flows
// avoid it, and what is not for a service passes untouched. Frames enter
// on the loopback device, so a frame for a backend on the lab's second
// port is redirected there.
func TestForwardWithoutContext(t *testing.T) {
	for _, prog := range []Program{ProgramCurrent, ProgramCompat} {
		t.Run(string(prog), func(t *testing.T) {
			if _, err := chooseProgram(prog, Requirements(), kernelRelease()); err != nil {
				t.Skipf("not on this kernel: %v", err)
			}
			l := newLabWithoutContext(t, Options{Program: prog})
			if got := l.dp.Program(); got != prog {
				t.Fatalf("dataplane loaded the %q build, want %q", got, prog)
			}
			const vip, client = "198.51.100.24", "203.0.113.24"
			key := svc(vip, 80, TCP)
			// On the lab's second port: a frame from the loopback device
			// to the lab's own port would need that port in tx_ports.
			a := backend("10.2.4.1", "02:be:00:00:00:01").port(l.port2)
			b := backend("10.2.4.2", "02:be:00:00:00:02").port(l.port2)
			l.apply(key, ServiceSpec{Backends: []BackendSpec{a, b}})
			if err := l.dp.Sync(); err != nil {
				t.Fatal(err)
			}
			byMAC := map[string]BackendSpec{a.MAC.String(): a, b.MAC.String(): b}
			frame := func(sport uint16, syn bool) []byte {
				return v4(t, pkt{src: client, dst: vip, l4: l4{layers.IPProtocolTCP, sport, 80}, payload: []byte("hi"), syn: syn}, 0)
			}
			// send returns the backend a frame went to, checking the
			// verdict and that the frame is the input with its MACs
			// rewritten.
			send := func(step string, in []byte) BackendSpec {
				t.Helper()
				verdict, out := l.run(in)
				if verdict != xdpRedirect {
					t.Fatalf("%s: verdict %s, want REDIRECT", step, verdictName(verdict))
				}
				be, ok := byMAC[net.HardwareAddr(out[:6]).String()]
				if !ok {
					t.Fatalf("%s: frame sent to %s, not a backend", step, net.HardwareAddr(out[:6]))
				}
				if want := rewritten(in, 0, be.MAC, port2MAC, 0, 0); !bytes.Equal(out[:len(in)], want) {
					t.Fatalf("%s: frame\n%x\nwant\n%x", step, out[:len(in)], want)
				}
				return be
			}

			first := send("new flow (SYN)", frame(4000, true))
			for i := range 3 {
				if got := send("established flow", frame(4000, false)); got.Addr != first.Addr {
					t.Fatalf("established packet %d went to %s, want %s where the SYN went", i, got.Addr, first.Addr)
				}
			}
			other := a
			if first.Addr == a.Addr {
				other = b
			}
			// Down with the rebuild held off: what moves the flow is the
			// state write and the member scan, not a new table.
			// (A failure below unlocks on its way out: the lab's cleanup
			// closes the dataplane, which takes applyMu.)
			var moved BackendSpec
			var fresh []BackendSpec
			func() {
				l.dp.applyMu.Lock()
				defer l.dp.applyMu.Unlock()
				if _, err := l.dp.SetBackendState(key, first.Addr, Down); err != nil {
					t.Fatal(err)
				}
				moved = send("established flow, its backend down", frame(4000, false))
				for sport := uint16(5000); sport < 5032; sport++ {
					fresh = append(fresh, send("new flow, one backend down", frame(sport, true)))
				}
			}()
			if moved.Addr != other.Addr {
				t.Errorf("with %s down its flow went to %s, want %s", first.Addr, moved.Addr, other.Addr)
			}
			for i, be := range fresh {
				if be.Addr != other.Addr {
					t.Errorf("new flow %d went to %s, which is down", i, be.Addr)
				}
			}
			in := v4(t, pkt{src: client, dst: "198.51.100.99", l4: l4{layers.IPProtocolTCP, 4000, 80}, payload: []byte("hi")}, 0)
			if verdict, out := l.run(in); verdict != xdpPass || !bytes.Equal(out[:len(in)], in) {
				t.Errorf("not a VIP: verdict %s, frame changed %v; want PASS, unchanged", verdictName(verdict), !bytes.Equal(out[:len(in)], in))
			}
		})
	}
}

// TestKernelMemory: the kernel's charge for each service's two table
// buffers (4 bytes per slot, in elements of 16 words, plus at most a few
// pages), summed over services of two table sizes, and the program's own
// maps by name.
func TestKernelMemory(t *testing.T) {
	l := newLab(t)
	a := backend("10.2.5.1", "02:bf:00:00:00:01")
	big, small := uint32(65537), uint32(2053)
	l.apply(svc("198.51.100.25", 80, TCP), ServiceSpec{Backends: []BackendSpec{a}, TableSize: big})
	l.apply(svc("198.51.100.25", 443, TCP), ServiceSpec{Backends: []BackendSpec{a}, TableSize: big})
	l.apply(svc("198.51.100.26", 80, TCP), ServiceSpec{Backends: []BackendSpec{a}, TableSize: small})
	m, err := l.dp.KernelMemory()
	if err != nil {
		t.Fatal(err)
	}
	if m.Services != 3 {
		t.Errorf("Services = %d, want 3", m.Services)
	}
	// Each buffer holds a header, table_size slots and the members (room
	// for 64), 4 bytes each, rounded up to a 64-byte element. Linux
	// before 6.6 reports an estimate that counts each element's 4-byte
	// key too, rounded up to 8: 72 bytes an element.
	least := uint64(2*2*big+2*small) * 4
	if most := least*72/64 + 6*(4*4096+uint64(keepbitTableLayoutTBL_HDR+64+16)*4); m.Tables < least || m.Tables > most {
		t.Errorf("Tables = %d bytes, want %d to %d (6 buffers of 4-byte slots)", m.Tables, least, most)
	}
	if m.Maps["flows"] == 0 || m.Maps["flow_cache"] == 0 || m.Maps["backend_state"] == 0 {
		t.Errorf("Maps = %v, want the flow table, flow cache and backend states among them", m.Maps)
	}
	if _, ok := m.Maps["tables"]; !ok {
		t.Errorf("Maps = %v: no outer tables map", m.Maps)
	}
	if m.Total() <= m.Tables || m.PerService() != m.Tables/3 {
		t.Errorf("Total %d, PerService %d for Tables %d", m.Total(), m.PerService(), m.Tables)
	}
	t.Logf("kernel memory: %d services, tables %d KiB (%d KiB per service), total %d KiB", m.Services, m.Tables>>10, m.PerService()>>10, m.Total()>>10)
}
