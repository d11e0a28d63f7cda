package loader

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keepbit/keepbit/internal/privtest"
)

func TestAliveVerdict(t *testing.T) {
	for _, c := range []struct {
		name      string
		prev      *aliveSample
		cur       aliveSample
		wantAlive bool
	}{
		{"first sample", nil, aliveSample{heartbeat: 5, rx: 9}, true},
		{"traffic, program ran", &aliveSample{5, 9}, aliveSample{8, 12}, true},
		{"idle", &aliveSample{5, 9}, aliveSample{5, 9}, true},
		{"ran on packets counted earlier", &aliveSample{5, 9}, aliveSample{6, 9}, true},
		{"packets arrived, program did not run", &aliveSample{5, 9}, aliveSample{5, 10}, false},
		{"many packets, no run", &aliveSample{5, 9}, aliveSample{5, 1009}, false},
	} {
		err := aliveVerdict(c.prev, c.cur)
		if (err == nil) != c.wantAlive {
			t.Errorf("%s: verdict %v, want alive=%v", c.name, err, c.wantAlive)
		}
	}
}

// sendFrames puts n frames of an experimental EtherType (no IP: they go
// nowhere past the interface's stack) on the wire of the veth peer, so
// they arrive at port.
func sendFrames(t *testing.T, peer string, n int) {
	t.Helper()
	ifc, err := net.InterfaceByName(peer)
	must(t, err, "peer")
	const proto = 0x88b5 // IEEE 802 local experimental EtherType
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(proto)))
	must(t, err, "packet socket")
	defer unix.Close(fd)
	frame := append(append(append([]byte{}, lbMAC...), clientMAC...), 0x88, 0xb5)
	frame = append(frame, make([]byte, 46)...)
	sa := &unix.SockaddrLinklayer{Protocol: htons(proto), Ifindex: ifc.Index, Halen: 6}
	copy(sa.Addr[:], lbMAC)
	for range n {
		must(t, unix.Sendto(fd, frame, 0, sa), "send frame")
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// waitHeartbeat waits (generously) until the heartbeat reaches want.
func waitHeartbeat(t *testing.T, d *Dataplane, want uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		hb, err := d.Heartbeat()
		must(t, err, "heartbeat")
		if hb >= want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("heartbeat %d, want >= %d", hb, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestCheckAlive: alive with traffic and when idle; not alive when another
// program runs on the link, when the link is detached, or when packets
// arrive and the program attached does not count them in our heartbeat.
func TestCheckAlive(t *testing.T) {
	privtest.Require(t)
	root := tempPinRoot(t)
	port := attachedPort(t, root)
	d, err := Open(context.Background(), Options{Interface: port, PinRoot: root, HashSeed: 7})
	must(t, err, "open")
	t.Cleanup(func() { _ = d.Close() })
	ours := d.progID

	expect := func(step string, wantErr string) {
		t.Helper()
		err := d.CheckAlive()
		switch {
		case wantErr == "" && err != nil:
			t.Fatalf("%s: %v, want alive", step, err)
		case wantErr != "" && (err == nil || !strings.Contains(err.Error(), wantErr)):
			t.Fatalf("%s: %v, want an error about %q", step, err, wantErr)
		}
	}
	expect("first check", "")
	// The interface may still see stray link-local frames (the veth just
	// came up); these checks hold whatever arrives.
	expect("idle", "")
	hb0, err := d.Heartbeat()
	must(t, err, "heartbeat")
	sendFrames(t, port+"p", 20)
	waitHeartbeat(t, d, hb0+20)
	expect("after traffic", "")

	// Another program under our link: the link check says so.
	other := newLab(t) // a second keepbit program with maps of its own
	must(t, d.xdp.Update(other.dp.objs.KeepbitXdp), "replace program")
	expect("replaced", "not ours")

	// The program attached is "ours" but counts in other maps: packets
	// arrive, our heartbeat stands still.
	d.progID = other.dp.progID
	expect("baseline for frozen heartbeat", "")
	sendFrames(t, port+"p", 20)
	time.Sleep(100 * time.Millisecond)
	expect("packets, no heartbeat", "heartbeat stopped")

	// Ours again: alive.
	d.progID = ours
	must(t, d.xdp.Update(d.objs.KeepbitXdp), "restore program")
	expect("restored", "")
	sendFrames(t, port+"p", 5)
	waitHeartbeat(t, d, hb0+25)
	expect("restored, traffic", "")

	// The link detached from the interface (an operator's bpftool link
	// detach, the interface leaving): not alive.
	det, ok := d.xdp.(interface{ Detach() error })
	if !ok {
		t.Fatal("XDP link cannot be detached")
	}
	must(t, det.Detach(), "detach link")
	expect("detached", "detached")

	lab := newLab(t)
	if err := lab.dp.CheckAlive(); err == nil {
		t.Error("a dataplane that never attached is alive")
	}
}
