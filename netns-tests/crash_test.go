package netnstests

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/api"
)

// crashPlan is one round of TestCrashRestart: the config keepbitd is
// reloaded to right before it is killed, and what happens to one backend.
type crashPlan struct {
	withB1  bool   // web lists b1 (b2 always)
	weights [2]int // web's weights for b1, b2
	alt     bool   // the second service (port 8080, b2) is configured
	action  string // "", "stop" (X's server dies) or "disable" (operator)
	x       int    // index of the backend the action names
}

// crashConfig writes the lab config of plan p and returns its path.
func (l *lab) crashConfig(p crashPlan) string {
	var b strings.Builder
	b.WriteString(l.configHead())
	if p.withB1 {
		fmt.Fprintf(&b, "      - {address: 10.71.1.2, port: kb1, weight: %d}\n", p.weights[0])
	}
	fmt.Fprintf(&b, "      - {address: 10.71.2.2, port: kb2, weight: %d}\n", p.weights[1])
	if p.alt {
		fmt.Fprintf(&b, "  - name: alt\n    vip: %s\n    port: 8080\n    backends:\n      - {address: 10.71.2.2, port: kb2}\n", vip)
	}
	return l.putConfig(b.String())
}

// members are the lab backend indexes web lists under p.
func (p crashPlan) members() []int {
	if p.withB1 {
		return []int{0, 1}
	}
	return []int{1}
}

// TestCrashRestart kills keepbitd with SIGKILL at a random moment (0-50 ms)
// while a reload and a health verdict are in flight, restarts it on the
// config it was reloading to (adopting the pinned dataplane and the
// overrides in node.state_dir), and checks after each restart that the
// VIP is answered only by usable backends of that config: none by a
// removed backend, none by one whose server died once it is marked down,
// none by one the operator disabled before the kill.
func TestCrashRestart(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("KEEPBIT_CRASH_SEED"); s != "" {
		_, _ = fmt.Sscan(s, &seed)
	}
	t.Logf("seed %d (KEEPBIT_CRASH_SEED to replay)", seed)
	rng := rand.New(rand.NewPCG(seed, 0))

	l := newLab(t)
	l.backends[1].serve(t, 8080)
	cur := crashPlan{withB1: true, weights: [2]int{1, 1}}
	d := l.startDaemonUp(l.crashConfig(cur))
	start := time.Now()
	const rounds = 12
	midReload := 0 // rounds whose kill came before the reload was done

	for round := range rounds {
		next := crashPlan{withB1: rng.IntN(3) > 0, weights: [2]int{1 + rng.IntN(3), 1 + rng.IntN(3)}, alt: rng.IntN(2) == 0}
		if next.withB1 {
			switch rng.IntN(3) {
			case 0:
				next.action, next.x = "stop", rng.IntN(2)
			case 1:
				// The operator names a backend the running config has.
				next.action, next.x = "disable", 1
				if cur.withB1 && rng.IntN(2) == 0 {
					next.x = 0
				}
			}
		}
		// A reload takes a few ms here: half the kills within 8 ms so
		// that some land inside it, the rest anywhere up to 50 ms.
		delay := time.Duration(rng.IntN(51)) * time.Millisecond
		if rng.IntN(2) == 0 {
			delay = time.Duration(rng.IntN(8001)) * time.Microsecond
		}
		t.Logf("round %d: %+v, kill after %v", round, next, delay)
		xAddr := ""
		if next.action != "" {
			xAddr = l.backends[next.x].addr
		}

		if next.action == "disable" {
			if out, err := l.ctl("disable", "web", xAddr); err != nil {
				t.Fatalf("round %d: disable %s: %v\n%s", round, xAddr, err, out)
			}
		}
		if next.action == "stop" {
			// Its down verdict (fall 2 x 50 ms) lands around the kill.
			l.backends[next.x].stop(80)
			time.Sleep(time.Duration(rng.IntN(151)) * time.Millisecond)
		}
		cfg := l.crashConfig(next)
		d.signal(syscall.SIGHUP)
		time.Sleep(delay)
		d.signal(syscall.SIGKILL)
		<-d.done
		if d.count("config reloaded") == 0 {
			midReload++
		}

		d = l.startDaemon(cfg)
		d.waitLog(t, 0, 5*time.Second, map[string]string{"msg": "dataplane ready", "adopted": "true"})
		d.waitLog(t, 0, 5*time.Second, map[string]string{"msg": "keepbitd running"})
		// Right away, before any check has run: never a removed or a
		// disabled backend (the pinned tables and the saved override are
		// in force; a dead server may still cost a failed request).
		if got, _ := l.spread(80, 10); (!next.withB1 && got["b1:80"] != 0) ||
			(next.action == "disable" && got[l.backends[next.x].name+":80"] != 0) {
			t.Fatalf("round %d (%+v): right after the restart %v answered\n%s", round, next, got, l.servicesText())
		}
		l.waitSettled(t, round, next)

		// New connections: only usable members of the current config.
		want := map[string]bool{}
		for _, i := range next.members() {
			if next.action == "" || i != next.x {
				want[l.backends[i].name+":80"] = true
			}
		}
		got, failed := l.spread(80, 20)
		for who := range got {
			if !want[who] {
				t.Fatalf("round %d (%+v): answers %v, %d failed; %s is not a usable backend of the config (want only %v)\n%s",
					round, next, got, failed, who, want, l.servicesText())
			}
		}
		if failed != 0 {
			t.Fatalf("round %d: answers %v, %d failed", round, got, failed)
		}
		body, err := l.get(8080)
		switch {
		case next.alt && (err != nil || body != "b2:8080"):
			t.Fatalf("round %d: alt configured, :8080 answered %q, %v", round, body, err)
		case !next.alt && err == nil:
			t.Fatalf("round %d: alt removed, :8080 still answered %q", round, body)
		}
		if next.action == "disable" {
			if out := l.servicesText(); !strings.Contains(out, "disabled") {
				t.Fatalf("round %d: the disable of %s is gone after the restart:\n%s", round, xAddr, out)
			}
		}

		// Undo the action under the new daemon, for the next round.
		from := d.mark()
		switch next.action {
		case "stop":
			l.backends[next.x].serve(t, 80)
		case "disable":
			if out, err := l.ctl("enable", "web", xAddr); err != nil {
				t.Fatalf("round %d: enable %s: %v\n%s", round, xAddr, err, out)
			}
		}
		if next.action != "" {
			d.waitLog(t, from, 5*time.Second, map[string]string{"msg": "backend up", "service": "web", "backend": xAddr})
		}
		next.action = ""
		cur = next
	}
	t.Logf("%d rounds in %v, %d killed before the reload was done", rounds, time.Since(start).Round(time.Millisecond), midReload)
}

// waitSettled waits until keepbitd's status for web is what plan p
// demands: the stopped backend down, the disabled one disabled and down,
// the others up; alt listed iff configured.
func (l *lab) waitSettled(t *testing.T, round int, p crashPlan) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	last := ""
	for time.Now().Before(deadline) {
		out, err := l.ctl("-o", "json", "services")
		last = out
		var svcs []api.Service
		if err == nil && json.Unmarshal([]byte(out), &svcs) == nil && settled(l, svcs, p) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("round %d: status never settled to %+v:\n%s", round, p, last)
}

func settled(l *lab, svcs []api.Service, p crashPlan) bool {
	byName := map[string]api.Service{}
	for _, s := range svcs {
		byName[s.Name] = s
	}
	if _, ok := byName["alt"]; ok != p.alt {
		return false
	}
	if p.alt && (len(byName["alt"].ServiceStatus.Backends) != 1 || byName["alt"].ServiceStatus.Backends[0].State != "up") {
		return false
	}
	web := byName["web"]
	if len(web.ServiceStatus.Backends) != len(p.members()) {
		return false
	}
	for _, b := range web.ServiceStatus.Backends {
		i := 1
		if b.Address == l.backends[0].addr {
			i = 0
		}
		want, admin := "up", ""
		if p.action != "" && i == p.x {
			want = "down"
			if p.action == "disable" {
				admin = "disabled"
			}
		}
		if b.State != want || b.Admin != admin {
			return false
		}
	}
	return true
}

func (l *lab) servicesText() string {
	out, err := l.ctl("services")
	if err != nil {
		return fmt.Sprintf("services: %v\n%s", err, out)
	}
	return out
}
