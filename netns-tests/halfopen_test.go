package netnstests

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/privtest"
)

// TestDaemonHalfOpenCheck runs keepbitd with tcp-half-open checks against
// backends in their own namespaces: both come up, a backend whose server
// stops goes down and takes no new connections, and comes back when it
// serves again. The backends' kernels hold no half-open connection from
// the checks: the LB's kernel answered every SYN-ACK with an RST.
func TestDaemonHalfOpenCheck(t *testing.T) {
	l := newLab(t)
	head := strings.Replace(l.configHead(), "check: {type: http, path: /,", "check: {type: tcp-half-open,", 1)
	if !strings.Contains(head, "tcp-half-open") {
		t.Fatal("lab config head changed: cannot set the check type")
	}
	cfg := l.putConfig(head + `      - {address: 10.71.1.2, port: kb1}
      - {address: 10.71.2.2, port: kb2}
`)
	d := l.startDaemonUp(cfg)
	got, failed := l.spread(80, 40)
	if failed != 0 || got["b1:80"] == 0 || got["b2:80"] == 0 {
		t.Fatalf("both backends up: answers %v, %d failed; want both, none failed", got, failed)
	}

	from := d.mark()
	l.backends[0].stop(80)
	stopped := time.Now()
	d.waitLog(t, from, 2*time.Second, map[string]string{"msg": "backend down", "backend": "10.71.1.2"})
	t.Logf("b1 down logged %v after its server stopped (50 ms checks, fall 2)", time.Since(stopped).Round(time.Millisecond))
	got, failed = l.spread(80, 30)
	if failed != 0 || got["b2:80"] != 30 {
		t.Fatalf("after b1 went down: %v, %d failed; want all 30 on b2", got, failed)
	}

	from = d.mark()
	l.backends[0].serve(t, 80)
	d.waitLog(t, from, 2*time.Second, map[string]string{"msg": "backend up", "backend": "10.71.1.2"})
	got, failed = l.spread(80, 40)
	if failed != 0 || got["b1:80"] == 0 {
		t.Fatalf("after b1 came back: %v, %d failed; want b1 to answer again", got, failed)
	}

	for _, b := range l.backends {
		var n int
		err := privtest.InNS(b.ns, func() error {
			var err error
			n, err = synRecv(80)
			return err
		})
		must(t, err, "read the backend's TCP table")
		if n != 0 {
			t.Errorf("%s holds %d connections in SYN-RECV on port 80", b.name, n)
		}
	}
}

// synRecv counts sockets on port in SYN-RECV in the calling thread's
// namespace.
func synRecv(port int) (int, error) {
	n := 0
	for _, f := range []string{"/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			return 0, err
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fields := strings.Fields(line)
			if len(fields) > 3 && strings.HasSuffix(fields[1], fmt.Sprintf(":%04X", port)) && fields[3] == "03" {
				n++
			}
		}
	}
	return n, nil
}
