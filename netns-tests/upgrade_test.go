package netnstests

import (
	"bytes"
	"context"
	endian "encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	nslab "github.com/keepbit/keepbit/internal/lab"
)

// previousProgram is the commit before the newest one that changed the
// XDP program's committed object, so an upgrade from it replaces one
// program by another and adopts an older map layout. The object, not
// bpf/: that directory also holds the load generator's programs.
// KEEPBIT_UPGRADE_FROM names another commit.
func previousProgram(t *testing.T) string {
	if ref := os.Getenv("KEEPBIT_UPGRADE_FROM"); ref != "" {
		return ref
	}
	out, err := exec.Command("git", "-C", "..", "log", "-n1", "--format=%H", "HEAD", "--", "loader/keepbit_bpfel.o").Output()
	if err != nil || len(bytes.TrimSpace(out)) == 0 {
		t.Fatalf("find the last commit that changed the program (a shallow clone has no history: fetch it or set KEEPBIT_UPGRADE_FROM): %v", err)
	}
	return strings.TrimSpace(string(out)) + "~1"
}

// buildAt builds cmd/keepbitd as it was at ref.
func buildAt(t *testing.T, ref string) string {
	t.Helper()
	src := t.TempDir()
	archive := exec.Command("git", "-C", "..", "archive", "--format=tar", ref)
	untar := exec.Command("tar", "-x", "-C", src)
	pipe, err := archive.StdoutPipe()
	must(t, err, "git archive pipe")
	untar.Stdin = pipe
	var aerr bytes.Buffer
	archive.Stderr = &aerr
	must(t, untar.Start(), "tar")
	if err := archive.Run(); err != nil {
		t.Fatalf("git archive %s: %v: %s", ref, err, aerr.String())
	}
	must(t, untar.Wait(), "untar")
	bin := filepath.Join(t.TempDir(), "keepbitd-old")
	build := exec.Command("go", "build", "-o", bin, "./cmd/keepbitd")
	build.Dir = src
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build keepbitd at %s: %v: %s", ref, err, out)
	}
	return bin
}

// TestUpgradeUnderLoad replaces a running keepbitd built from an earlier
// commit (with an earlier XDP program) by this one while UDP flows
// stream through the VIP: the new daemon adopts the pinned maps and
// swaps the program under the link. Not one datagram may be lost, and
// every flow stays on its backend.
func TestUpgradeUnderLoad(t *testing.T) {
	l := newLab(t)
	ref := previousProgram(t)
	old := buildAt(t, ref)
	t.Logf("upgrading from %s", ref)
	// Checks that a loaded CI machine cannot fail by accident (a 40 ms
	// timeout can): this test is about what the upgrade itself does to
	// the backends' states, and it fails on any backend taken down.
	head := l.configHead()
	const fast, slow = "interval: 50ms, timeout: 40ms, rise: 2, fall: 2", "interval: 200ms, timeout: 190ms, rise: 1, fall: 5"
	if !strings.Contains(head, fast) {
		t.Fatalf("the lab's check defaults changed: %s", head)
	}
	cfg := l.putConfig(strings.Replace(head, fast, slow, 1) + `      - {address: 10.71.1.2, port: kb1}
      - {address: 10.71.2.2, port: kb2}
  - name: stream
    vip: ` + vip + `
    port: 9000
    protocol: udp
    check: {type: http, port: 80, path: /}
    backends:
      - {address: 10.71.1.2, port: kb1}
      - {address: 10.71.2.2, port: kb2}
`)

	// Receivers: the backend that got each datagram, by flow and seq.
	const flows = 16
	type got struct {
		mu      sync.Mutex
		seen    map[uint64]string // flow<<32|seq -> backend
		backend [flows]map[string]bool
	}
	rx := &got{seen: map[uint64]string{}}
	for i := range rx.backend {
		rx.backend[i] = map[string]bool{}
	}
	for _, b := range l.backends {
		pc, err := nslab.ListenPacket(b.ns, "udp4", vip+":9000")
		must(t, err, "listen udp on "+b.name)
		t.Cleanup(func() { pc.Close() })
		if u, ok := pc.(*net.UDPConn); ok {
			_ = u.SetReadBuffer(8 << 20)
		}
		go func(name string) {
			buf := make([]byte, 64)
			for {
				n, _, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				if n < 8 {
					continue
				}
				flow, seq := endian.BigEndian.Uint32(buf[0:4]), endian.BigEndian.Uint32(buf[4:8])
				if flow >= flows {
					continue
				}
				rx.mu.Lock()
				rx.seen[uint64(flow)<<32|uint64(seq)] = name
				rx.backend[flow][name] = true
				rx.mu.Unlock()
			}
		}(b.name)
	}

	d := runDaemonBin(t, netns.None(), old, cfg, l.dir)
	// Both services' backends: the web service's "backend up" for an
	// address says nothing of the stream service's (CI lost a flow's
	// first 270 datagrams, sent while stream had no backend in its
	// table yet). The table rebuild lands shortly after the log.
	for _, svc := range []string{"web", "stream"} {
		for _, b := range l.backends {
			d.waitLog(t, 0, 10*time.Second, map[string]string{"msg": "backend up", "service": svc, "backend": b.addr})
		}
	}
	time.Sleep(300 * time.Millisecond)
	progBefore := xdpProgID(t, "kbc")

	// Senders: one socket per flow, 5,000 datagrams/s in all.
	conns := make([]net.Conn, flows)
	for i := range conns {
		c, err := nslab.DialContext(l.client, time.Second)(context.Background(), "udp4", vip+":9000")
		must(t, err, "dial udp")
		t.Cleanup(func() { c.Close() })
		conns[i] = c
	}
	ctx, stop := context.WithCancel(context.Background())
	var sent [flows]uint32
	sending := make(chan struct{})
	go func() {
		defer close(sending)
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		msg := make([]byte, 8)
		for n := 0; ; n++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			for k := 0; k < 5; k++ {
				f := (n*5 + k) % flows
				endian.BigEndian.PutUint32(msg[0:4], uint32(f))
				endian.BigEndian.PutUint32(msg[4:8], sent[f])
				if _, err := conns[f].Write(msg); err == nil {
					sent[f]++
				}
			}
		}
	}()

	time.Sleep(time.Second)
	d.signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(20 * time.Second):
		t.Fatal("the old keepbitd did not stop")
	}
	time.Sleep(200 * time.Millisecond) // no daemon at all: the pinned program forwards
	nd := l.startDaemon(cfg)
	nd.waitLog(t, 0, 20*time.Second, map[string]string{"msg": "dataplane adopted"})
	// The adopted backends keep their state until their checks decide;
	// a second of checks by the new daemon, under load.
	time.Sleep(time.Second)
	if n := nd.count("backend down"); n > 0 {
		t.Errorf("the new keepbitd took %d backends down: %s", n, nd.dump())
	}
	stop()
	<-sending
	time.Sleep(300 * time.Millisecond) // the last datagrams in flight

	if after := xdpProgID(t, "kbc"); after == progBefore {
		t.Errorf("XDP program id %d unchanged: the new keepbitd did not replace the program", after)
	}
	rx.mu.Lock()
	defer rx.mu.Unlock()
	total, lost := 0, 0
	var firstLost []string
	for f := 0; f < flows; f++ {
		total += int(sent[f])
		for s := uint32(0); s < sent[f]; s++ {
			if _, ok := rx.seen[uint64(f)<<32|uint64(s)]; !ok {
				lost++
				if len(firstLost) < 10 {
					firstLost = append(firstLost, fmt.Sprintf("flow %d seq %d", f, s))
				}
			}
		}
		if len(rx.backend[f]) != 1 {
			t.Errorf("flow %d reached backends %v: the upgrade moved it", f, rx.backend[f])
		}
	}
	t.Logf("%d datagrams in %d flows across the upgrade, %d lost", total, flows, lost)
	if total < 5000 {
		t.Fatalf("only %d datagrams sent: the load did not run", total)
	}
	if lost > 0 {
		t.Fatalf("%d of %d datagrams lost across the upgrade (first: %v)", lost, total, firstLost)
	}
}

func xdpProgID(t *testing.T, iface string) uint32 {
	t.Helper()
	link, err := netlink.LinkByName(iface)
	must(t, err, "link "+iface)
	if x := link.Attrs().Xdp; x != nil && x.Attached {
		return x.ProgId
	}
	t.Fatalf("no XDP program on %s", iface)
	return 0
}
