package failreport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/keepbit/keepbit/internal/connload"
	"github.com/keepbit/keepbit/internal/control"
	"github.com/keepbit/keepbit/internal/lab"
)

// ServeFlag makes the report binary a backend: `-serve-backend NAME`.
const ServeFlag = "-serve-backend"

// Backend is one backend host and its server process.
type Backend struct {
	Name string
	Addr netip.Addr
	Host *lab.Host
	self string
	cmd  *exec.Cmd
	done chan struct{}
	// blackholed: routes that drop every answer (undo on restore).
	blackholed []netlink.Route
}

func (L *Lab) addBackend(name, addr string) (*Backend, error) {
	h, err := L.l.Host(name, "eth0", addr+"/24")
	if err != nil {
		return nil, err
	}
	// Direct server return: the VIP on lo, ARP answered for the host's
	// own address only, the client segment reached on-link.
	if err := h.Sysctl(map[string]string{"net/ipv4/conf/all/arp_ignore": "1", "net/ipv4/conf/all/arp_announce": "2"}); err != nil {
		return nil, err
	}
	if err := h.Do(func() error {
		for _, c := range [][]string{{"addr", "add", VIP + "/32", "dev", "lo"}, {"route", "add", "10.77.0.0/24", "dev", "eth0"}} {
			if out, err := exec.Command("ip", c...).CombinedOutput(); err != nil {
				return fmt.Errorf("ip %s: %v: %s", strings.Join(c, " "), err, out)
			}
		}
		return nil
	}); err != nil {
		return nil, err
	}
	b := &Backend{Name: name, Addr: netip.MustParseAddr(addr), Host: h, self: L.opts.Self}
	return b, b.Start()
}

// Start runs the backend's server process in its namespace and waits
// until it answers.
func (b *Backend) Start() error {
	b.cmd = exec.Command(b.self, ServeFlag, b.Name)
	b.cmd.Stderr = os.Stderr
	if err := b.Host.Do(b.cmd.Start); err != nil {
		return fmt.Errorf("start backend %s: %w", b.Name, err)
	}
	b.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(b.cmd, b.done)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var c net.Conn
		err := b.Host.Do(func() error {
			var err error
			c, err = net.DialTimeout("tcp", fmt.Sprintf("%s:%d", b.Addr, Port), 200*time.Millisecond)
			return err
		})
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-b.done:
			return fmt.Errorf("backend %s exited", b.Name)
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("backend %s does not answer", b.Name)
}

// Signal sends sig to the server process; SIGKILL waits for its end.
func (b *Backend) Signal(sig syscall.Signal) {
	if b.cmd == nil || b.cmd.Process == nil {
		return
	}
	_ = b.cmd.Process.Signal(sig)
	if sig == syscall.SIGKILL {
		<-b.done
	}
}

// Running reports whether the server process is alive.
func (b *Backend) Running() bool {
	select {
	case <-b.done:
		return false
	default:
		return b.done != nil
	}
}

// Blackhole makes the host drop every answer it would send, to the
// client and to the nodes' checks, while it goes on receiving: from
// outside, a host gone silent. on false undoes it.
func (b *Backend) Blackhole(on bool) error {
	h, err := b.Host.Handle()
	if err != nil {
		return err
	}
	defer h.Close()
	if !on {
		var errs []error
		for _, r := range b.blackholed {
			errs = append(errs, h.RouteDel(&r))
		}
		b.blackholed = nil
		return errors.Join(errs...)
	}
	for _, d := range []string{"10.77.0.0/25", "10.77.0.128/25", "10.77.1.0/28"} {
		_, dst, _ := net.ParseCIDR(d)
		r := netlink.Route{Dst: dst, Type: unix.RTN_BLACKHOLE}
		if err := h.RouteAdd(&r); err != nil {
			return fmt.Errorf("blackhole %s on %s: %w", d, b.Name, err)
		}
		b.blackholed = append(b.blackholed, r)
	}
	return nil
}

// Close stops the server process.
func (b *Backend) Close() {
	if b.Running() {
		_ = b.cmd.Process.Signal(syscall.SIGCONT)
		b.Signal(syscall.SIGKILL)
	}
}

func adminOf(action string) control.Admin {
	switch action {
	case "drain":
		return control.Draining
	case "disable":
		return control.Disabled
	}
	return control.Enabled
}

// ServeBackend is a backend process's main: connload's echo protocol on
// Port and an HTTP check target on :80 (/healthz). SIGUSR1 makes both
// answer slowly (after 100 ms, past the check timeout), SIGUSR2 quick
// again. It returns when ctx ends.
func ServeBackend(ctx context.Context, name string) error {
	var slow atomic.Bool
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGUSR2)
	go func() {
		for s := range sigs {
			slow.Store(s == syscall.SIGUSR1)
		}
	}()
	const delay = 100 * time.Millisecond
	ln, err := net.Listen("tcp", fmt.Sprintf(":%d", Port))
	if err != nil {
		return err
	}
	srv := connload.Serve(&slowListener{Listener: ln, slow: &slow, delay: delay}, name)
	defer srv.Close()
	hl, err := net.Listen("tcp", ":80")
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if slow.Load() {
			time.Sleep(delay)
		}
		fmt.Fprint(w, name)
	})}
	go func() { _ = hs.Serve(hl) }()
	<-ctx.Done()
	return hs.Close()
}

// slowListener hands out connections whose writes wait while slow is set.
type slowListener struct {
	net.Listener
	slow  *atomic.Bool
	delay time.Duration
}

func (l *slowListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &slowConn{Conn: c, l: l}, nil
}

type slowConn struct {
	net.Conn
	l *slowListener
}

func (c *slowConn) Write(p []byte) (int, error) {
	if c.l.slow.Load() {
		time.Sleep(c.l.delay)
	}
	return c.Conn.Write(p)
}
