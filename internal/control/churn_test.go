package control

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keepbit/keepbit/loader"
	"github.com/keepbit/keepbit/probe"
)

// churnService is one service the churn test may configure, with the
// backends it may have; the first core of them are in every config.
type churnService struct {
	name, vip, proto string
	port             int
	net              string // backends are net.1 .. net.n
	n, core          int
	policy           string // extra YAML for the service
	always           bool
}

var churnServices = []churnService{
	{name: "web", vip: "10.99.0.1", proto: "tcp", port: 80, net: "10.1.0", n: 8, core: 4, always: true},
	{name: "api", vip: "10.99.0.1", proto: "tcp", port: 8080, net: "10.2.0", n: 6,
		policy: "    panic_threshold: 50\n    passive: {syn_retransmits: 3, window: 1s, hold: 1s, max_ejected: 2}\n"},
	{name: "dns", vip: "10.99.0.2", proto: "udp", port: 53, net: "10.3.0", n: 5, policy: "    when_all_down: keep-last\n    check: {type: tcp}\n"},
}

func (cs churnService) addr(i int) netip.Addr {
	return netip.MustParseAddr(fmt.Sprintf("%s.%d", cs.net, i+1))
}

// churnConfig draws one config: web always (its core backends always),
// the others sometimes, backends and weights at random.
func churnConfig(rng *rand.Rand) string {
	var b strings.Builder
	for _, cs := range churnServices {
		if !cs.always && rng.IntN(10) < 3 {
			continue
		}
		fmt.Fprintf(&b, "  - name: %s\n    vip: %s\n    port: %d\n    protocol: %s\n%s    backends:\n", cs.name, cs.vip, cs.port, cs.proto, cs.policy)
		some := false
		for i := range cs.n {
			if i >= cs.core && rng.IntN(2) == 0 && (some || i < cs.n-1) {
				continue
			}
			some = true
			fmt.Fprintf(&b, "      - {address: %s, mac: \"02:00:00:%02x:00:%02x\", weight: %d}\n", cs.addr(i), len(cs.net), i+1, 1+rng.IntN(3))
		}
	}
	return b.String()
}

// TestControlPlaneChurn hammers one controller on a real dataplane with
// everything at once for a bounded time: probe verdicts (synthetic events
// through the event path), reloads between random configs (services and
// backends come and go, weights change), operator overrides (disable,
// drain, enable) and readers (Status, Services, Stats, Flows). Run it
// with -race. When all is quiet it checks that: the dataplane holds
// exactly the last config's services and backends; every backend is
// settled (what the policies demand of its health and override is what
// the controller believes, and what the dataplane holds); and the core
// backends of web, which every config has, hold what their last verdict
// and last override demand. KEEPBIT_CHURN_SEED repeats a run's choices
// (the interleaving is the scheduler's).
func TestControlPlaneChurn(t *testing.T) {
	l := newCtlLab(t)
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("KEEPBIT_CHURN_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("KEEPBIT_CHURN_SEED: %v", err)
		}
		seed = v
	}
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	var cfgs []string
	for range 8 {
		cfgs = append(cfgs, churnConfig(rng))
	}
	c := l.start(l.config(cfgs[0]))
	web := churnServices[0]
	lastVerdict := map[netip.Addr]bool{}
	lastAdmin := map[netip.Addr]Admin{}
	for i := range web.core {
		verdict(c, "web", web.addr(i), true)
		lastVerdict[web.addr(i)] = true
	}

	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Second)
	defer cancel()
	var reloads, verdicts, ops, reads int
	var wg sync.WaitGroup
	wg.Go(func() { // reloads
		r := rand.New(rand.NewPCG(seed, 2))
		for ctx.Err() == nil {
			if err := c.Reload(context.Background(), l.config(cfgs[r.IntN(len(cfgs))])); err != nil {
				t.Errorf("reload: %v", err)
				return
			}
			reloads++
		}
	})
	wg.Go(func() { // the event loop: verdicts
		// Like the scheduler, it reports changes only: a check's verdict
		// flips (a repeated verdict would re-settle the backend and hide
		// a backend left unsettled).
		r := rand.New(rand.NewPCG(seed, 3))
		sent := map[netip.Addr]bool{}
		for i := range web.core {
			sent[web.addr(i)] = true
		}
		for ctx.Err() == nil {
			cs := churnServices[r.IntN(len(churnServices))]
			i := r.IntN(cs.n)
			up := !sent[cs.addr(i)]
			sent[cs.addr(i)] = up
			verdict(c, cs.name, cs.addr(i), up)
			if cs.name == "web" && i < web.core {
				lastVerdict[cs.addr(i)] = up
			}
			verdicts++
			if verdicts%16 == 0 {
				time.Sleep(100 * time.Microsecond)
			}
		}
	})
	wg.Go(func() { // the operator
		r := rand.New(rand.NewPCG(seed, 4))
		for ctx.Err() == nil {
			cs := churnServices[r.IntN(len(churnServices))]
			i, a := r.IntN(cs.n), []Admin{Enabled, Disabled, Draining}[r.IntN(3)]
			err := c.SetAdmin(cs.name, cs.addr(i), a)
			if cs.name == "web" && i < web.core {
				if err != nil {
					t.Errorf("set %s %s: %v", cs.addr(i), a, err)
				}
				lastAdmin[cs.addr(i)] = a
			}
			ops++
			time.Sleep(time.Millisecond)
		}
	})
	var passives int
	wg.Go(func() { // passive detection: counter readings and probe results for api
		r := rand.New(rand.NewPCG(seed, 5))
		api := churnServices[1]
		counts := map[netip.Addr]loader.SynRetransmits{}
		for ctx.Err() == nil {
			i := r.IntN(api.n)
			a := api.addr(i)
			cnt := counts[a]
			switch r.IntN(8) {
			case 0: // the ID was given to another backend: counts restart
				cnt = loader.SynRetransmits{ID: uint32(r.IntN(1000) + 1)}
			default:
				cnt.Count += uint64(r.IntN(3))
			}
			counts[a] = cnt
			c.passiveObserve(api.name, counts, time.Now())
			res := probe.Result{Check: api.name + "|" + a.String(), Start: time.Now(), Latency: time.Millisecond}
			if r.IntN(3) == 0 {
				res.Err = fmt.Errorf("timeout")
			}
			c.passiveResult(res)
			passives++
			time.Sleep(200 * time.Microsecond)
		}
	})
	var rmu sync.Mutex
	for range 2 { // API and metrics readers
		wg.Go(func() {
			for ctx.Err() == nil {
				_ = c.Status()
				for _, dp := range c.dataplanes() {
					_ = dp.Services()
					if _, err := dp.Stats(); err != nil {
						t.Errorf("stats: %v", err)
					}
					if _, err := dp.Flows(0); err != nil {
						t.Errorf("flows: %v", err)
					}
				}
				rmu.Lock()
				reads++
				rmu.Unlock()
				time.Sleep(500 * time.Microsecond) // scrapes and API calls come and go
			}
		})
	}
	wg.Wait()
	t.Logf("%d reloads, %d verdicts, %d operator commands, %d passive readings, %d reader rounds", reloads, verdicts, ops, passives, reads)
	for _, dp := range c.dataplanes() {
		if err := dp.Sync(); err != nil {
			t.Fatal(err)
		}
	}

	// The dataplane serves exactly the last config.
	got := held(t, c)
	want := map[string][]netip.Addr{}
	c.mu.Lock()
	last := c.cfg
	c.mu.Unlock()
	for _, s := range last.Services {
		for _, b := range s.Backends {
			want[s.Name] = append(want[s.Name], b.Address)
		}
	}
	if g, w := slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)); !slices.Equal(g, w) {
		t.Fatalf("dataplane serves %v, the last config has %v", g, w)
	}
	for name, addrs := range want {
		if g := slices.SortedFunc(maps.Keys(got[name]), netip.Addr.Compare); !slices.Equal(g, slices.SortedFunc(slices.Values(addrs), netip.Addr.Compare)) {
			t.Errorf("service %s: dataplane has backends %v, config %v", name, g, addrs)
		}
	}

	// Every backend is settled, and the controller agrees with the dataplane.
	c.mu.Lock()
	for name, s := range c.svcs {
		for _, addr := range s.order {
			b := s.backends[addr]
			if got[name][addr] != b.state {
				t.Errorf("%s %s: dataplane holds %s, controller believes %s", name, addr, got[name][addr], b.state)
			}
			if w, _, reason := c.desiredLocked(b); w != b.state {
				t.Errorf("%s %s: holds %s, but health %s and admin %q demand %s (%s): not settled", name, addr, b.state, b.health, b.admin, w, reason)
			}
		}
	}
	c.mu.Unlock()

	// web's core backends hold what their last verdict and override say.
	for i := range web.core {
		a := web.addr(i)
		exp := loader.Down
		switch {
		case lastAdmin[a] == Disabled:
		case lastAdmin[a] == Draining:
			exp = loader.Draining
		case lastVerdict[a]:
			exp = loader.Up
		}
		if got["web"][a] != exp {
			t.Errorf("web %s: dataplane holds %s; last verdict up=%v, last override %q demand %s", a, got["web"][a], lastVerdict[a], lastAdmin[a], exp)
		}
	}
}
