package netnstests

import (
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDaemonOverrideSurvivesRestart: a backend the operator disabled stays
// out of rotation after keepbitd restarts and adopts the pinned dataplane,
// although its checks pass (issue 7 defect 9: the override lived in memory
// and the first good check brought the backend back); enable brings it
// back.
func TestDaemonOverrideSurvivesRestart(t *testing.T) {
	l := newLab(t)
	cfg := l.writeConfig("")
	d := l.startDaemonUp(cfg)
	if out, err := l.ctl("disable", "web", "10.71.1.2"); err != nil {
		t.Fatalf("disable: %v\n%s", err, out)
	}
	d.signal(syscall.SIGTERM)
	<-d.done

	d = l.startDaemon(cfg)
	d.waitLog(t, 0, 5*time.Second, map[string]string{"msg": "dataplane ready", "adopted": "true"})
	// b2's check passes within rise x interval; b1's passes as soon.
	d.waitLog(t, 0, 5*time.Second, map[string]string{"msg": "keepbitd running"})
	time.Sleep(500 * time.Millisecond) // ten check intervals
	out, err := l.ctl("services")
	if err != nil || !strings.Contains(out, "disabled") {
		t.Fatalf("services after the restart: %v\n%s", err, out)
	}
	if got, failed := l.spread(80, 20); failed != 0 || got["b2:80"] != 20 {
		t.Fatalf("after the restart: %v, %d failed; want all 20 on b2 (b1 is disabled)", got, failed)
	}

	from := d.mark()
	if out, err := l.ctl("enable", "web", "10.71.1.2"); err != nil {
		t.Fatalf("enable: %v\n%s", err, out)
	}
	d.waitLog(t, from, 5*time.Second, map[string]string{"msg": "backend up", "backend": "10.71.1.2"})
	if got, failed := l.spread(80, 40); failed != 0 || got["b1:80"] == 0 {
		t.Fatalf("after enable: %v, %d failed; want b1 back", got, failed)
	}
}
