package connload_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/keepbit/keepbit/internal/connload"
	"github.com/keepbit/keepbit/internal/lab"
	"github.com/keepbit/keepbit/internal/privtest"
)

func TestMain(m *testing.M) { os.Exit(privtest.Main(m)) }

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// TestHealthy: against a working backend nothing breaks, every answer
// names it, and the new-connection stream is answered.
func TestHealthy(t *testing.T) {
	srv := connload.Serve(listen(t), "b1")
	defer srv.Close()
	l, err := connload.Start(context.Background(), connload.Config{
		Target: srv.Addr().String(), Conns: 20, Interval: 5 * time.Millisecond, Rate: 100,
	})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	r := l.Stop()
	t.Log(r)
	if r.BrokenTotal != 0 {
		t.Errorf("broken: %v: %+v", r.Broken, r.BrokenConns())
	}
	if r.ByBackend["b1"] != 20 {
		t.Errorf("by backend %v, want all 20 on b1", r.ByBackend)
	}
	for _, c := range r.Conns {
		if c.Echoes < 10 {
			t.Errorf("%s: %d answers in 500ms at 5ms", c.Local, c.Echoes)
		}
	}
	if r.New.Attempts < 10 || r.NewFailed() != 0 || r.New.ByBackend["b1"] != r.New.OK {
		t.Errorf("new connections: %+v", r.New)
	}
	// Generous: a loaded 2-core machine may pause us, but not for a second.
	if r.GapMax > time.Second || r.GapMax == 0 {
		t.Errorf("gap max %v", r.GapMax)
	}
	if err := srv.Close(); err != nil {
		t.Error(err)
	}
	if srv.Open() != 0 {
		t.Errorf("%d connections open after Close", srv.Open())
	}
}

// misbehave answers the first n sequence numbers like a backend, then
// does what the case says.
type misbehave func(c *net.TCPConn, seq uint64) (reply string, stop bool)

func fakeBackend(t *testing.T, after uint64, then misbehave) string {
	ln := listen(t)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			go func() {
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					var seq uint64
					fmt.Sscan(line, &seq)
					reply, stop := fmt.Sprintf("%d b1\n", seq), false
					if seq >= after {
						reply, stop = then(c.(*net.TCPConn), seq)
					}
					if reply != "" {
						c.Write([]byte(reply))
					}
					if stop {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// TestBreaks: each way a connection can break is told apart.
func TestBreaks(t *testing.T) {
	for _, tc := range []struct {
		name    string
		then    misbehave
		want    connload.Cause
		backend []string
		minGap  time.Duration
	}{
		{"reset", func(c *net.TCPConn, _ uint64) (string, bool) {
			c.SetLinger(0) // close sends RST
			c.Close()
			return "", true
		}, connload.Reset, []string{"b1"}, 0},
		{"closed", func(c *net.TCPConn, _ uint64) (string, bool) { c.Close(); return "", true }, connload.Closed, []string{"b1"}, 0},
		{"stalled", func(*net.TCPConn, uint64) (string, bool) { return "", false }, connload.Stalled, []string{"b1"}, 300 * time.Millisecond},
		{"moved", func(_ *net.TCPConn, seq uint64) (string, bool) { return fmt.Sprintf("%d b2\n", seq), false }, connload.Moved, []string{"b1", "b2"}, 0},
		{"out of sequence", func(_ *net.TCPConn, seq uint64) (string, bool) { return fmt.Sprintf("%d b1\n", seq+5), false }, connload.BadReply, []string{"b1"}, 0},
		{"garbage", func(*net.TCPConn, uint64) (string, bool) { return "HTTP/1.1 400\n", false }, connload.BadReply, []string{"b1"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := fakeBackend(t, 5, tc.then)
			l, err := connload.Start(context.Background(), connload.Config{
				Target: addr, Conns: 3, Interval: 5 * time.Millisecond, Stall: 300 * time.Millisecond,
			})
			if err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(5 * time.Second)
			for l.Report().BrokenTotal < 3 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			r := l.Stop()
			if r.Broken[tc.want] != 3 || r.BrokenTotal != 3 {
				t.Fatalf("broken %v, want 3 %q: %+v", r.Broken, tc.want, r.Conns)
			}
			for _, c := range r.Conns {
				if strings.Join(c.Backends, ",") != strings.Join(tc.backend, ",") || c.Err == "" || c.BrokenAt.IsZero() {
					t.Errorf("%+v: want backends %v and the error", c, tc.backend)
				}
			}
			if r.GapMax < tc.minGap {
				t.Errorf("gap max %v, want >= %v", r.GapMax, tc.minGap)
			}
		})
	}
}

// TestNewConnFailures: new connections to a port nobody listens on are
// counted as refused; Start fails when a long-lived connection cannot open.
func TestNewConnFailures(t *testing.T) {
	ln := listen(t)
	addr := ln.Addr().String()
	ln.Close()
	l, err := connload.Start(context.Background(), connload.Config{Target: addr, Rate: 100})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	r := l.Stop()
	if r.New.Attempts < 5 || r.New.Failed[connload.Refused] != r.New.Attempts || r.New.OK != 0 {
		t.Errorf("new connections to a closed port: %+v", r.New)
	}
	if _, err := connload.Start(context.Background(), connload.Config{Target: addr, Conns: 1}); err == nil {
		t.Error("Start with an unreachable target: no error")
	}
}

// TestResetGaps: a gap before ResetGaps is forgotten.
func TestResetGaps(t *testing.T) {
	srv := connload.Serve(listen(t), "b1")
	defer srv.Close()
	l, err := connload.Start(context.Background(), connload.Config{Target: srv.Addr().String(), Conns: 2, Interval: 400 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Stop()
	time.Sleep(450 * time.Millisecond)
	if g := l.Report().GapMax; g < 350*time.Millisecond {
		t.Fatalf("gap max %v at a 400ms interval", g)
	}
	l.ResetGaps()
	if g := l.Report().GapMax; g > 100*time.Millisecond {
		t.Errorf("gap max %v right after ResetGaps", g)
	}
}

func TestPercentile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		var out []time.Duration
		for _, x := range v {
			out = append(out, time.Duration(x)*time.Millisecond)
		}
		return out
	}
	for _, tc := range []struct {
		in   []time.Duration
		q    float64
		want time.Duration
	}{
		{nil, 0.5, 0},
		{ms(7), 0.99, 7 * time.Millisecond},
		{ms(4, 1, 3, 2), 0.5, 2 * time.Millisecond},
		{ms(4, 1, 3, 2), 1, 4 * time.Millisecond},
		{ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 0.99, 10 * time.Millisecond},
		{ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 0.9, 9 * time.Millisecond},
	} {
		if got := connload.Percentile(tc.in, tc.q); got != tc.want {
			t.Errorf("Percentile(%v, %v) = %v, want %v", tc.in, tc.q, got, tc.want)
		}
	}
}

// TestInNamespace: a server listening inside a namespace answers clients
// dialing from another one (through lab.DialContext); neither socket is
// in the test's own namespace.
func TestInNamespace(t *testing.T) {
	privtest.Require(t)
	a, b := privtest.NewNS(t), privtest.NewNS(t)
	// NewVeth returns once both ends have carrier: a SYN sent earlier
	// could be lost and the 1 s dial time out.
	privtest.Veth(t, lab.VethEnd{NS: a, Name: "cl0", Addrs: []string{"10.99.1.1/24"}},
		lab.VethEnd{NS: b, Name: "sv0", Addrs: []string{"10.99.1.2/24"}})
	srv, err := connload.Listen(b, "10.99.1.2:7000", "b-ns")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if _, err := connload.Listen(netns.None(), "10.99.1.2:7000", "here"); err == nil {
		t.Fatal("the test's own namespace has the server's address")
	}
	l, err := connload.Start(context.Background(), connload.Config{
		Target: "10.99.1.2:7000", Dial: lab.DialContext(a, time.Second), Conns: 5, Rate: 50,
	})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	r := l.Stop()
	if r.BrokenTotal != 0 || r.ByBackend["b-ns"] != 5 || r.NewFailed() != 0 || r.New.OK == 0 {
		t.Errorf("through namespaces: %v", r)
	}
}
