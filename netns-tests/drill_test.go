package netnstests

import (
	"encoding/json"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/api"
	"github.com/keepbit/keepbit/internal/drill"
)

// answer is one request of the drill's client load: when it started and
// which backend answered ("" failed).
type answer struct {
	at time.Time
	by string
}

// TestDrillBackend runs `keepbitctl drill backend` against a real keepbitd
// under a stream of new connections: the backend must really leave the
// dataplane (the client sees no answer from it during the hold), the
// report must show its traffic stopping and coming back after its checks
// passed again, with plausible figures, and the refusals must name their
// reason.
func TestDrillBackend(t *testing.T) {
	l := newLab(t)
	l.startDaemonUp(l.writeConfig(""))

	// Load: two clients making new connections back to back.
	var (
		mu      sync.Mutex
		answers []answer
		stop    = make(chan struct{})
		wg      sync.WaitGroup
	)
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				at := time.Now()
				body, _ := l.get(80)
				mu.Lock()
				answers = append(answers, answer{at, body})
				mu.Unlock()
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()

	type ran struct {
		out string
		err error
	}
	done := make(chan ran, 1)
	go func() {
		out, err := l.ctl("-o", "json", "drill", "backend", "web", "10.71.1.2", "-for", "1500ms")
		done <- ran{out, err}
	}()
	// The drill watches traffic for 1 s before the fault: ask what must
	// be refused while the backend is out.
	time.Sleep(1500 * time.Millisecond)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"drill", "backend", "web", "10.71.1.2"}, `already running`},
		{[]string{"drill", "backend", "web", "10.71.2.2"}, `would leave the service without a usable backend`},
		{[]string{"drill", "backend", "web", "10.71.2.2", "-for", "2h"}, `for: 2h0m0s: want 100ms to 1h0m0s`},
		{[]string{"drill", "backend", "nosuch", "10.71.2.2"}, `service "nosuch": not configured`},
		{[]string{"drill", "backend", "web", "10.9.9.9"}, `service "web": backend 10.9.9.9: not configured`},
		{[]string{"drill", "node"}, `carries no VIP`},
	} {
		out, err := l.ctl(c.args...)
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("keepbitctl %v: %v\n%s\nwant error %q", c.args, err, out, c.want)
		}
	}
	var r ran
	select {
	case r = <-done:
	case <-time.After(40 * time.Second):
		t.Fatal("drill did not answer within 40 s")
	}
	var res drill.Result
	if err := json.Unmarshal([]byte(r.out), &res); err != nil {
		t.Fatalf("drill: %v: %v\n%s", r.err, err, r.out)
	}
	t.Logf("drill: %s; out %v after the fault (detect->apply %v); traffic stopped %v after the fault, back %v after the restore (back event %v, decide->apply %v); gap %v; MTTR %v; %d samples every %v; backend pps %.0f/%.0f/%.0f, service pps %.0f/%.0f/%.0f; problems %v; notes %v",
		res.Result, res.Out.SinceFault, res.Out.DetectToApply, res.Traffic.StoppedAfter, res.Traffic.BackAfter, res.Back.SinceFault, res.Back.DecideToApply,
		res.Traffic.Gap, res.MTTR, res.Traffic.Samples, res.Traffic.Interval, res.Traffic.Target.Before, res.Traffic.Target.During, res.Traffic.Target.After,
		res.Traffic.Service.Before, res.Traffic.Service.During, res.Traffic.Service.After, res.Problems, res.Notes)
	if r.err != nil || res.Result != drill.ResultOK {
		t.Fatalf("drill: %v, result %q: %v\n%s", r.err, res.Result, res.Problems, r.out)
	}
	if res.Out.Event != "backend-down" || res.Back.Event != "backend-up" {
		t.Errorf("phases %q -> %q, want backend-down -> backend-up", res.Out.Event, res.Back.Event)
	}
	tr := res.Traffic
	if tr.Target.Before <= 0 || tr.Target.During != 0 || tr.Target.After <= 0 || tr.Service.During <= 0 {
		t.Errorf("rates: backend %+v, service %+v: want traffic before and after, none during, the service carrying on", tr.Target, tr.Service)
	}
	// Generous bounds (noisy shared machine); the figures go to the log.
	// The checks run every 50 ms with rise 2: the return takes about
	// 2 intervals, and cannot take less than one.
	if tr.StoppedAfter > 500*time.Millisecond || tr.StoppedAt.IsZero() {
		t.Errorf("traffic stopped %v after the fault, want within 500ms", tr.StoppedAfter)
	}
	if res.MTTR < 40*time.Millisecond || res.MTTR > 3*time.Second {
		t.Errorf("MTTR %v: want between one check interval and 3s", res.MTTR)
	}
	if tr.Gap < 1400*time.Millisecond {
		t.Errorf("the backend was without traffic for %v, less than the 1.5s hold", tr.Gap)
	}

	// The client's view: no answer from b1 for a connection started while
	// it was out (after the fault settled, before its return), answers
	// from it before and after.
	close(stop)
	wg.Wait()
	stop = make(chan struct{})
	mu.Lock()
	defer mu.Unlock()
	var before, during, after, failed int
	for _, a := range answers {
		switch {
		case a.by == "":
			failed++
		case a.by != "b1:80":
		case a.at.Before(res.Fault):
			before++
		case a.at.After(res.Fault.Add(100*time.Millisecond)) && a.at.Before(res.Restore):
			during++
		case a.at.After(res.Restore):
			after++
		}
	}
	t.Logf("client: %d requests, %d failed; b1 answered %d before, %d during, %d after", len(answers), failed, before, during, after)
	if before == 0 || during != 0 || after == 0 {
		t.Errorf("b1 answered %d requests before, %d during, %d after the drill: want some, none, some", before, during, after)
	}

	out, err := l.ctl("-o", "json", "drills")
	var h api.Drills
	if err != nil || json.Unmarshal([]byte(out), &h) != nil || len(h.Results) != 1 || h.Results[0].ID != res.ID || len(h.Running) != 0 {
		t.Fatalf("drills: %v\n%s\nwant the one drill, none running", err, out)
	}
	resp, err := http.Get("http://127.0.0.1:9469/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, re := range []string{
		`keepbit_drills_total\{kind="backend",result="ok"\} 1\n`,
		`keepbit_drills_total\{kind="backend",result="refused"\} 2\n`,
		`keepbit_drills_total\{kind="node",result="refused"\} 1\n`,
		`keepbit_drill_last_seconds\{kind="backend",measure="mttr"\} 0\.[0-9]`,
		`keepbit_drill_last_ok\{kind="backend"\} 1\n`,
	} {
		if !regexp.MustCompile(re).Match(body) {
			t.Errorf("metrics lack %s", re)
		}
	}
}

// TestDrillNode runs `keepbitctl drill node` on the VRRP master of the
// two-node lab under client load, forced and then not (the peer has been
// heard by then): the client follows the VIP to the backup and back, and
// the report shows this node's traffic stopping and returning.
func TestDrillNode(t *testing.T) {
	l := newTwoNode(t, 50*time.Millisecond)
	a, b := l.start("a"), l.start("b")
	a.waitLog(t, 0, 10*time.Second, vrrpMaster)
	b.waitLog(t, 0, 10*time.Second, vrrpBackup)
	for _, n := range []*daemon{a, b} {
		n.waitLog(t, 0, 10*time.Second, map[string]string{"msg": "backend up", "backend": "10.68.0.22"})
	}
	l.served("a master") // the client resolves the VIP
	l.waitClientOn("a", time.Second)
	ctlA := func(args ...string) (string, error) {
		full := append([]string{"-socket", filepath.Join(l.nodes["a"].dir, "keepbit.sock")}, args...)
		out, err := exec.Command(binary(t, "keepbitctl"), full...).CombinedOutput()
		return string(out), err
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			_, _ = l.get()
		}
	}()
	defer func() { close(stop); wg.Wait() }()

	moved := make(chan time.Duration, 1)
	go func() {
		time.Sleep(time.Second) // the drill's watch before the fault
		start := time.Now()
		want := l.nodes["b"].mac.String()
		for time.Since(start) < 3*time.Second {
			if l.vipMAC() == want {
				moved <- time.Since(start)
				return
			}
			time.Sleep(time.Millisecond)
		}
		moved <- -1
	}()
	for i, args := range [][]string{{"-force", "-for", "1s"}, {"-for", "500ms"}} {
		out, err := ctlA(append([]string{"-o", "json", "drill", "node"}, args...)...)
		var res drill.Result
		if jerr := json.Unmarshal([]byte(out), &res); jerr != nil || err != nil || res.Result != drill.ResultOK {
			t.Fatalf("drill node %v: %v, %v\n%s\n%s", args, err, jerr, out, l.explain())
		}
		t.Logf("drill node %v: %s %v after the fault, %s %v after the restore; this node's traffic stopped %v after the fault, back %v after the restore; MTTR %v; pps %.0f/%.0f/%.0f; notes %v",
			args, res.Out.Event, res.Out.SinceFault, res.Back.Event, res.Back.SinceFault, res.Traffic.StoppedAfter, res.Traffic.BackAfter, res.MTTR,
			res.Traffic.Target.Before, res.Traffic.Target.During, res.Traffic.Target.After, res.Notes)
		if res.Out.Event != "vrrp-fault" || res.Back.Event != "vrrp-master" || res.Traffic.Target.Before <= 0 || res.Traffic.Target.During != 0 ||
			res.Traffic.BackAt.IsZero() || res.MTTR <= 0 || res.MTTR > 3*time.Second {
			t.Errorf("drill node %v: report %+v", args, res)
		}
		if i == 0 {
			if took := <-moved; took < 0 {
				t.Errorf("the client never moved to b during the drill\n%s", l.explain())
			}
		}
	}
	l.waitClientOn("a", 2*time.Second)
	if st := l.vrrpState("b"); st != "backup" {
		t.Errorf("b is %s after the drills, want backup", st)
	}
}
