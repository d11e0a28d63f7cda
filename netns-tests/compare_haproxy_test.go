package netnstests

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/keepbit/keepbit/internal/connload"
	nslab "github.com/keepbit/keepbit/internal/lab"
	"github.com/keepbit/keepbit/internal/privtest"
)

// The comparisons run Keepbit and HAProxy one after the other in the same
// lab (newLab: client -- LB -- b1, b2): the same backends, the same client
// and the same check settings. HAProxy listens on the LB's own address
// (lbAddr), Keepbit forwards the VIP (DSR).
const (
	lbAddr   = "10.70.0.1"
	cmpPort  = 7000                  // connload backends, for the kill comparison
	cmpInter = 50 * time.Millisecond // check interval of both
	cmpFall  = 2                     // and fall (rise 2)
)

// haproxyBin is the haproxy binary; as root a missing one fails the test
// (`make test-deps` installs it), as keepalived's tests do.
func haproxyBin(t testing.TB) string {
	privtest.Require(t)
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		t.Fatal("haproxy not installed: `make test-deps` installs it (apt-get install haproxy)")
	}
	return bin
}

// haproxy is a running HAProxy in the LB namespace whose stderr (server
// state changes) is kept with arrival times.
type haproxy struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	log  []logLine
	done chan struct{}
}

type logLine struct {
	at   time.Time
	text string
}

// haproxyConfig: TCP mode, round robin, checks equal to Keepbit's
// (inter cmpInter, fall cmpFall, rise 2), option redispatch, retries 3.
func haproxyConfig() string {
	ms := cmpInter.Milliseconds()
	return fmt.Sprintf(`global
  maxconn 4000
defaults
  mode tcp
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  timeout check %dms
  option redispatch
  retries 3
frontend kill
  bind %s:%d
  default_backend kill
backend kill
  balance roundrobin
  server b1 10.71.1.2:%d check inter %dms fall %d rise 2
  server b2 10.71.2.2:%d check inter %dms fall %d rise 2
frontend web
  bind %s:80
  default_backend web
backend web
  balance roundrobin
  server b1 10.71.1.2:80
  server b2 10.71.2.2:80
`, ms-10, lbAddr, cmpPort, cmpPort, ms, cmpFall, cmpPort, ms, cmpFall, lbAddr)
}

// startHAProxy runs haproxy in the foreground in this (the LB) namespace
// and waits until both kill backends are up.
func startHAProxy(t testing.TB, dir string) *haproxy {
	bin := haproxyBin(t)
	cfg := filepath.Join(dir, "haproxy.cfg")
	must(t, os.WriteFile(cfg, []byte(haproxyConfig()), 0o600), "haproxy config")
	h := &haproxy{cmd: exec.Command(bin, "-db", "-f", cfg), done: make(chan struct{})}
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := h.cmd.StderrPipe()
	must(t, err, "haproxy stderr")
	h.cmd.Stdout = h.cmd.Stderr
	must(t, privtest.InNS(netns.None(), h.cmd.Start), "start haproxy")
	go func() {
		defer close(h.done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			h.mu.Lock()
			h.log = append(h.log, logLine{time.Now(), sc.Text()})
			h.mu.Unlock()
		}
		_ = h.cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = h.cmd.Process.Kill()
		<-h.done
	})
	// The first checks must pass for both servers before traffic.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := dialOK(lbAddr, cmpPort); err == nil && c {
			time.Sleep(3 * cmpInter * 2)
			return h
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("haproxy does not forward within 5s; log:\n%s", h.dump())
	return nil
}

func dialOK(addr string, port int) (bool, error) {
	// From the LB namespace itself: enough to know haproxy listens.
	l, err := connload.Start(context.Background(), connload.Config{Target: fmt.Sprintf("%s:%d", addr, port), Conns: 1, Timeout: 500 * time.Millisecond})
	if err != nil {
		return false, err
	}
	l.Stop()
	return true, nil
}

func (h *haproxy) mark() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.log)
}

func (h *haproxy) dump() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var b strings.Builder
	for _, l := range h.log {
		fmt.Fprintf(&b, "%s %s\n", l.at.Format("15:04:05.000"), l.text)
	}
	return b.String()
}

// waitLine waits for a line from position from on containing s and
// returns when it arrived.
func (h *haproxy) waitLine(t testing.TB, from int, within time.Duration, s string) time.Time {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		h.mu.Lock()
		for _, l := range h.log[min(from, len(h.log)):] {
			if strings.Contains(l.text, s) {
				h.mu.Unlock()
				return l.at
			}
		}
		h.mu.Unlock()
		select {
		case <-h.done:
			t.Fatalf("haproxy exited waiting for %q; log:\n%s", s, h.dump())
		case <-time.After(2 * time.Millisecond):
		}
	}
	t.Fatalf("haproxy logged no %q within %v; log:\n%s", s, within, h.dump())
	return time.Time{}
}

// cmpLab is the lab with connload servers on cmpPort in both backends.
type cmpLab struct {
	*lab
	mu  sync.Mutex
	srv map[string]*connload.Server // by backend name
}

func newCmpLab(t testing.TB) *cmpLab {
	l := &cmpLab{lab: newLab(t), srv: map[string]*connload.Server{}}
	for _, b := range l.backends {
		l.listen(b)
	}
	t.Cleanup(func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, s := range l.srv {
			s.Close()
		}
	})
	return l
}

func (l *cmpLab) listen(b *backendNS) {
	s, err := connload.Listen(b.ns, fmt.Sprintf(":%d", cmpPort), b.name)
	must(l.t, err, "connload server "+b.name)
	l.mu.Lock()
	l.srv[b.name] = s
	l.mu.Unlock()
}

func (l *cmpLab) kill(b *backendNS) {
	l.mu.Lock()
	s := l.srv[b.name]
	l.mu.Unlock()
	s.Close()
}

// keepbitCmpConfig: the kill service (TCP check, cmpInter, fall cmpFall,
// rise 2, no jitter: HAProxy's checks have none) and the web service.
func (l *cmpLab) keepbitCmpConfig() string {
	return l.putConfig(fmt.Sprintf(`node: {hash_seed: 7, pin_root: %[1]s/bpf, state_dir: %[1]s/state}
interfaces: [{name: kbc}]
api: {socket: %[1]s/keepbit.sock}
metrics: {listen: "off"}
log: {format: json, level: debug}
services:
  - name: kill
    vip: %[2]s
    port: %[3]d
    check: {type: tcp, interval: %[4]s, timeout: %[5]s, rise: 2, fall: %[6]d, jitter: 0}
    backends: [{address: 10.71.1.2, port: kb1}, {address: 10.71.2.2, port: kb2}]
  - name: web
    vip: %[2]s
    port: 80
    check: {type: tcp, interval: 1s, timeout: 500ms, rise: 1, fall: 2}
    backends: [{address: 10.71.1.2, port: kb1}, {address: 10.71.2.2, port: kb2}]
`, l.dir, vip, cmpPort, cmpInter, cmpInter-10*time.Millisecond, cmpFall))
}

// waitKeepbitUp waits until keepbitd has both backends of both services up.
func (l *cmpLab) waitKeepbitUp(t testing.TB, d *daemon) {
	for _, svc := range []string{"kill", "web"} {
		for _, b := range l.backends {
			d.waitLog(t, 0, 5*time.Second, map[string]string{"msg": "backend up", "service": svc, "backend": b.addr})
		}
	}
}

// newConn is one new connection of the client's stream.
type newConn struct {
	start, end time.Time
	backend    string // "" failed
}

// killRun is what one backend kill did to the client.
type killRun struct {
	detect time.Duration // kill to the LB marking the backend down
	gap    time.Duration // kill to the end of the last disturbed new connection (0: none)
	failed int           // new connections that failed
	slow   int           // new connections that succeeded but took > slowConn
}

const slowConn = 50 * time.Millisecond // a new connection takes < 5 ms here

// lbKill drives one load balancer through the kills.
type lbKill struct {
	name     string
	target   string
	waitDown func(b *backendNS, from int) time.Time
	waitUp   func(b *backendNS, from int)
	mark     func() int
}

// killRuns kills a backend's server runs times (alternating backends)
// under a new connection every ms and 4 long-lived connections,
// restoring it and waiting for it to be up again between kills.
func (l *cmpLab) killRuns(t testing.TB, lb lbKill, runs int) ([]killRun, connload.Report) {
	var mu sync.Mutex
	var conns []newConn
	load, err := connload.Start(context.Background(), connload.Config{
		Target: lb.target, Dial: nslab.DialContext(l.client, time.Second), Conns: 4, Rate: 1000,
		OnNew: func(start, end time.Time, backend string) {
			mu.Lock()
			conns = append(conns, newConn{start, end, backend})
			mu.Unlock()
		},
	})
	must(t, err, lb.name+": client load")
	time.Sleep(300 * time.Millisecond)
	var out []killRun
	for i := range runs {
		b := l.backends[i%2]
		from := lb.mark()
		kill := time.Now()
		l.kill(b)
		down := lb.waitDown(b, from)
		// HAProxy retries a refused connection after a turn-around of
		// min(timeout connect, 1s): wait for those to end.
		time.Sleep(1300 * time.Millisecond)
		r := killRun{detect: down.Sub(kill)}
		mu.Lock()
		for _, c := range conns {
			if c.start.Before(kill.Add(-10*time.Millisecond)) || c.start.After(down.Add(time.Second)) {
				continue
			}
			bad := c.backend == ""
			if bad {
				r.failed++
			} else if c.end.Sub(c.start) > slowConn {
				r.slow++
				bad = true
			}
			if bad && c.end.Sub(kill) > r.gap {
				r.gap = c.end.Sub(kill)
			}
		}
		conns = conns[:0]
		mu.Unlock()
		out = append(out, r)
		from = lb.mark()
		l.listen(b)
		lb.waitUp(b, from)
		time.Sleep(200 * time.Millisecond)
	}
	return out, load.Stop()
}

// keepbitKill is Keepbit's side: keepbitd's "backend down"/"backend up"
// log records (their own timestamps) for the kill service.
func keepbitKill(t testing.TB, d *daemon) lbKill {
	at := func(m map[string]any) time.Time {
		ts, err := time.Parse(time.RFC3339Nano, fmt.Sprint(m["time"]))
		must(t, err, "keepbitd log time")
		return ts
	}
	return lbKill{
		name:   "keepbit",
		target: fmt.Sprintf("%s:%d", vip, cmpPort),
		mark:   d.mark,
		waitDown: func(b *backendNS, from int) time.Time {
			return at(d.waitLog(t, from, 5*time.Second, map[string]string{"msg": "backend down", "service": "kill", "backend": b.addr}))
		},
		waitUp: func(b *backendNS, from int) {
			d.waitLog(t, from, 5*time.Second, map[string]string{"msg": "backend up", "service": "kill", "backend": b.addr})
		},
	}
}

func haproxyKill(t testing.TB, h *haproxy) lbKill {
	return lbKill{
		name:   "haproxy",
		target: fmt.Sprintf("%s:%d", lbAddr, cmpPort),
		mark:   h.mark,
		waitDown: func(b *backendNS, from int) time.Time {
			return h.waitLine(t, from, 5*time.Second, "Server kill/"+b.name+" is DOWN")
		},
		waitUp: func(b *backendNS, from int) {
			h.waitLine(t, from, 5*time.Second, "Server kill/"+b.name+" is UP")
		},
	}
}

// TestCompareHarness: HAProxy forwards and takes a killed backend out
// once, then Keepbit does, in the same lab: what the Compare benchmarks
// run, once.
func TestCompareHarness(t *testing.T) {
	l := newCmpLab(t)
	h := startHAProxy(t, l.dir)
	if got, failed := httpSpread(t, l, fmt.Sprintf("http://%s:80/", lbAddr), 10); failed > 0 || got["b1:80"] == 0 || got["b2:80"] == 0 {
		t.Fatalf("haproxy spread %v, %d failed", got, failed)
	}
	runs, rep := l.killRuns(t, haproxyKill(t, h), 1)
	t.Logf("haproxy: %+v; %v", runs[0], rep)
	if rep.New.OK < 500 {
		t.Fatalf("haproxy: only %d new connections succeeded", rep.New.OK)
	}
	stopHAProxy(h)

	d := l.startDaemon(l.keepbitCmpConfig())
	l.waitKeepbitUp(t, d)
	if got, failed := httpSpread(t, l, fmt.Sprintf("http://%s:80/", vip), 10); failed > 0 || got["b1:80"]+got["b2:80"] != 10 {
		t.Fatalf("keepbit spread %v, %d failed", got, failed)
	}
	runs, rep = l.killRuns(t, keepbitKill(t, d), 1)
	t.Logf("keepbit: %+v; %v", runs[0], rep)
	if rep.New.OK < 500 {
		t.Fatalf("keepbit: only %d new connections succeeded", rep.New.OK)
	}
}

func stopHAProxy(h *haproxy) {
	_ = h.cmd.Process.Kill()
	<-h.done
}

func httpSpread(t testing.TB, l *cmpLab, url string, n int) (map[string]int, int) {
	tr := &http.Transport{DisableKeepAlives: true, DialContext: nslab.DialContext(l.client, time.Second)}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr, Timeout: 2 * time.Second}
	got, failed := map[string]int{}, 0
	for range n {
		resp, err := cl.Get(url)
		if err != nil {
			failed++
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got[string(body)]++
	}
	return got, failed
}

// BenchmarkCompareBackendKill: 20 backend kills under HAProxy (TCP mode,
// inter/fall equal to Keepbit's check) and under Keepbit, same lab.
func BenchmarkCompareBackendKill(b *testing.B) {
	const runs = 20
	for b.Loop() {
		l := newCmpLab(b)
		h := startHAProxy(b, l.dir)
		hr, hrep := l.killRuns(b, haproxyKill(b, h), runs)
		stopHAProxy(h)
		d := l.startDaemon(l.keepbitCmpConfig())
		l.waitKeepbitUp(b, d)
		kr, krep := l.killRuns(b, keepbitKill(b, d), runs)
		report := func(rs []killRun) (gap50, gap99, det50, det99 time.Duration, failed, slow int) {
			var gaps, dets []time.Duration
			for _, r := range rs {
				gaps = append(gaps, r.gap)
				dets = append(dets, r.detect)
				failed += r.failed
				slow += r.slow
			}
			return connload.Percentile(gaps, .5), connload.Percentile(gaps, .99), connload.Percentile(dets, .5), connload.Percentile(dets, .99), failed, slow
		}
		hg50, hg99, hd50, hd99, hf, hs := report(hr)
		kg50, kg99, kd50, kd99, kf, ks := report(kr)
		ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
		b.ReportMetric(ms(hg50), "haproxy-gap-p50-ms")
		b.ReportMetric(ms(hg99), "haproxy-gap-p99-ms")
		b.ReportMetric(ms(kg50), "keepbit-gap-p50-ms")
		b.ReportMetric(ms(kg99), "keepbit-gap-p99-ms")
		b.ReportMetric(ms(hd50), "haproxy-detect-p50-ms")
		b.ReportMetric(ms(kd50), "keepbit-detect-p50-ms")
		b.ReportMetric(float64(hf), "haproxy-failed-new")
		b.ReportMetric(float64(kf), "keepbit-failed-new")
		ratio := func(a, k time.Duration) string {
			if k == 0 {
				return "n/a"
			}
			return fmt.Sprintf("%.2f", float64(a)/float64(k))
		}
		b.Logf("\n%d kills each; check inter %v fall %d rise 2; a new connection every 1 ms + 4 long-lived\n"+
			"| LB | gap p50 | gap p99 | detect p50 | detect p99 | failed new | slow new (>%v) | long-lived broken |\n|---|---|---|---|---|---|---|---|\n"+
			"| HAProxy %s | %v | %v | %v | %v | %d of %d | %d | %d of 4 |\n"+
			"| Keepbit | %v | %v | %v | %v | %d of %d | %d | %d of 4 |\n"+
			"| ratio HAProxy/Keepbit | %s | %s | %s | %s | | | |\n",
			runs, cmpInter, cmpFall, slowConn,
			haproxyVersion(), hg50, hg99, hd50, hd99, hf, hrep.New.Attempts, hs, hrep.BrokenTotal,
			kg50, kg99, kd50, kd99, kf, krep.New.Attempts, ks, krep.BrokenTotal,
			ratio(hg50, kg50), ratio(hg99, kg99), ratio(hd50, kd50), ratio(hd99, kd99))
	}
}

func haproxyVersion() string {
	out, _ := exec.Command("haproxy", "-v").Output()
	f := strings.Fields(string(out))
	if len(f) >= 3 {
		return f[2]
	}
	return "?"
}

// cpu is a snapshot of the CPU time of the machine, this process (the
// client and the backends run here) and one LB process.
type cpu struct {
	busy, softirq time.Duration // machine-wide, from /proc/stat
	self          time.Duration // getrusage(RUSAGE_SELF): client + backends
	lb            time.Duration // the LB process (haproxy, or keepbitd), /proc/PID/stat
}

func readCPU(t testing.TB, pid int) cpu {
	var c cpu
	const tick = 10 * time.Millisecond // USER_HZ 100
	stat, err := os.ReadFile("/proc/stat")
	must(t, err, "/proc/stat")
	f := strings.Fields(strings.SplitN(string(stat), "\n", 2)[0])
	for i, v := range f[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		switch i {
		case 3, 4: // idle, iowait
		case 8, 9: // guest, guest_nice: already in user, nice
		default:
			c.busy += time.Duration(n) * tick
		}
		if i == 6 {
			c.softirq = time.Duration(n) * tick
		}
	}
	var ru unix.Rusage
	must(t, unix.Getrusage(unix.RUSAGE_SELF, &ru), "getrusage")
	c.self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	ps, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	must(t, err, "LB process stat")
	pf := strings.Fields(string(ps)[strings.LastIndexByte(string(ps), ')')+2:])
	ut, _ := strconv.ParseInt(pf[11], 10, 64)
	st, _ := strconv.ParseInt(pf[12], 10, 64)
	c.lb = time.Duration(ut+st) * tick
	return c
}

func (c cpu) sub(o cpu) cpu {
	return cpu{c.busy - o.busy, c.softirq - o.softirq, c.self - o.self, c.lb - o.lb}
}

// throughput: workers clients fetch url for d, on a new connection each
// time or keeping connections alive; it returns the requests and the new
// connections made.
func throughput(l *cmpLab, url string, keepAlive bool, workers int, d time.Duration) (reqs, conns int64) {
	var nconns atomic.Int64
	dial := nslab.DialContext(l.client, time.Second)
	tr := &http.Transport{DisableKeepAlives: !keepAlive, MaxIdleConnsPerHost: workers,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			nconns.Add(1)
			return dial(ctx, network, addr)
		}}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr, Timeout: 2 * time.Second}
	var n atomic.Int64
	end := time.Now().Add(d)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				resp, err := cl.Get(url)
				if err != nil {
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					n.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return n.Load(), nconns.Load()
}

// BenchmarkCompareProxyThroughput: HAProxy (TCP mode) and Keepbit (DSR)
// on the same backends: requests/s and connections/s of 8 client workers
// over 3 s, without and with keep-alive, and CPU time per request.
func BenchmarkCompareProxyThroughput(b *testing.B) {
	const workers, dur = 8, 3 * time.Second
	type row struct {
		lb, mode          string
		rps, cps          float64
		lbCPU, self, soft float64 // µs per request
		busy              float64
	}
	for b.Loop() {
		l := newCmpLab(b)
		var rows []row
		measure := func(lb, url string, pid int) {
			for _, ka := range []bool{false, true} {
				throughput(l, url, ka, workers, 300*time.Millisecond) // warm up
				before := readCPU(b, pid)
				start := time.Now()
				reqs, conns := throughput(l, url, ka, workers, dur)
				el := time.Since(start)
				d := readCPU(b, pid).sub(before)
				us := func(x time.Duration) float64 { return float64(x.Microseconds()) / float64(max(reqs, 1)) }
				mode := "new connection per request"
				if ka {
					mode = "keep-alive"
				}
				rows = append(rows, row{lb, mode, float64(reqs) / el.Seconds(), float64(conns) / el.Seconds(), us(d.lb), us(d.self), us(d.softirq), us(d.busy)})
			}
		}
		h := startHAProxy(b, l.dir)
		measure("HAProxy "+haproxyVersion()+" (TCP mode)", fmt.Sprintf("http://%s:80/", lbAddr), h.cmd.Process.Pid)
		stopHAProxy(h)
		d := l.startDaemon(l.keepbitCmpConfig())
		l.waitKeepbitUp(b, d)
		measure("Keepbit (XDP, DSR)", fmt.Sprintf("http://%s:80/", vip), d.cmd.Process.Pid)
		var s strings.Builder
		fmt.Fprintf(&s, "\n%d client workers, %v each, short HTTP GETs (a 5-byte body)\n", workers, dur)
		s.WriteString("| LB | client mode | requests/s | connections/s | LB process CPU µs/req | client+backends CPU µs/req | machine softirq µs/req | machine busy µs/req |\n|---|---|---|---|---|---|---|---|\n")
		for _, r := range rows {
			fmt.Fprintf(&s, "| %s | %s | %.0f | %.0f | %.1f | %.1f | %.1f | %.1f |\n", r.lb, r.mode, r.rps, r.cps, r.lbCPU, r.self, r.soft, r.busy)
		}
		s.WriteString("LB process: haproxy's or keepbitd's utime+stime (/proc/PID/stat); Keepbit's forwarding runs in XDP, in softirq, which no process is charged for: " +
			"it is inside 'machine softirq' (all of /proc/stat's softirq, which also holds the veths' and the client's and backends' stacks). " +
			"client+backends: getrusage of the test process. machine busy: all non-idle time of the machine, other work included.\n")
		b.Log(s.String())
		for i, r := range rows {
			tag := []string{"haproxy-new", "haproxy-ka", "keepbit-new", "keepbit-ka"}[i]
			b.ReportMetric(r.rps, tag+"-req/s")
		}
		b.ReportMetric(rows[2].rps/rows[0].rps, "ratio-new-keepbit/haproxy")
		b.ReportMetric(rows[3].rps/rows[1].rps, "ratio-ka-keepbit/haproxy")
	}
}
