package loader

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/privtest"
)

// TestAttachPinAdoptDetach: a process attaches the forwarder and dies by
// SIGKILL; forwarding goes on with nobody running; a new process adopts the
// pinned state under live traffic without losing a packet, changes it, and
// an explicit detach leaves nothing behind.
func TestAttachPinAdoptDetach(t *testing.T) {
	privtest.Require(t)
	tp := newTopo(t)
	root := pinRoot(t)
	client := tp.newEchoer(t)
	if client.ask("before", 300*time.Millisecond) {
		t.Fatal("echo answered before the forwarder was attached: the topology leaks")
	}

	// 1. A keepbit process attaches, configures, and is killed.
	helper := exec.Command("/proc/self/exe")
	helper.Env = append(os.Environ(), helperEnv+"=1", "KEEPBIT_PIN_ROOT="+root, "KEEPBIT_BACKEND_MAC="+tp.backendMAC.String())
	helper.Stderr = os.Stderr
	out, err := helper.StdoutPipe()
	must(t, err, "helper pipe")
	must(t, helper.Start(), "start helper")
	t.Cleanup(func() { _ = helper.Process.Kill(); _ = helper.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	must(t, err, "helper said nothing")
	if !strings.HasPrefix(line, "ready native") {
		t.Fatalf("helper: %q, want native attach", line)
	}
	must(t, helper.Process.Signal(syscall.SIGKILL), "kill helper")
	_ = helper.Wait()

	// 2. Nobody runs, the pinned program forwards.
	if !xdpAttached(t, tp.lbc) {
		t.Fatal("XDP detached when its process died")
	}
	for i := range 5 {
		if !client.ask(fmt.Sprintf("orphan-%d", i), time.Second) {
			t.Fatalf("no echo %d through the orphaned forwarder", i)
		}
	}

	// 3. Adopt under traffic: every request during the adoption is answered.
	var sent, answered atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			sent.Add(1)
			if client.ask(fmt.Sprintf("adopt-%d", i), time.Second) {
				answered.Add(1)
			}
		}
	}()
	time.Sleep(50 * time.Millisecond)
	dp, err := Open(context.Background(), Options{Interface: tp.lbc, PinRoot: root, HashSeed: 7})
	must(t, err, "adopt")
	time.Sleep(50 * time.Millisecond)
	close(stop)
	<-done
	t.Logf("during adoption: %d requests, %d answered", sent.Load(), answered.Load())
	if sent.Load() < 10 || answered.Load() != sent.Load() {
		t.Errorf("adoption lost traffic: %d of %d answered", answered.Load(), sent.Load())
	}
	if !dp.Adopted() || dp.Mode() != "adopted" {
		t.Errorf("Adopted() = %v, Mode() = %q; want an adoption", dp.Adopted(), dp.Mode())
	}
	svcs := dp.Services()
	key, spec := tp.spec()
	catchall := ServiceKey{VIP: key.VIP, Proto: TCP}
	if len(svcs) != 2 || svcs[0].Key != catchall || svcs[1].Key != key {
		t.Fatalf("adopted services = %+v, want %s and %s", svcs, catchall, key)
	}
	for _, s := range svcs {
		if len(s.Backends) != 1 || s.Backends[0].Port != tp.lbb || s.Backends[0].MAC.String() != tp.backendMAC.String() {
			t.Fatalf("adopted %s backends = %+v, want one via %s", s.Key, s.Backends, tp.lbb)
		}
	}
	// Service(key) is the same entry (what keepbitd resumes from), also
	// asked with the IPv4-mapped form of the VIP; an unknown key is not.
	for _, s := range svcs {
		mapped := s.Key
		mapped.VIP = netip.AddrFrom16(s.Key.VIP.As16())
		for _, k := range []ServiceKey{s.Key, mapped} {
			if one, ok := dp.Service(k); !ok || !reflect.DeepEqual(one, s) {
				t.Fatalf("Service(%s) = %+v, %v; want %+v", k, one, ok, s)
			}
		}
	}
	if _, ok := dp.Service(ServiceKey{VIP: netip.MustParseAddr("192.0.2.99"), Port: 80, Proto: TCP}); ok {
		t.Fatal("Service of an unknown key says it exists")
	}

	// 4. The adopted state can be changed: add a second (down) backend.
	spare := backend("10.99.2.3", "02:99:00:00:00:03").state(Down).port(tp.lbb)
	spec.Backends = append(spec.Backends, spare)
	if _, err := dp.ApplyService(key, spec); err != nil {
		t.Fatalf("apply after adoption: %v", err)
	}
	if !client.ask("after-change", time.Second) {
		t.Fatal("no echo after changing the adopted service")
	}
	st, err := dp.Stats()
	must(t, err, "stats")
	if st.Reasons["redirect"].Packets == 0 || st.Services[key].Packets == 0 {
		t.Errorf("counters did not survive adoption: %+v", st.Services)
	}

	// 5. Explicit detach: forwarding stops, pins are gone.
	must(t, dp.Detach(), "detach")
	if xdpAttached(t, tp.lbc) {
		t.Error("XDP still attached after Detach")
	}
	if _, err := os.Stat(PinDir(root, tp.lbc)); !os.IsNotExist(err) {
		entries, _ := os.ReadDir(filepath.Join(root, "keepbit"))
		t.Errorf("pin directory left behind (%v): %v", err, entries)
	}
	if client.ask("detached", 300*time.Millisecond) {
		t.Error("echo still answered after Detach")
	}
}

// TestAttachModes: native where the driver can, generic when asked, and
// Close keeps forwarding state pinned until RemovePinned.
func TestAttachModes(t *testing.T) {
	privtest.Require(t)
	for _, c := range []struct {
		name string
		mode AttachMode
		want string
	}{{"auto", AttachAuto, "native"}, {"native", AttachNative, "native"}, {"generic", AttachGeneric, "generic"}} {
		t.Run(c.name, func(t *testing.T) {
			root := pinRoot(t)
			addPort(t, "kbmode", lbMAC)
			dp, err := Open(context.Background(), Options{Interface: "kbmode", PinRoot: root, Mode: c.mode})
			must(t, err, "open")
			if dp.Mode() != c.want {
				t.Errorf("mode %q, want %q", dp.Mode(), c.want)
			}
			must(t, dp.Close(), "close")
			if !xdpAttached(t, "kbmode") {
				t.Fatal("Close detached the program")
			}
			must(t, RemovePinned(root, "kbmode"), "remove pinned")
			if xdpAttached(t, "kbmode") {
				t.Fatal("RemovePinned left the program attached")
			}
			if _, err := os.Stat(PinDir(root, "kbmode")); !os.IsNotExist(err) {
				t.Fatalf("pins left behind: %v", err)
			}
		})
	}
}
