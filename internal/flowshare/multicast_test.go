package flowshare

import (
	"context"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/keepbit/keepbit/internal/privtest"
)

// TestMain: as root, the tests run in a private network namespace (the
// multicast test changes lo's flags there); the loopback tests need no root.
func TestMain(m *testing.M) { os.Exit(privtest.Main(m)) }

// TestMulticast: a node in multicast mode sends its flows to the group on
// the configured interface, skips its own looped-back datagrams by node
// ID, and (not knowing the group's members) warms up for the full timeout.
func TestMulticast(t *testing.T) {
	privtest.Require(t)
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetMulticastOn(lo); err != nil {
		t.Fatal(err)
	}
	group := netip.MustParseAddrPort("239.255.77.85:7785")
	// A member of the group that is not a Node: it sees what goes on the wire.
	member, err := net.ListenMulticastUDP("udp4", &net.Interface{Index: lo.Attrs().Index, Name: "lo"}, net.UDPAddrFromAddrPort(group))
	if err != nil {
		t.Fatal(err)
	}
	defer member.Close()
	const timeout = 300 * time.Millisecond
	a := newNode(t, Options{Listen: netip.AddrPort{}, Multicast: group, Interface: "lo", WarmupTimeout: timeout, Snapshot: sliceSnapshot(testFlows(5, 1))})
	start := time.Now()
	run(t, a)
	want := testFlows(40, 12)
	a.Submit(want)
	c := testCodec(t)
	var got []Flow
	buf := make([]byte, 2048)
	member.SetReadDeadline(time.Now().Add(10 * time.Second))
	for len(got) < len(want) {
		n, err := member.Read(buf)
		if err != nil {
			t.Fatalf("member: %v (got %d flows)", err, len(got))
		}
		var m Message
		if err := c.Decode(buf[:n], &m); err != nil {
			t.Fatal(err)
		}
		if m.Node != a.ID() {
			t.Fatalf("datagram from node %x", m.Node)
		}
		if m.Type == TypeFlows {
			got = append(got, m.Flows...)
		}
	}
	if !sameFlows(got, want) {
		t.Errorf("the group got %d flows, not the ones submitted", len(got))
	}
	rep, err := a.WaitWarm(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); !rep.TimedOut || took < timeout || len(rep.Missing) != 0 {
		t.Errorf("warm-up %+v after %v: want the full timeout, nobody missing (members unknown)", rep, took)
	}
	eventually(t, "own datagrams skipped", func() bool { return a.Stats().Own >= 2 }) // its sync request and its flows
	if st := a.Stats(); st.Received != 0 || st.Rejected != (Rejects{}) || st.SyncAnswers != 0 {
		t.Errorf("a took its own datagrams: %+v", st)
	}
}
