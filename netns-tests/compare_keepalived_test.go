package netnstests

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mdlayher/arp"

	"github.com/keepbit/keepbit/internal/connload"
	"github.com/keepbit/keepbit/internal/privtest"
)

// keepalived is keepalived's VRRP (VRRPv3) running in a node namespace of
// the two-node lab instead of keepbitd: the same VRID, priorities, advert
// interval and VIP.
type keepalived struct {
	cmd *exec.Cmd
	dir string
}

func keepalivedBin(t testing.TB) string {
	privtest.Require(t)
	bin, err := exec.LookPath("keepalived")
	if err != nil {
		t.Fatal("keepalived not installed: `make test-deps` installs it (apt-get install keepalived)")
	}
	return bin
}

// startKeepalived runs keepalived (VRRP only) on node n with priority
// prio. A master that hears a lower priority (the backup that took over
// while it was frozen) announces the VIP again (garp_lower_prio_repeat),
// so the client comes back to it as it does with Keepbit.
func (l *twoNode) startKeepalived(n *node, prio int) *keepalived {
	bin := keepalivedBin(l.root)
	dir := filepath.Join(n.dir, "keepalived")
	must(l.root, os.MkdirAll(dir, 0o700), "keepalived dir")
	conf := filepath.Join(dir, "keepalived.conf")
	cfg := fmt.Sprintf(`global_defs {
  vrrp_version 3
  vrrp_garp_master_repeat 3
}
vrrp_instance web {
  state BACKUP
  interface eth0
  virtual_router_id 68
  priority %d
  advert_int %s
  garp_lower_prio_repeat 3
  virtual_ipaddress {
    %s/32
  }
}
`, prio, strconv.FormatFloat(l.advert.Seconds(), 'f', -1, 64), vip2)
	must(l.root, os.WriteFile(conf, []byte(cfg), 0o644), "keepalived config")
	k := &keepalived{dir: dir}
	k.cmd = exec.Command(bin, "--dont-fork", "--log-console", "--vrrp", "--use-file", conf,
		"--pid", filepath.Join(dir, "k.pid"), "--vrrp_pid", filepath.Join(dir, "v.pid"))
	logf, err := os.Create(filepath.Join(dir, "keepalived.log"))
	must(l.root, err, "keepalived log")
	k.cmd.Stdout, k.cmd.Stderr = logf, logf
	k.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	must(l.root, privtest.InNS(n.ns, k.cmd.Start), "start keepalived")
	l.root.Cleanup(func() {
		k.signal(syscall.SIGCONT)
		k.signal(syscall.SIGKILL)
		_ = k.cmd.Wait()
		logf.Close()
	})
	return k
}

// signal signals keepalived's parent and its VRRP child: freezing only the
// parent would leave the child advertising.
func (k *keepalived) signal(s syscall.Signal) {
	if b, err := os.ReadFile(filepath.Join(k.dir, "v.pid")); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			_ = syscall.Kill(pid, s)
		}
	}
	_ = k.cmd.Process.Signal(s)
}

func (k *keepalived) log() string {
	b, _ := os.ReadFile(filepath.Join(k.dir, "keepalived.log"))
	return string(b)
}

// resolveVIP gives the client a neighbour entry for the VIP (a gratuitous
// ARP only updates an existing one): one connection attempt, refused or
// not.
func (l *twoNode) resolveVIP() {
	_ = privtest.InNS(l.client, func() error {
		c, err := net.DialTimeout("tcp", vip2+":9", 300*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return nil
	})
}

// takeoverRuns freezes the master runs times and measures, each time,
// until the client captures the backup's first gratuitous ARP for the
// VIP; then thaws it and waits for the client to be back on a.
func (l *twoNode) takeoverRuns(tb testing.TB, runs int, freeze, thaw func()) []time.Duration {
	garps := make(chan time.Time, 64)
	var c *arp.Client
	must(tb, privtest.InNS(l.client, func() error {
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		c, err = arp.Dial(ifi)
		return err
	}), "arp capture")
	defer c.Close()
	bMAC := l.nodes["b"].mac.String()
	go func() {
		for {
			p, _, err := c.Read()
			if err != nil {
				return
			}
			if p.SenderIP.String() == vip2 && p.SenderHardwareAddr.String() == bMAC {
				select {
				case garps <- time.Now():
				default:
				}
			}
		}
	}()
	var took []time.Duration
	for range runs {
		for len(garps) > 0 {
			<-garps
		}
		frozen := time.Now()
		freeze()
		select {
		case at := <-garps:
			took = append(took, at.Sub(frozen))
		case <-time.After(5 * time.Second):
			thaw()
			tb.Fatal("no gratuitous ARP from the backup within 5s")
		}
		thaw()
		l.waitClientOn("a", 5*time.Second)
		time.Sleep(5*l.advert + 100*time.Millisecond) // let the backup settle back
	}
	return took
}

// keepalivedTakeovers: keepalived on both nodes (a 200, b 100), runs
// freezes of a.
func keepalivedTakeovers(tb testing.TB, advert time.Duration, runs int) []time.Duration {
	l := newTwoNode(tb, advert)
	ka := l.startKeepalived(l.nodes["a"], 200)
	l.startKeepalived(l.nodes["b"], 100)
	l.resolveVIP()
	deadline := time.Now().Add(5 * time.Second)
	for l.vipMAC() != l.nodes["a"].mac.String() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		l.resolveVIP()
	}
	if l.vipMAC() != l.nodes["a"].mac.String() {
		tb.Fatalf("client not on keepalived's master a within 5s (entry %q); log:\n%s", l.vipMAC(), ka.log())
	}
	time.Sleep(5 * advert)
	return l.takeoverRuns(tb, runs, func() { ka.signal(syscall.SIGSTOP) }, func() { ka.signal(syscall.SIGCONT) })
}

// keepbitTakeovers: the same with keepbitd on both nodes (benchTakeover's
// set-up).
func keepbitTakeovers(tb testing.TB, advert time.Duration, runs int) []time.Duration {
	l := newTwoNode(tb, advert)
	da, db := l.start("a"), l.start("b")
	da.waitLog(tb, 0, 10*time.Second, vrrpMaster)
	db.waitLog(tb, 0, 10*time.Second, vrrpBackup)
	da.waitLog(tb, 0, 10*time.Second, map[string]string{"msg": "backend up"})
	l.served("before the runs")
	l.waitClientOn("a", 2*time.Second)
	return l.takeoverRuns(tb, runs, func() { da.signal(syscall.SIGSTOP) }, func() { da.signal(syscall.SIGCONT) })
}

// TestCompareKeepalivedHarness: keepalived takes the VIP over once from
// a frozen master and gives it back, as BenchmarkCompareTakeover runs it.
func TestCompareKeepalivedHarness(t *testing.T) {
	took := keepalivedTakeovers(t, 100*time.Millisecond, 1)
	// Master down after 3 adverts + skew (~360 ms); generous for a busy VM.
	if took[0] < 200*time.Millisecond || took[0] > 3*time.Second {
		t.Fatalf("keepalived took over after %v, want 0.2-3 s at 100 ms adverts", took[0])
	}
	t.Logf("keepalived took over after %v", took[0])
}

// BenchmarkCompareTakeover: keepalived VRRPv3 and Keepbit's VRRP at the
// same advert interval, master frozen (SIGSTOP) 20 times each: time until
// the client captures the backup's gratuitous ARP for the VIP.
func BenchmarkCompareTakeover(b *testing.B) {
	const runs = 20
	for _, advert := range []time.Duration{100 * time.Millisecond, 10 * time.Millisecond} {
		b.Run(advert.String(), func(b *testing.B) {
			for b.Loop() {
				k := keepalivedTakeovers(b, advert, runs)
				kb := keepbitTakeovers(b, advert, runs)
				ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
				pct := func(ds []time.Duration, q float64) time.Duration { return percentile(ds, q) }
				b.ReportMetric(ms(pct(k, .5)), "keepalived-p50-ms")
				b.ReportMetric(ms(pct(k, .99)), "keepalived-p99-ms")
				b.ReportMetric(ms(pct(kb, .5)), "keepbit-p50-ms")
				b.ReportMetric(ms(pct(kb, .99)), "keepbit-p99-ms")
				b.ReportMetric(float64(pct(k, .5))/float64(pct(kb, .5)), "ratio-p50")
				b.ReportMetric(float64(pct(k, .99))/float64(pct(kb, .99)), "ratio-p99")
				b.Logf("\nadvert %v, %d freezes each: gratuitous ARP of the backup at the client\n"+
					"| VRRP | p50 | p99 | min | max |\n|---|---|---|---|---|\n"+
					"| keepalived %s | %v | %v | %v | %v |\n| Keepbit | %v | %v | %v | %v |\n"+
					"| ratio keepalived/Keepbit | %.2f | %.2f | | |\n",
					advert, runs, keepalivedVersion(),
					pct(k, .5), pct(k, .99), pct(k, 0), pct(k, 1),
					pct(kb, .5), pct(kb, .99), pct(kb, 0), pct(kb, 1),
					float64(pct(k, .5))/float64(pct(kb, .5)), float64(pct(k, .99))/float64(pct(kb, .99)))
			}
		})
	}
}

func percentile(ds []time.Duration, q float64) time.Duration {
	if q == 0 {
		m := ds[0]
		for _, d := range ds {
			m = min(m, d)
		}
		return m
	}
	return connload.Percentile(ds, q)
}

func keepalivedVersion() string {
	out, _ := exec.Command("keepalived", "--version").CombinedOutput()
	f := strings.Fields(string(out))
	if len(f) >= 2 {
		return f[1]
	}
	return "?"
}
