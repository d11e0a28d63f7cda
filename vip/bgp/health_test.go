package bgp

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestHealth drives route health injection on a fake clock: each step is
// an input at a time and the decisions expected for the two VIPs.
func TestHealth(t *testing.T) {
	a, b := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")
	t0 := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	up := func(vips ...netip.Addr) map[netip.Addr]bool {
		m := map[netip.Addr]bool{}
		for _, v := range vips {
			m[v] = true
		}
		return m
	}
	type step struct {
		t    float64
		in   HealthInput
		want string  // decisions for a then b: "+" announced, else "-reason"
		next float64 // expected Deadline (seconds), -1 for none
	}
	ok := func(vips ...netip.Addr) HealthInput { return HealthInput{Usable: up(vips...), WarmedUp: true} }
	rising := func(r []netip.Addr, vips ...netip.Addr) HealthInput {
		in := ok(vips...)
		in.Rising = up(r...)
		return in
	}
	cases := []struct {
		name  string
		steps []step
	}{
		{"warm-up gates the first announcement, which is then immediate", []step{
			{0, HealthInput{Usable: up(a, b)}, "-warming up | -warming up", -1},
			{0.5, ok(a), "+ | -no usable backend", -1},
			{0.6, ok(a, b), "+ | +", -1}, // never announced before: no wait
		}},
		{"withdraw at once, announce after announce_after of continuous health", []step{
			{0, ok(a, b), "+ | +", -1},
			{2, ok(b), "-no usable backend | +", -1},
			{2.5, ok(a, b), "-waiting for announce_after (until 12:00:03.500) | +", 3.5},
			{3, ok(b), "-no usable backend | +", -1}, // the wait starts again
			{3.2, ok(a, b), "-waiting for announce_after (until 12:00:04.200) | +", 4.2},
			{4.2, ok(a, b), "+ | +", -1},
		}},
		{"flaps double the hold-down, capped, and a failure-free window forgives", []step{
			{0, ok(a), "+ | -no usable backend", -1},
			{1, ok(), "-no usable backend | -no usable backend", -1}, // flap 1
			{1, ok(a), "-waiting for announce_after (until 12:00:02.000) | -no usable backend", 2},
			{2, ok(a), "+ | -no usable backend", -1},
			{3, HealthInput{Usable: up(a), WarmedUp: true, DataplaneDown: "heartbeat stopped"}, "-dataplane: heartbeat stopped | -dataplane: heartbeat stopped", -1}, // flap 2
			{3.5, ok(a), "-holding down after flap (until 12:00:05.500) | -no usable backend", 5.5},
			{5.5, ok(a), "+ | -no usable backend", -1},
			{6, ok(), "-no usable backend | -no usable backend", -1}, // flap 3: 4s
			{6, ok(a), "-holding down after flap (until 12:00:10.000) | -no usable backend", 10},
			{10, ok(a), "+ | -no usable backend", -1},
			{11, ok(), "-no usable backend | -no usable backend", -1}, // flap 4: 8s (the cap)
			{11, ok(a), "-holding down after flap (until 12:00:19.000) | -no usable backend", 19},
			{19, ok(a), "+ | -no usable backend", -1},
			{20, ok(), "-no usable backend | -no usable backend", -1}, // flap 5: still 8s
			{20, ok(a), "-holding down after flap (until 12:00:28.000) | -no usable backend", 28},
			{28, ok(a), "+ | -no usable backend", -1},
			{88, ok(a), "+ | -no usable backend", -1}, // announced for the 60s window: forgiven
			{89, ok(), "-no usable backend | -no usable backend", -1},
			{89, ok(a), "-waiting for announce_after (until 12:01:30.000) | -no usable backend", 90},
		}},
		{"rising backends hold a withdrawn VIP up to rising_max; an announced one ignores them", []step{
			{0, rising([]netip.Addr{a, b}, a, b), "-waiting for backends coming up (until 12:00:05.000 at most) | -waiting for backends coming up (until 12:00:05.000 at most)", 5},
			{0.5, ok(a, b), "+ | +", -1}, // first announcement: no announce_after
			{1, ok(b), "-no usable backend | +", -1},
			{2, rising([]netip.Addr{a, b}, a, b), "-waiting for backends coming up (until 12:00:07.000 at most) | +", 7},
			{2.5, rising([]netip.Addr{a}, a, b), "-waiting for backends coming up (until 12:00:07.000 at most) | +", 7},
			{3, ok(a, b), "+ | +", -1},               // healthy since 2: announce_after is over
			{4, ok(b), "-no usable backend | +", -1}, // flap 2: 2s hold-down
			{4.5, rising([]netip.Addr{a}, a, b), "-waiting for backends coming up (until 12:00:09.500 at most) | +", 9.5},
			{9.5, rising([]netip.Addr{a}, a, b), "+ | +", -1}, // a check that never rises does not keep it out
		}},
		{"draining withdraws without counting a flap", []step{
			{0, ok(a, b), "+ | +", -1},
			{1, HealthInput{Usable: up(a, b), WarmedUp: true, Draining: true}, "-draining | -draining", -1},
			{2, HealthInput{Usable: up(a, b), WarmedUp: true, Draining: true, DataplaneDown: "not attached"}, "-dataplane: not attached | -dataplane: not attached", -1},
			{3, ok(a, b), "-waiting for announce_after (until 12:00:04.000) | -waiting for announce_after (until 12:00:04.000)", 4},
			{4, ok(a, b), "+ | +", -1},
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := NewHealth(HealthConfig{AnnounceAfter: time.Second, Window: time.Minute, MaxHoldDown: 8 * time.Second, RisingMax: 5 * time.Second}, t0, []netip.Addr{b, a})
			for i, s := range c.steps {
				ds := h.Update(at(s.t), s.in)
				var got []string
				for _, d := range ds {
					if d.Announce {
						got = append(got, "+")
					} else {
						got = append(got, "-"+d.Reason)
					}
				}
				want := at(s.next)
				if s.next < 0 {
					want = time.Time{}
				}
				if g := strings.Join(got, " | "); g != s.want || !h.Deadline().Equal(want) {
					t.Fatalf("step %d at %vs: got %q deadline %v\nwant %q deadline %v", i, s.t, g, h.Deadline(), s.want, want)
				}
			}
		})
	}
}

// TestHealthSinceAndReload: Since marks the last change; a VIP added by a
// reload starts as if just started, a kept one keeps its state.
func TestHealthSinceAndReload(t *testing.T) {
	a, c := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.3")
	t0 := time.Unix(1000, 0)
	h := NewHealth(HealthConfig{AnnounceAfter: time.Second, Window: time.Minute, MaxHoldDown: time.Minute}, t0, []netip.Addr{a})
	in := HealthInput{Usable: map[netip.Addr]bool{a: true, c: true}, WarmedUp: true}
	h.Update(t0.Add(time.Second), in)
	h.SetVIPs(t0.Add(2*time.Second), []netip.Addr{a, c})
	ds := h.Update(t0.Add(3*time.Second), in)
	got := fmt.Sprintf("%v %v %d; %v %v %d", ds[0].VIP, ds[0].Announce, ds[0].Since.Unix()-1000, ds[1].VIP, ds[1].Announce, ds[1].Since.Unix()-1000)
	if got != "192.0.2.1 true 1; 192.0.2.3 true 3" {
		t.Fatal(got)
	}
}
