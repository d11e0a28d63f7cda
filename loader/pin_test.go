package loader

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/keepbit/keepbit/internal/privtest"
)

// tempPinRoot is a fresh pin root (Open mounts bpffs on it) that is
// unmounted when the test ends.
func tempPinRoot(t testing.TB) string {
	dir := t.TempDir()
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// attachedPort is a veth port for a test that attaches (and pins) the
// forwarder; whatever is pinned for it is removed when the test ends.
func attachedPort(t testing.TB, root string) string {
	name := fmt.Sprintf("kbp%06x", rand.Uint32()&0xffffff)
	addPort(t, name, lbMAC)
	t.Cleanup(func() { _ = RemovePinned(root, name) })
	return name
}

// programMapIDs returns the IDs of the maps the attached program uses.
func programMapIDs(t testing.TB, d *Dataplane) []ebpf.MapID {
	t.Helper()
	info, err := d.objs.KeepbitXdp.Info()
	must(t, err, "program info")
	ids, ok := info.MapIDs()
	if !ok {
		t.Fatal("kernel does not report the program's maps")
	}
	return ids
}

// checkPins: every map of this version is pinned under the pin directory,
// and the pin is the map the running program uses.
func checkPins(t testing.TB, d *Dataplane) {
	t.Helper()
	spec, err := loadKeepbit()
	must(t, err, "spec")
	used := programMapIDs(t, d)
	for _, name := range pinnedMapNames(spec) {
		m, err := ebpf.LoadPinnedMap(filepath.Join(d.pinDir, name), nil)
		if err != nil {
			t.Errorf("map %s: not pinned: %v", name, err)
			continue
		}
		info, err := m.Info()
		m.Close()
		must(t, err, "map info")
		id, _ := info.ID()
		if !slices.Contains(used, id) {
			t.Errorf("map %s: pin names map %d, which the attached program does not use (%v)", name, id, used)
		}
	}
}

// TestPinsFollowTheCollection: Open pins every map of the collection, and
// an adoption of a pin directory that lacks a map this version has (one
// written by an earlier version) creates and pins that map and keeps the
// others, entries included.
func TestPinsFollowTheCollection(t *testing.T) {
	privtest.Require(t)
	root := tempPinRoot(t)
	port := attachedPort(t, root)
	key := svc("198.51.100.70", 80, TCP)
	ctx := context.Background()

	d, err := Open(ctx, Options{Interface: port, PinRoot: root, HashSeed: 7})
	must(t, err, "open")
	checkPins(t, d)
	if _, err := d.ApplyService(key, ServiceSpec{Backends: []BackendSpec{backend("10.9.1.1", "02:ee:00:00:01:01")}}); err != nil {
		t.Fatal(err)
	}
	must(t, d.Close(), "close")

	for _, gone := range []string{keepbitMapFrags, keepbitMapFlowCache} {
		t.Run("without "+gone, func(t *testing.T) {
			must(t, os.Remove(filepath.Join(PinDir(root, port), gone)), "remove pin")
			d, err := Open(ctx, Options{Interface: port, PinRoot: root, HashSeed: 7})
			must(t, err, "adopt a pin directory without "+gone)
			defer d.Close()
			if !d.Adopted() {
				t.Fatal("not adopted")
			}
			checkPins(t, d)
			svcs := d.Services()
			if len(svcs) != 1 || svcs[0].Key != key || len(svcs[0].Backends) != 1 {
				t.Fatalf("adopted services %+v, want %s with its backend", svcs, key)
			}
		})
	}
}
