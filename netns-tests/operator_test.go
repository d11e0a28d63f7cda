package netnstests

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/api"
	nslab "github.com/keepbit/keepbit/internal/lab"
)

// keepAlive is one long-lived HTTP connection from the client that asks
// every 100 ms and remembers who answered.
type keepAlive struct {
	stop   chan struct{}
	done   chan struct{}
	last   atomic.Value
	failed atomic.Int64
	asked  atomic.Int64
}

func (l *lab) keepAlive(t *testing.T) *keepAlive {
	k := &keepAlive{stop: make(chan struct{}), done: make(chan struct{})}
	tr := &http.Transport{MaxConnsPerHost: 1, DialContext: nslab.DialContext(l.client, time.Second)}
	cl := &http.Client{Transport: tr, Timeout: 2 * time.Second}
	go func() {
		defer close(k.done)
		defer tr.CloseIdleConnections()
		for {
			select {
			case <-k.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			k.asked.Add(1)
			resp, err := cl.Get("http://" + vip + ":80/")
			if err != nil {
				k.failed.Add(1)
				continue
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			k.last.Store(string(body))
		}
	}()
	t.Cleanup(func() { k.close() })
	return k
}

func (k *keepAlive) close() {
	select {
	case <-k.stop:
	default:
		close(k.stop)
	}
	<-k.done
}

func TestDaemonOperator(t *testing.T) {
	l := newLab(t)
	cfg := l.writeConfig("")
	l.startDaemonUp(cfg)

	if fi, err := os.Stat(filepath.Join(l.dir, "keepbit.sock")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("API socket: %v, mode %v; want 0600", err, fi.Mode().Perm())
	}
	out, err := l.ctl("status")
	if err != nil || !strings.Contains(out, "generation  1") || !strings.Contains(out, "interfaces  kbc") {
		t.Fatalf("status: %v\n%s", err, out)
	}
	out, err = l.ctl("-o", "json", "services")
	var svcs []api.Service
	if err != nil || json.Unmarshal([]byte(out), &svcs) != nil || len(svcs) != 1 || len(svcs[0].ServiceStatus.Backends) != 2 {
		t.Fatalf("services -o json: %v\n%s", err, out)
	}
	for _, b := range svcs[0].ServiceStatus.Backends {
		if b.State != "up" || b.Health != "up" {
			t.Fatalf("backend %+v, want up", b)
		}
	}

	// A long-lived connection pins one backend; drain that one.
	k := l.keepAlive(t)
	time.Sleep(400 * time.Millisecond)
	on, _ := k.last.Load().(string)
	if on == "" {
		t.Fatal("the keep-alive connection got no answer")
	}
	target, other := "10.71.1.2", "b2:80"
	if on == "b2:80" {
		target, other = "10.71.2.2", "b1:80"
	}
	out, err = l.ctl("drain", "web", target, "-wait", "-timeout", "1500ms", "-idle", "1s")
	if err == nil || !strings.Contains(out, "timeout after 1.5s") || !strings.Contains(out, "flows still live") {
		t.Fatalf("drain -wait with a live connection: %v\n%s", err, out)
	}
	got, failed := l.spread(80, 20)
	if failed != 0 || got[other] != 20 {
		t.Fatalf("new connections while %s drains: %v, %d failed; want all on %s", target, got, failed, other)
	}
	if now, _ := k.last.Load().(string); now != on || k.failed.Load() != 0 {
		t.Fatalf("established connection moved to %q (was %q) or failed %d times while draining", now, on, k.failed.Load())
	}
	k.close()
	out, err = l.ctl("drain", "web", target, "-wait", "-timeout", "10s", "-idle", "1s")
	if err != nil || !strings.Contains(out, "drained (no live flows)") {
		t.Fatalf("drain -wait after the connection closed: %v\n%s", err, out)
	}

	// Follow events while the operator disables and enables the backend.
	follow := exec.Command(binary(t, "keepbitctl"), "-socket", filepath.Join(l.dir, "keepbit.sock"), "events", "-follow")
	fout, _ := follow.StdoutPipe()
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = follow.Process.Kill(); _ = follow.Wait() })
	if out, err := l.ctl("disable", "web", target); err != nil {
		t.Fatalf("disable: %v\n%s", err, out)
	}
	if out, err := l.ctl("enable", "web", target); err != nil {
		t.Fatalf("enable: %v\n%s", err, out)
	}
	deadline := time.Now().Add(3 * time.Second)
	var seen strings.Builder
	buf := make([]byte, 4096)
	for time.Now().Before(deadline) && !strings.Contains(seen.String(), "backend-up service=web backend="+target) {
		n, err := fout.Read(buf)
		seen.Write(buf[:n])
		if err != nil {
			break
		}
	}
	for _, want := range []string{"backend-draining service=web backend=" + target, "backend-down service=web backend=" + target + " ", "backend-up service=web backend=" + target} {
		if !strings.Contains(seen.String(), want) {
			t.Fatalf("events -follow lacks %q:\n%s", want, seen.String())
		}
	}
	if got, failed := l.spread(80, 20); failed != 0 || got["b1:80"] == 0 || got["b2:80"] == 0 {
		t.Fatalf("after enable: %v, %d failed; want both backends again", got, failed)
	}

	out, err = l.ctl("flows", "-limit", "5")
	if err != nil || !strings.Contains(out, "10.70.0.2:") || !strings.Contains(out, vip+":80") {
		t.Fatalf("flows: %v\n%s", err, out)
	}

	// Metrics, scraped as Prometheus would.
	resp, err := http.Get("http://127.0.0.1:9469/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	metrics := string(body)
	for _, re := range []string{
		`keepbit_backend_state\{backend="10.71.1.2",service="web"\} 1\n`,
		`keepbit_backend_healthy\{backend="10.71.2.2",service="web"\} 1\n`,
		`keepbit_backend_packets_total\{backend="10.71.1.2",service="web"\} [1-9]`,
		`keepbit_service_bytes_total\{service="web"\} [1-9]`,
		`keepbit_dataplane_packets_total\{interface="kbc",reason="redirect"\} [1-9]`,
		`keepbit_probe_latency_seconds_count\{backend="10.71.2.2",service="web"\} [1-9]`,
		`keepbit_backend_transitions_total\{service="web",state="draining"\} 1\n`,
		`keepbit_failover_phase_seconds_count\{phase="decide_to_apply"\} [1-9]`,
		`keepbit_config_generation 1\n`,
	} {
		if !regexp.MustCompile(re).MatchString(metrics) {
			t.Errorf("metrics lack %s", re)
		}
	}

	// Bad requests get a clear error and change nothing.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"drain", "web", "10.9.9.9"}, `service "web": backend 10.9.9.9: not configured`},
		{[]string{"drain", "nosuch", target}, `service "nosuch": not configured`},
		{[]string{"disable", "web", "not-an-address"}, `backend: "not-an-address" is not an address`},
		{[]string{"drain", "web"}, "drain: want SERVICE BACKEND"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"-o", "yaml", "status"}, `-o: "yaml" is not table or json`},
	} {
		out, err := l.ctl(c.args...)
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("keepbitctl %v: %v\n%s\nwant error %q", c.args, err, out, c.want)
		}
	}
	if got, failed := l.spread(80, 10); failed != 0 || got["b1:80"]+got["b2:80"] != 10 {
		t.Fatalf("after bad requests: %v, %d failed", got, failed)
	}

	// Reload through the API, and a refused one.
	if out, err := l.ctl("reload"); err != nil || !strings.Contains(out, "reloaded: generation 2") {
		t.Fatalf("reload: %v\n%s", err, out)
	}
	must(t, os.WriteFile(cfg, []byte("interfaces: []\n"), 0o600), "break config")
	if out, err := l.ctl("reload"); err == nil || !strings.Contains(out, "interfaces: at least one interface is required") {
		t.Fatalf("reload of a bad config: %v\n%s", err, out)
	}
	if out, err := l.ctl("check-config", cfg); err == nil || !strings.Contains(out, "keepbit.yaml:1: interfaces: at least one interface is required") {
		t.Fatalf("check-config: %v\n%s", err, out)
	}
	fmt.Fprint(io.Discard, out)
}
