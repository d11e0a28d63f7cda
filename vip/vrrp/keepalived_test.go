package vrrp

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/net/ipv4"

	"github.com/keepbit/keepbit/internal/lab"
	"github.com/keepbit/keepbit/internal/privtest"
)

// TestKeepalivedInterop puts keepalived (VRRPv3, 100 ms adverts) on the
// other end of a veth: its advertisements must parse here, checksum and
// TTL included, and ours must make it back off and, once they stop, take
// over again.
func TestKeepalivedInterop(t *testing.T) {
	privtest.Require(t)
	bin, err := exec.LookPath("keepalived")
	if err != nil {
		t.Fatal("keepalived not installed: `make test` installs it (apt-get install keepalived)")
	}
	kns := privtest.NewNS(t)
	privtest.Veth(t, lab.VethEnd{NS: netns.None(), Name: "kbv0", Addrs: []string{"10.60.0.1/24"}},
		lab.VethEnd{NS: kns, Name: "eth0", Addrs: []string{"10.60.0.2/24"}})
	h, err := lab.Handle(kns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Delete()

	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	conf := filepath.Join(dir, "keepalived.conf")
	notify := func(s string) string { return fmt.Sprintf(`"/bin/sh -c 'echo %s >> %s'"`, s, state) }
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`global_defs {
  vrrp_version 3
  script_user root
  enable_script_security
}
vrrp_instance VI_1 {
  state BACKUP
  interface eth0
  virtual_router_id 51
  priority 150
  advert_int 0.1
  virtual_ipaddress {
    192.0.2.10/32
  }
  notify_master %s
  notify_backup %s
}
`, notify("master"), notify("backup"))), 0o644); err != nil {
		t.Fatal(err)
	}
	var ka *exec.Cmd
	if err := privtest.InNS(kns, func() error {
		ka = exec.Command(bin, "--dont-fork", "--log-console", "--vrrp", "--use-file", conf,
			"--pid", filepath.Join(dir, "k.pid"), "--vrrp_pid", filepath.Join(dir, "v.pid"))
		logf, err := os.Create(filepath.Join(dir, "keepalived.log"))
		if err != nil {
			return err
		}
		ka.Stdout, ka.Stderr = logf, logf
		ka.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		return ka.Start()
	}); err != nil {
		t.Fatalf("start keepalived: %v", err)
	}
	t.Cleanup(func() {
		_ = ka.Process.Kill()
		_ = ka.Wait()
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(dir, "keepalived.log"))
			t.Logf("keepalived log:\n%s", log)
		}
	})

	c, err := net.ListenPacket("ip4:112", "0.0.0.0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pc := ipv4.NewPacketConn(c)
	ifi, _ := net.InterfaceByName("kbv0")
	if err := pc.JoinGroup(ifi, &net.IPAddr{IP: MulticastV4.AsSlice()}); err != nil {
		t.Fatal(err)
	}
	_ = pc.SetControlMessage(ipv4.FlagTTL|ipv4.FlagDst, true)
	_ = pc.SetMulticastTTL(TTL)
	_ = pc.SetMulticastInterface(ifi)

	// 1. keepalived becomes master and advertises; we parse it.
	buf := make([]byte, 1500)
	_ = pc.SetReadDeadline(time.Now().Add(3 * time.Second))
	var got Advertisement
	for {
		n, cm, from, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatalf("no advertisement from keepalived: %v", err)
		}
		src, _ := netip.AddrFromSlice(from.(*net.IPAddr).IP)
		dst, _ := netip.AddrFromSlice(cm.Dst)
		if src.Unmap() != netip.MustParseAddr("10.60.0.2") {
			continue
		}
		if cm.TTL != TTL {
			t.Fatalf("keepalived's advertisement has TTL %d", cm.TTL)
		}
		got, err = Parse(buf[:n], src.Unmap(), dst.Unmap())
		if err != nil {
			t.Fatalf("keepalived's advertisement %x does not parse: %v", buf[:n], err)
		}
		break
	}
	if got.VRID != 51 || got.Priority != 150 || got.Interval != 100*time.Millisecond || len(got.Addrs) != 1 || got.Addrs[0] != netip.MustParseAddr("192.0.2.10") {
		t.Fatalf("keepalived advertised %+v", got)
	}
	waitState(t, state, "master")

	// 2. We advertise priority 200: keepalived must back off and release the VIP.
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		ad := Advertisement{VRID: 51, Priority: 200, Interval: 100 * time.Millisecond, Addrs: got.Addrs}
		b, _ := ad.Marshal(netip.MustParseAddr("10.60.0.1"), MulticastV4)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			_, _ = pc.WriteTo(b, nil, &net.IPAddr{IP: MulticastV4.AsSlice()})
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	waitState(t, state, "backup")
	if hasAddr(t, h, "eth0", "192.0.2.10") {
		t.Fatal("keepalived kept the VIP after backing off")
	}

	// 3. We go silent: keepalived takes over after its Master_Down_Interval.
	close(stop)
	<-done
	silent := time.Now()
	waitState(t, state, "master")
	t.Logf("keepalived took over %v after our last advertisement", time.Since(silent).Round(time.Millisecond))
}

func waitState(t *testing.T, file, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(file)
		lines := strings.Fields(string(b))
		if len(lines) > 0 && lines[len(lines)-1] == want {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	b, _ := os.ReadFile(file)
	t.Fatalf("keepalived never reported %s (notify log: %q)", want, b)
}

func hasAddr(t *testing.T, h *netlink.Handle, link, addr string) bool {
	l, err := h.LinkByName(link)
	if err != nil {
		t.Fatal(err)
	}
	as, _ := h.AddrList(l, netlink.FAMILY_V4)
	for _, a := range as {
		if a.IP.String() == addr {
			return true
		}
	}
	return false
}
