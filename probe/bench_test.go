package probe

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/keepbit/keepbit/internal/lab"
	"github.com/keepbit/keepbit/internal/privtest"
)

// listenerEnv turns the test binary into a process of TCP listeners that
// accept and close, so a benchmark measures the prober's CPU alone.
const listenerEnv = "KEEPBIT_PROBE_LISTENERS"

func listenerMain() int {
	n, _ := strconv.Atoi(os.Getenv(listenerEnv))
	var addrs []string
	for range n {
		ln, err := lab.ServeAcceptClose(netns.None(), "tcp", "127.0.0.1:0")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		addrs = append(addrs, ln.Addr().String())
	}
	fmt.Println(strings.Join(addrs, " "))
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n') // until the benchmark closes stdin
	return 0
}

// machineBusy is the time all CPUs spent not idle (/proc/stat, in ticks of
// 10 ms): the listeners' and the kernel's share of a probe too.
func machineBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	var busy int64
	for i, f := range strings.Fields(line)[1:] {
		v, _ := strconv.ParseInt(f, 10, 64)
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return time.Duration(busy) * 10 * time.Millisecond
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkChecks: N checks of each TCP type at 100 ms (jitter 0.2)
// against 100 local listeners in another process, 3 s per round. Reports
// probes/s, failures, CPU cores and CPU per probe used by the prober
// (listeners and kernel work done in other contexts not included: compare
// the types, and the whole machine's load in make bench's notes),
// goroutines and heap. The target is N=10000 (100,000 probes/s) under one
// core; the tcp type is the baseline.
func BenchmarkChecks(b *testing.B) {
	for _, kind := range []Kind{TCP, TCPHalfOpen} {
		for _, n := range []int{1000, 5000, 10000} {
			b.Run(fmt.Sprintf("%s/%d", kind, n), func(b *testing.B) {
				if kind == TCPHalfOpen && os.Geteuid() != 0 {
					b.Skip("tcp-half-open needs raw sockets (root)")
				}
				benchChecks(b, kind, n, localListeners(b))
			})
		}
	}
	// Half-open checks of backends behind a veth, each its own address,
	// answered by a tc program (bpf/synack_responder.c) as a remote
	// backend's stack would answer: the prober's host does the work it
	// would do in production (the SYN out, the SYN-ACK in, its stack's
	// RST out) and not the backends' (a local listener handles the SYN
	// and the RST in the prober's own send call).
	for _, n := range []int{5000, 10000} {
		b.Run(fmt.Sprintf("%s-tc-backends/%d", TCPHalfOpen, n), func(b *testing.B) {
			privtest.Require(b)
			benchChecks(b, TCPHalfOpen, n, tcBackends(b, n))
		})
	}
}

// localListeners starts 100 TCP listeners in a helper process (stopped
// when b ends) and returns their addresses.
func localListeners(b *testing.B) []string {
	const listeners = 100
	helper := exec.Command("/proc/self/exe")
	helper.Env = append(os.Environ(), listenerEnv+"="+strconv.Itoa(listeners))
	stdin, _ := helper.StdinPipe()
	stdout, _ := helper.StdoutPipe()
	if err := helper.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { stdin.Close(); _ = helper.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		b.Fatal(err)
	}
	return strings.Fields(line)
}

// tcBackends gives n backends, 10.96.x.y:80, behind a veth whose far end
// (in a namespace of its own) answers SYNs from a tc program, and returns
// their addresses.
func tcBackends(b *testing.B, n int) []string {
	peer := privtest.NewNS(b)
	v := privtest.Veth(b, lab.VethEnd{NS: netns.None(), Name: "kbho0", Addrs: []string{"10.95.0.1/24"}},
		lab.VethEnd{NS: peer, Name: "kbho0p", Addrs: []string{"10.95.0.2/24"}})
	detach, err := lab.AttachSynResponder(peer, v.B.Index)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(detach)
	privtest.AddRoute(b, netns.None(), "10.96.0.0/16", "10.95.0.2")
	addrs := make([]string, n)
	for i := range addrs {
		addrs[i] = fmt.Sprintf("10.96.%d.%d:80", i/250, i%250+1)
	}
	return addrs
}

func benchChecks(b *testing.B, kind Kind, checks int, addrs []string) {
	for b.Loop() {
		results := make(chan Result, 1<<16)
		s := NewScheduler(results)
		ctx, cancel := context.WithCancel(context.Background())
		go s.Run(ctx)
		// Verdicts are consumed as the control loop does: a check whose
		// verdict cannot be delivered waits, and stops probing.
		go func() {
			for {
				select {
				case <-s.Events():
				case <-ctx.Done():
					return
				}
			}
		}()
		for i := range checks {
			sp := Spec{Kind: kind, Target: netip.MustParseAddrPort(addrs[i%len(addrs)]), Interval: 100 * time.Millisecond,
				Timeout: 90 * time.Millisecond, Rise: 2, Fall: 3, Jitter: 0.2}
			if err := s.Add(fmt.Sprint("c", i), sp); err != nil {
				b.Fatal(err)
			}
		}
		time.Sleep(500 * time.Millisecond) // let the first round start
		var ok, failed int
		var maxG int
		var lat []time.Duration
		cpu0, busy0, t0 := cpuTime(), machineBusy(), time.Now()
		end := time.After(3 * time.Second)
		sample := time.NewTicker(50 * time.Millisecond)
	loop:
		for {
			select {
			case r := <-results:
				// Results of the warm-up wait in the channel: only
				// probes started in the window count.
				if r.Start.Before(t0) {
					continue
				}
				lat = append(lat, r.Latency)
				if r.Err == nil {
					ok++
				} else {
					failed++
				}
			case <-sample.C:
				maxG = max(maxG, runtime.NumGoroutine())
			case <-end:
				break loop
			}
		}
		wall, cpu, busy := time.Since(t0), cpuTime()-cpu0, machineBusy()-busy0
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		cancel()
		sample.Stop()
		b.ReportMetric(float64(ok+failed)/wall.Seconds(), "probes/s")
		b.ReportMetric(float64(failed)/float64(ok+failed)*100, "failed-%")
		b.ReportMetric(cpu.Seconds()/wall.Seconds(), "cpu-cores")
		b.ReportMetric(float64(cpu.Microseconds())/float64(ok+failed), "cpu-us/probe")
		b.ReportMetric(busy.Seconds()/wall.Seconds(), "machine-cores")
		b.ReportMetric(float64(maxG), "max-goroutines")
		if len(lat) > 0 {
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
		}
		b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heap-MiB")
	}
}
