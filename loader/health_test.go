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
	type step struct {
		hb, rx uint64
		alive  bool
	}
	for _, c := range []struct {
		name  string
		steps []step
	}{
		{"first sample", []step{{5, 9, true}}},
		{"traffic, program ran", []step{{5, 9, true}, {8, 12, true}, {9, 13, true}}},
		{"idle", []step{{5, 9, true}, {5, 9, true}, {5, 9, true}}},
		{"ran on packets counted earlier", []step{{5, 9, true}, {6, 9, true}}},
		// The flake CI saw: one packet run between a sample's two reads
		// shows in one counter now and in the other at the next sample.
		{"one packet between the reads, heartbeat first", []step{{5, 9, true}, {5, 10, true}, {6, 10, true}, {6, 10, true}}},
		{"one packet between the reads, rx first", []step{{5, 9, true}, {6, 9, true}, {6, 10, true}, {6, 10, true}}},
		{"stragglers apart, runs between", []step{{5, 9, true}, {5, 10, true}, {6, 10, true}, {6, 11, true}, {7, 11, true}}},
		{"two intervals of packets, no run", []step{{5, 9, true}, {5, 10, true}, {5, 11, false}}},
		{"many packets, no run", []step{{5, 9, true}, {5, 509, true}, {5, 1009, false}}},
		{"idle between stalled intervals", []step{{5, 9, true}, {5, 10, true}, {5, 10, true}, {5, 10, true}, {5, 12, false}}},
		{"idle after a stop, then packets without a run", []step{{5, 9, true}, {5, 10, true}, {5, 11, false}, {5, 11, true}, {5, 12, false}}},
		{"a run clears it", []step{{5, 9, true}, {5, 10, true}, {5, 11, false}, {6, 12, true}, {6, 13, true}}},
		{"rx counter went back (interface reset)", []step{{5, 9, true}, {5, 3, true}, {5, 3, true}}},
	} {
		var s aliveState
		for i, st := range c.steps {
			err := s.judge(aliveSample{heartbeat: st.hb, rx: st.rx})
			if (err == nil) != st.alive {
				t.Errorf("%s: sample %d (%d, %d): verdict %v, want alive=%v", c.name, i, st.hb, st.rx, err, st.alive)
			}
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
	expect("one interval of packets, no heartbeat", "") // no proof yet (aliveState)
	sendFrames(t, port+"p", 20)
	time.Sleep(100 * time.Millisecond)
	expect("two intervals of packets, no heartbeat", "heartbeat stopped")
	// Another caller right after (route health and VRRP tracking wake
	// together): its interval holds no packet, yet the answer stands.
	expect("a second caller at once", "heartbeat stopped")

	// Ours again: alive.
	d.progID = ours
	must(t, d.xdp.Update(d.objs.KeepbitXdp), "restore program")
	time.Sleep(aliveMinGap) // the last verdict answers until then
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
