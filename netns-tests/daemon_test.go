package netnstests

import (
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// TestDaemonFailover runs keepbitd against two HTTP backends: a backend
// whose server dies goes down within fall x interval (+ generous slack) and
// gets no new connections; kill -9 of the daemon leaves forwarding up; a
// new daemon adopts; a reload adds and removes a service under traffic; a
// graceful stop keeps forwarding; --detach stops it.
func TestDaemonFailover(t *testing.T) {
	l := newLab(t)
	cfg := l.writeConfig("")
	d := l.startDaemonUp(cfg)

	got, failed := l.spread(80, 40)
	t.Logf("both up: %v, %d failed", got, failed)
	if failed != 0 || got["b1:80"] == 0 || got["b2:80"] == 0 {
		t.Fatalf("both backends up: answers %v, %d failed; want both, none failed", got, failed)
	}

	from := d.mark()
	l.backends[0].stop(80)
	killed := time.Now()
	ev := d.waitLog(t, from, 2*time.Second, map[string]string{"msg": "backend down", "backend": "10.71.1.2"})
	t.Logf("b1 down logged %v after its server stopped (detect->decide %vns, decide->apply %vns)",
		time.Since(killed).Round(time.Millisecond), ev["detect_to_decide"], ev["decide_to_apply"])
	got, failed = l.spread(80, 30)
	if failed != 0 || got["b1:80"] != 0 || got["b2:80"] != 30 {
		t.Fatalf("after b1 went down: %v, %d failed; want all 30 on b2", got, failed)
	}

	// kill -9: nothing runs, the pinned program forwards.
	d.signal(syscall.SIGKILL)
	<-d.done
	got, failed = l.spread(80, 20)
	if failed != 0 || got["b2:80"] != 20 {
		t.Fatalf("with keepbitd dead: %v, %d failed; want all 20 on b2", got, failed)
	}

	// A new daemon adopts the pinned state and carries on.
	d = l.startDaemon(cfg)
	d.waitLog(t, 0, 5*time.Second, map[string]string{"msg": "dataplane ready", "adopted": "true"})
	d.waitLog(t, 0, 5*time.Second, map[string]string{"msg": "keepbitd running"})
	got, failed = l.spread(80, 20)
	if failed != 0 || got["b2:80"] != 20 {
		t.Fatalf("after adoption: %v, %d failed; want all 20 on b2", got, failed)
	}

	// Reload: add a service on 8080 (b2 only serves it), then remove it.
	l.backends[1].serve(t, 8080)
	cfgWith := l.writeConfig(`  - name: alt
    vip: ` + vip + `
    port: 8080
    backends:
      - {address: 10.71.2.2, port: kb2}
`)
	from = d.mark()
	d.signal(syscall.SIGHUP)
	d.waitLog(t, from, 5*time.Second, map[string]string{"msg": "backend up", "service": "alt"})
	if body, err := l.get(8080); err != nil || body != "b2:8080" {
		t.Fatalf("new service: %q, %v", body, err)
	}
	if got, failed := l.spread(80, 10); failed != 0 || got["b2:80"] != 10 {
		t.Fatalf("web during reload: %v, %d failed", got, failed)
	}
	// A broken config is refused and changes nothing.
	must(t, os.WriteFile(cfgWith, []byte("services: [\n"), 0o600), "break config")
	from = d.mark()
	d.signal(syscall.SIGHUP)
	d.waitLog(t, from, 5*time.Second, map[string]string{"msg": "reload refused"})
	if body, err := l.get(8080); err != nil || body != "b2:8080" {
		t.Fatalf("after a refused reload: %q, %v", body, err)
	}
	l.writeConfig("")
	from = d.mark()
	d.signal(syscall.SIGHUP)
	d.waitLog(t, from, 5*time.Second, map[string]string{"msg": "config reloaded"})
	if body, err := l.get(8080); err == nil {
		t.Fatalf("removed service still answered: %q", body)
	}

	// Graceful stop keeps forwarding; --detach stops it.
	d.signal(syscall.SIGTERM)
	<-d.done
	if got, failed := l.spread(80, 10); failed != 0 || got["b2:80"] != 10 {
		t.Fatalf("after SIGTERM: %v, %d failed", got, failed)
	}
	if out, err := execDetach(t, cfg); err != nil {
		t.Fatalf("keepbitd --detach: %v: %s", err, out)
	}
	link, _ := netlink.LinkByName("kbc")
	if x := link.Attrs().Xdp; x != nil && x.Attached {
		t.Fatal("XDP still attached after --detach")
	}
}
