// Package netnstests holds Keepbit's end-to-end tests: real keepbitd
// processes, clients and backends in network namespaces the tests create.
package netnstests

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	nslab "github.com/keepbit/keepbit/internal/lab"
	"github.com/keepbit/keepbit/internal/privtest"
)

func TestMain(m *testing.M) {
	code := privtest.Main(m)
	if binaries.dir != "" {
		os.RemoveAll(binaries.dir)
	}
	os.Exit(code)
}

const vip = "10.70.9.9"

// lab: client (10.70.0.2) -- kbc [LB: this test's namespace] kb1 -- b1
// (10.71.1.2), kb2 -- b2 (10.71.2.2). Backends hold the VIP on lo and
// route back through the LB, as L2 DSR backends behind a router would.
type lab struct {
	t        testing.TB
	client   netns.NsHandle
	backends []*backendNS
	dir      string // config, pins, binaries
}

type backendNS struct {
	name string
	ns   netns.NsHandle
	addr string
	mu   sync.Mutex
	srv  map[int]*nslab.HTTPServer
}

func must(t testing.TB, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// veth joins this namespace (lbName, lbAddr) to ns (lbName+"p", peerAddr)
// and brings ns's lo up.
func veth(t testing.TB, lbName string, ns netns.NsHandle, lbAddr, peerAddr string) nslab.Link {
	v := privtest.Veth(t, nslab.VethEnd{NS: netns.None(), Name: lbName, Addrs: []string{lbAddr}},
		nslab.VethEnd{NS: ns, Name: lbName + "p", Addrs: []string{peerAddr}})
	privtest.SetUp(t, ns, "lo")
	return v.B
}

func newLab(t testing.TB) *lab {
	privtest.Require(t)
	l := &lab{t: t, client: privtest.NewNS(t), dir: t.TempDir()}
	privtest.Sysctl(t, netns.None(), map[string]string{"net/ipv4/ip_forward": "1"})
	veth(t, "kbc", l.client, "10.70.0.1/24", "10.70.0.2/24")
	privtest.AddRoute(t, l.client, vip, "10.70.0.1")
	must(t, privtest.InNS(l.client, func() error { return privtest.TxChecksumOff("kbcp") }), "client checksum offload off")
	for i := 1; i <= 2; i++ {
		b := &backendNS{name: fmt.Sprintf("b%d", i), ns: privtest.NewNS(t), addr: fmt.Sprintf("10.71.%d.2", i), srv: map[int]*nslab.HTTPServer{}}
		p := veth(t, fmt.Sprintf("kb%d", i), b.ns, fmt.Sprintf("10.71.%d.1/24", i), b.addr+"/24")
		privtest.AddAddrs(t, b.ns, "lo", vip+"/32")
		privtest.AddRoute(t, b.ns, "default", fmt.Sprintf("10.71.%d.1", i))
		privtest.AttachPass(t, b.ns, p.Index)
		l.backends = append(l.backends, b)
		b.serve(t, 80)
	}
	return l
}

// serve starts an HTTP server on every address of the backend, port port,
// answering with the backend's name.
func (b *backendNS) serve(t testing.TB, port int) {
	srv := privtest.ServeHTTP(t, b.ns, "tcp4", fmt.Sprintf(":%d", port), nslab.Identify(fmt.Sprintf("%s:%d", b.name, port)))
	b.mu.Lock()
	b.srv[port] = srv
	b.mu.Unlock()
}

// stop kills the backend's server on port: new connections are refused.
func (b *backendNS) stop(port int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.srv[port].Close()
}

// get fetches http://VIP:port/ from the client namespace on a new
// connection and returns the body ("" on failure).
func (l *lab) get(port int) (string, error) {
	tr := &http.Transport{DisableKeepAlives: true, DialContext: nslab.DialContext(l.client, time.Second)}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr, Timeout: 2 * time.Second}
	resp, err := cl.Get(fmt.Sprintf("http://%s:%d/", vip, port))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return string(body), err
}

// spread makes n requests and counts the answers by backend.
func (l *lab) spread(port, n int) (map[string]int, int) {
	got := map[string]int{}
	failed := 0
	for range n {
		body, err := l.get(port)
		if err != nil {
			failed++
			continue
		}
		got[body]++
	}
	return got, failed
}

// daemon is a running keepbitd.
type daemon struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	logs []map[string]any
	done chan struct{}
}

// binaries builds keepbitd and keepbitctl once per test process.
var binaries struct {
	sync.Once
	dir string
	err error
}

func binary(t testing.TB, name string) string {
	binaries.Do(func() {
		binaries.dir, binaries.err = os.MkdirTemp("", "keepbit-bin")
		if binaries.err != nil {
			return
		}
		for _, cmd := range []string{"keepbitd", "keepbitctl", "failover-report"} {
			out, err := exec.Command("go", "build", "-o", filepath.Join(binaries.dir, cmd), "../cmd/"+cmd).CombinedOutput()
			if err != nil {
				binaries.err = fmt.Errorf("build %s: %v: %s", cmd, err, out)
				return
			}
		}
	})
	if binaries.err != nil {
		t.Fatal(binaries.err)
	}
	return filepath.Join(binaries.dir, name)
}

func keepbitd(t testing.TB) string { return binary(t, "keepbitd") }

// ctl runs keepbitctl against the lab's daemon.
func (l *lab) ctl(args ...string) (string, error) {
	full := append([]string{"-socket", filepath.Join(l.dir, "keepbit.sock")}, args...)
	out, err := exec.Command(binary(l.t, "keepbitctl"), full...).CombinedOutput()
	return string(out), err
}

// configHead is the lab config up to the web service's backend list:
// node, interface, API, metrics, log, check defaults.
func (l *lab) configHead() string {
	return fmt.Sprintf(`node: {hash_seed: 7, pin_root: %s, state_dir: %s}
interfaces: [{name: kbc}]
api: {socket: %s}
metrics: {listen: "127.0.0.1:9469"}
log: {format: json, level: debug}
defaults:
  check: {type: http, path: /, interval: 50ms, timeout: 40ms, rise: 2, fall: 2, jitter: 0.1}
services:
  - name: web
    vip: %s
    port: 80
    backends:
`, filepath.Join(l.dir, "bpf"), filepath.Join(l.dir, "state"), filepath.Join(l.dir, "keepbit.sock"), vip)
}

// putConfig writes cfg as the lab's keepbit.yaml and returns its path.
func (l *lab) putConfig(cfg string) string {
	path := filepath.Join(l.dir, "keepbit.yaml")
	must(l.t, os.WriteFile(path, []byte(cfg), 0o600), "write config")
	return path
}

func (l *lab) writeConfig(extra string) string {
	return l.putConfig(l.configHead() + `      - {address: 10.71.1.2, port: kb1}
      - {address: 10.71.2.2, port: kb2}
` + extra)
}

func (l *lab) startDaemon(cfgPath string) *daemon { return runDaemon(l.t, cfgPath, l.dir) }

// startDaemonUp starts keepbitd on cfgPath and waits until its checks have
// brought every backend of the lab up.
func (l *lab) startDaemonUp(cfgPath string) *daemon {
	d := l.startDaemon(cfgPath)
	for _, b := range l.backends {
		d.waitLog(l.t, 0, 5*time.Second, map[string]string{"msg": "backend up", "backend": b.addr})
	}
	return d
}

// runDaemon starts keepbitd on cfgPath, whose pin root is dir/bpf; when tb
// ends it is killed, its forwarder detached and the bpffs unmounted.
func runDaemon(tb testing.TB, cfgPath, dir string) *daemon {
	return runDaemonIn(tb, netns.None(), cfgPath, dir)
}

// runDaemonIn starts keepbitd inside ns (netns.None(): this namespace).
func runDaemonIn(tb testing.TB, ns netns.NsHandle, cfgPath, dir string) *daemon {
	return runDaemonBin(tb, ns, keepbitd(tb), cfgPath, dir)
}

// runDaemonBin starts the keepbitd binary bin (another build, for the
// upgrade test) inside ns.
func runDaemonBin(tb testing.TB, ns netns.NsHandle, bin, cfgPath, dir string) *daemon {
	inNS := func(f func() error) error { return privtest.InNS(ns, f) }
	d := &daemon{cmd: exec.Command(bin, "--config", cfgPath), done: make(chan struct{})}
	stderr, err := d.cmd.StderrPipe()
	must(tb, err, "stderr pipe")
	must(tb, inNS(d.cmd.Start), "start keepbitd")
	tb.Cleanup(func() {
		_ = d.cmd.Process.Signal(syscall.SIGCONT)
		_ = d.cmd.Process.Kill()
		<-d.done
		_ = inNS(exec.Command(keepbitd(tb), "--config", cfgPath, "--detach").Run)
		_ = unix.Unmount(filepath.Join(dir, "bpf"), unix.MNT_DETACH)
	})
	go func() {
		defer close(d.done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) != nil {
				m = map[string]any{"msg": sc.Text()}
			}
			d.mu.Lock()
			d.logs = append(d.logs, m)
			d.mu.Unlock()
		}
		if err := sc.Err(); err != nil {
			fmt.Fprintln(os.Stderr, "LOGREADER STOPPED:", err)
		}
		_ = d.cmd.Wait()
	}()
	return d
}

// mark is the position of the next log record, for waitLog.
func (d *daemon) mark() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.logs)
}

// waitLog waits for a log record from position from on whose fields
// include all of want.
func (d *daemon) waitLog(t testing.TB, from int, within time.Duration, want map[string]string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(within)
	seen := from
	for time.Now().Before(deadline) {
		d.mu.Lock()
		logs := d.logs[seen:]
		d.mu.Unlock()
		for _, m := range logs {
			seen++
			match := true
			for k, v := range want {
				if fmt.Sprint(m[k]) != v {
					match = false
					break
				}
			}
			if match {
				return m
			}
		}
		select {
		case <-d.done:
			t.Fatalf("keepbitd exited while waiting for %v; log: %v", want, d.dump())
		case <-time.After(5 * time.Millisecond):
		}
	}
	t.Fatalf("no log record %v within %v; log:\n%s", want, within, d.dump())
	return nil
}

// count is how many log records have message msg.
func (d *daemon) count(msg string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, m := range d.logs {
		if m["msg"] == msg {
			n++
		}
	}
	return n
}

func (d *daemon) dump() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var b strings.Builder
	for _, m := range d.logs {
		j, _ := json.Marshal(m)
		b.Write(j)
		b.WriteByte('\n')
	}
	return b.String()
}

func (d *daemon) signal(s syscall.Signal) { _ = d.cmd.Process.Signal(s) }

func execDetach(t *testing.T, cfg string) ([]byte, error) {
	return exec.Command(keepbitd(t), "--config", cfg, "--detach").CombinedOutput()
}
