package control

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/loader"
	"github.com/keepbit/keepbit/probe"
)

// TestPassiveEjection: backends b1.. of a service with passive
// detection, driven by steps: "pN+"/"pN-" a check verdict, "sN:K" a
// counter reading of K retransmitted SYNs for backend N (its ID N),
// "iN:K" a reading under a new ID, "tD" time passing, "rN+"/"rN-" a probe
// result, "hN" backend N's hold over. want: dataplane states after the
// steps; acted: what b1's (or the named backend's) last passive event
// says.
func TestPassiveEjection(t *testing.T) {
	eject := &config.Passive{SynRetransmits: 5, Window: 2 * time.Second, Action: "eject", Hold: 10 * time.Second, MaxEjected: 1}
	flag := *eject
	flag.Action = "flag"
	up3 := "p1+ p2+ p3+ s1:0 s2:0 s3:0"
	cases := []struct {
		name  string
		cfg   config.Service
		n     int
		steps string
		want  string
		acted string // "bN: prefix" of the last passive-ejected event of bN
	}{
		{"below the threshold", config.Service{Passive: eject}, 3, up3 + " s1:4", "up up up", ""},
		{"ejected at the threshold", config.Service{Passive: eject}, 3, up3 + " s1:2 t100ms s1:5", "down up up", "b1: ejected: 5 retransmitted SYNs within 2s"},
		{"old retransmissions leave the window", config.Service{Passive: eject}, 3, up3 + " s1:3 t3s s1:6", "up up up", ""},
		{"a new ID starts from zero", config.Service{Passive: eject}, 3, up3 + " s1:3 i1:100 s1:101", "up up up", ""},
		{"action flag only reports", config.Service{Passive: &flag}, 3, up3 + " s1:9", "up up up", "b1: flagged"},
		{"back after hold and a passed check", config.Service{Passive: eject}, 3, up3 + " s1:9 r1+ h1 r1+", "up up up", "b1: ejected"},
		{"not back before hold", config.Service{Passive: eject}, 3, up3 + " s1:9 r1+ r1+ r1+", "down up up", "b1: ejected"},
		{"a failed probe restarts the count", config.Service{Passive: eject}, 3, up3 + " s1:9 h1 r1- ", "down up up", "b1: ejected"},
		{"max_ejected 1: the second stays", config.Service{Passive: eject}, 3, up3 + " s1:9 s2:9", "down up up",
			"b2: not ejected: 1 ejected by passive detection already (max_ejected 1)"},
		{"never the last usable backend", config.Service{Passive: eject}, 2, "p1+ p2+ s1:0 p2- s1:9", "up down", "b1: not ejected: the last usable backend"},
		{"panic threshold", config.Service{PanicThreshold: 50, Passive: eject}, 3, up3 + " p3- s1:9", "up up down",
			"b1: not ejected: 2 of 3 backends would be out, beyond the panic threshold of 50%"},
		{"failures elsewhere take the ejected one's capacity back", config.Service{Passive: eject}, 3, up3 + " s1:9 p2- p3-", "up down down", "b1: ejected"},
		{"a backend its check took down is left to it", config.Service{Passive: eject}, 3, up3 + " p1- s1:9", "down up up", ""},
		{"no passive section: nothing happens", config.Service{}, 3, "p1+ p2+ p3+", "up up up", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.cfg.Protocol = config.TCP
			ctl, s, held := fakeService(t, c.cfg, c.n)
			now := time.Now()
			ids := map[string]uint32{}
			for _, st := range strings.Fields(c.steps) {
				n := st[1:2]
				addr := netip.MustParseAddr("10.0.0." + n)
				switch st[0] {
				case 'p', 'r':
					ok := st[2] == '+'
					if st[0] == 'p' {
						to := probe.Down
						if ok {
							to = probe.Up
						}
						ctl.onProbe(probe.Event{Check: "web|" + addr.String(), To: to, Decide: now})
						continue
					}
					r := probe.Result{Check: "web|" + addr.String(), Start: now, Latency: time.Millisecond}
					if !ok {
						r.Err = fmt.Errorf("timeout")
					}
					ctl.passiveResult(r)
				case 's', 'i':
					k, err := strconv.ParseUint(st[3:], 10, 64)
					if err != nil {
						t.Fatal(err)
					}
					if ids[n] == 0 || st[0] == 'i' {
						ids[n] = uint32(len(ids)+1) * 100
					}
					now = now.Add(10 * time.Millisecond)
					ctl.passiveObserve("web", map[netip.Addr]loader.SynRetransmits{addr: {ID: ids[n], Count: k}}, now)
				case 't':
					d, err := time.ParseDuration(st[1:])
					if err != nil {
						t.Fatal(err)
					}
					now = now.Add(d)
				case 'h':
					ctl.mu.Lock()
					if p := s.backends[addr].passive; p != nil {
						p.since = p.since.Add(-c.cfg.Passive.Hold - time.Minute)
					}
					ctl.mu.Unlock()
				}
			}
			var got []string
			for _, addr := range s.order {
				if held[addr] != s.backends[addr].state {
					t.Errorf("%s: dataplane holds %s, controller thinks %s", addr, held[addr], s.backends[addr].state)
				}
				got = append(got, held[addr].String())
			}
			if g := strings.Join(got, " "); g != c.want {
				t.Fatalf("states %s, want %s\n%s", g, c.want, events(ctl))
			}
			if c.acted == "" {
				if strings.Contains(events(ctl), "passive-ejected") {
					t.Fatalf("unexpected passive-ejected event:\n%s", events(ctl))
				}
				return
			}
			who, want, _ := strings.Cut(c.acted, ": ")
			var acted string
			for _, e := range ctl.rec.Since(0) {
				if e.Kind == "passive-ejected" && e.Backend == "10.0.0."+who[1:] {
					acted = e.Reason
				}
			}
			if !strings.HasPrefix(acted, want) {
				t.Fatalf("%s's passive-ejected event says %q, want %q...\n%s", who, acted, want, events(ctl))
			}
		})
	}
}

// TestPassiveStatus: Status carries the counts and the verdict.
func TestPassiveStatus(t *testing.T) {
	ctl, s, _ := fakeService(t, config.Service{Protocol: config.TCP, Passive: &config.Passive{SynRetransmits: 3, Window: time.Second, Action: "eject", Hold: time.Second, MaxEjected: 1}}, 2)
	for _, addr := range s.order {
		ctl.onProbe(probe.Event{Check: "web|" + addr.String(), To: probe.Up, Decide: time.Now()})
	}
	b1 := s.order[0]
	now := time.Now()
	for i, k := range []uint64{10, 11, 14} {
		ctl.passiveObserve("web", map[netip.Addr]loader.SynRetransmits{b1: {ID: 7, Count: k}}, now.Add(time.Duration(i)*100*time.Millisecond))
	}
	ctl.mu.Lock()
	p := ctl.passivityLocked(s.backends[b1])
	ctl.mu.Unlock()
	if p == nil || !p.Ejected || p.Acted != "ejected" || p.Total != 4 || p.InWindow != 4 || p.Ejections != 1 {
		t.Fatalf("status of b1: %+v", p)
	}
}
