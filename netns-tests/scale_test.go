package netnstests

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	nslab "github.com/keepbit/keepbit/internal/lab"
	"github.com/keepbit/keepbit/internal/privtest"
)

// BenchmarkDaemonScale loads 1,000 services x 16 backends (table size
// 2053, M > 100 x N) into a real keepbitd and reports: time from start to
// "dataplane attached" and to "running", to all 16,000 backends up, the
// daemon's RSS, and the time to
// reload the config with one backend's weight changed. The backends are one
// namespace answering for all of 10.80.0.0/16 (an AnyIP local route) with
// a TCP listener, so every check really succeeds.
func BenchmarkDaemonScale(b *testing.B) {
	privtest.Require(b)
	const services, perService = 1000, 16
	for b.Loop() {
		benchScale(b, services, perService)
	}
}

func benchScale(b *testing.B, services, perService int) {
	dir := b.TempDir()
	peer := privtest.NewNS(b)
	v := privtest.Veth(b, nslab.VethEnd{NS: netns.None(), Name: "kbs0", Addrs: []string{"10.81.0.1/24"}},
		nslab.VethEnd{NS: peer, Name: "kbs0p", Addrs: []string{"10.81.0.2/24"}})
	privtest.SetUp(b, peer, "lo")
	// The backends' /16 is routed through the peer (10.81.0.2): 16,000
	// on-link backends would need 16,000 neighbour entries, beyond the
	// host-wide default gc_thresh3 of 1024 that a test must not change.
	privtest.AddRoute(b, netns.None(), "10.80.0.0/16", "10.81.0.2")
	h, err := nslab.Handle(peer)
	if err != nil {
		b.Fatal(err)
	}
	lo, _ := h.LinkByName("lo")
	_, subnet, _ := net.ParseCIDR("10.80.0.0/16")
	if err := h.RouteAdd(&netlink.Route{LinkIndex: lo.Attrs().Index, Dst: subnet, Type: syscall.RTN_LOCAL, Table: syscall.RT_TABLE_LOCAL, Scope: netlink.SCOPE_HOST}); err != nil {
		b.Fatalf("AnyIP route: %v", err)
	}
	h.Delete()
	peerMAC := v.B.MAC.String()
	privtest.ServeAcceptClose(b, peer, "tcp4", ":80")

	write := func(weight int) string {
		var sb strings.Builder
		fmt.Fprintf(&sb, `node: {hash_seed: 7, pin_root: %s/bpf, state_dir: %s/state}
interfaces: [{name: kbs0}]
api: {socket: %s/keepbit.sock}
metrics: {listen: "127.0.0.1:19469"}
log: {format: json, level: info}
defaults:
  table_size: 2053
  check: {type: tcp, interval: 10s, timeout: 1s, rise: 1, fall: 2, jitter: 0.5}
services:
`, dir, dir, dir)
		for i := range services {
			fmt.Fprintf(&sb, "  - name: s%d\n    vip: 10.90.%d.%d\n    port: 80\n", i, i/250, i%250+1)
			sb.WriteString("    backends:\n")
			for j := range perService {
				n := i*perService + j
				w := 1
				if i == services/2 && j == 0 {
					w = weight
				}
				fmt.Fprintf(&sb, "      - {address: 10.80.%d.%d, mac: %q, weight: %d}\n", n/250, n%250+1, peerMAC, w)
			}
		}
		path := dir + "/keepbit.yaml"
		if err := os.WriteFile(path, []byte(sb.String()), 0o600); err != nil {
			b.Fatal(err)
		}
		return path
	}
	cfg := write(1)
	keepbitd(b) // built on first use: not part of the start time
	start := time.Now()
	d := runDaemon(b, cfg, dir)
	d.waitLog(b, 0, 5*time.Minute, map[string]string{"msg": "keepbitd running"})
	loaded := time.Since(start)
	// The start in two parts: up to the dataplane attached (config
	// parsed, maps created, program loaded), then the services applied.
	var attached time.Duration
	d.mu.Lock()
	for _, m := range d.logs {
		if ts, ok := m["time"].(string); ok && m["msg"] == "dataplane attached" {
			at, err := time.Parse(time.RFC3339Nano, ts)
			if err != nil {
				b.Fatalf("log time %q: %v", ts, err)
			}
			attached = at.Sub(start)
		}
	}
	d.mu.Unlock()
	if attached == 0 {
		b.Fatal(`no "dataplane attached" in the log`)
	}
	// All backends up: count "backend up" records.
	deadline := time.Now().Add(2 * time.Minute)
	for d.count("backend up") == 0 && time.Since(start) < 30*time.Second {
		time.Sleep(100 * time.Millisecond)
	}
	for d.count("backend up") < services*perService && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	allUp := time.Since(start)
	if n := d.count("backend up"); n < services*perService {
		b.Fatalf("%d of %d backends up after %v", n, services*perService, allUp)
	}
	rss := vmRSS(d.cmd.Process.Pid)
	kernel, tables := scrapeKernelMemory(b, "http://127.0.0.1:19469/metrics")

	write(5)
	from := d.mark()
	t0 := time.Now()
	d.signal(syscall.SIGHUP)
	d.waitLog(b, from, time.Minute, map[string]string{"msg": "config reloaded"})
	reload := time.Since(t0)

	b.ReportMetric(loaded.Seconds(), "load-s")
	b.ReportMetric(attached.Seconds(), "attached-s")
	b.ReportMetric(allUp.Seconds(), "all-up-s")
	b.ReportMetric(float64(rss)/1024, "rss-MiB")
	b.ReportMetric(float64(kernel)/(1<<20), "kernel-MiB")
	b.ReportMetric(float64(tables)/float64(services)/1024, "tables-KiB/service")
	b.ReportMetric(float64(reload.Milliseconds()), "reload-ms")
}

func vmRSS(pid int) int {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.Atoi(f[1])
			return kb
		}
	}
	return 0
}

// scrapeKernelMemory sums keepbitd's keepbit_kernel_memory_bytes series:
// every map, and the table buffers alone.
func scrapeKernelMemory(b *testing.B, url string) (total, tables uint64) {
	b.Helper()
	resp, err := http.Get(url)
	if err != nil {
		b.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		b.Fatalf("scrape %s: %v", url, err)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, "keepbit_kernel_memory_bytes{") {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			b.Fatalf("metric line %q: %v", line, err)
		}
		total += uint64(v)
		if strings.Contains(line, `map="table_buffers"`) {
			tables += uint64(v)
		}
	}
	if tables == 0 {
		b.Fatalf("no keepbit_kernel_memory_bytes{map=\"table_buffers\"} in %s (HTTP %s): %.600s", url, resp.Status, body)
	}
	return total, tables
}
