// Package loader owns Keepbit's BPF objects: it loads, attaches, pins and
// adopts the XDP forwarder and is the only code that touches its maps.
// Callers speak in services, backends, states and counters.
package loader

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// AttachMode selects how the program is attached to the interface.
type AttachMode int

const (
	// AttachAuto tries native (driver) XDP and falls back to generic XDP.
	AttachAuto AttachMode = iota
	AttachNative
	AttachGeneric
)

// DefaultPinRoot is where bpffs is expected (and mounted when missing).
const DefaultPinRoot = "/sys/fs/bpf"

// Options configure Open.
type Options struct {
	// Interface is the port the forwarder runs on. Its index and MAC are
	// the defaults for backends that name no egress port.
	Interface string
	// PinRoot is a bpffs mount point; state is pinned under
	// PinRoot/keepbit/<Interface>. Default DefaultPinRoot.
	PinRoot string
	// NoAttach loads the program and maps without attaching or pinning:
	// for packet tests and benchmarks that drive it with BPF_PROG_RUN.
	NoAttach bool
	Mode     AttachMode
	// HashSeed must be the same on every node that can hold a VIP.
	HashSeed uint32
	// FlowTableSize is the flow table's capacity; 0 keeps the default.
	// It is fixed when the maps are first created.
	FlowTableSize uint32
	// FlowCacheSize is the per-CPU flow cache's entries (96 bytes each,
	// per CPU), a power of two from MinFlowCacheSize to MaxFlowCacheSize;
	// 0 keeps DefaultFlowCacheSize. Established flows beyond what the
	// cache holds take the slow path (a flow table lookup) on every
	// packet: size it for the flows a CPU sees at once. The cache is not
	// pinned, so a restart may change it.
	FlowCacheSize uint32
	// Program is the build of the forwarder to load; ProgramAuto (the
	// zero value) picks the newest the kernel runs.
	Program Program
	// FlowSharing configures the flow reports and the shared flow lookup
	// (SetFlowSharing changes it later).
	FlowSharing FlowSharing
	Logger      *slog.Logger
}

// Dataplane is the forwarder on one interface.
type Dataplane struct {
	opts    Options
	log     *slog.Logger
	ifindex int
	ifmac   net.HardwareAddr
	pinDir  string
	objs    keepbitObjects
	inner   *ebpf.MapSpec
	xdp     link.Link
	mode    string
	adopted bool
	running bool // the background loops were started
	progID  ebpf.ProgramID
	program Program              // the build loaded (Options.Program resolved)
	maps    map[string]*ebpf.Map // the collection's maps by name (owned by objs)
	// nl asks the kernel about the interface in the network namespace
	// Open ran in, whichever thread asks (CheckAlive).
	nl *netlink.Handle

	aliveMu sync.Mutex
	alive   aliveState // CheckAlive's memory of earlier samples

	reportReader atomic.Bool // ReadFlowReports is running (one reader per ring buffer)

	// applyMu serializes structural changes (services, tables); it may be
	// held across RCU waits. mu guards the index and is only held for map
	// writes that return in microseconds, so state changes never wait
	// behind a table being prepared.
	applyMu  sync.Mutex
	mu       sync.Mutex
	services map[ServiceKey]*service
	members  map[uint32]*member
	freeSvc  []uint32
	freeBe   []uint32 // FIFO: a released backend ID is reused as late as possible
	lastInc  []uint32 // last incarnation written per backend ID
	// noBatch makes batchWrite and installFDs write one element at a
	// time, as on kernels without batch operations (tests).
	noBatch bool
	// countersZero has a bit set for each backend ID whose counters
	// (backend_stats, per CPU, and backend_syn_retrans) are known to be
	// zero: every ID of counter maps this process created, until the ID
	// is first given to a backend. Such an ID needs no reset when a
	// backend takes it, which at a start saves two writes per backend (a
	// quarter of the start's map writes); adopted maps have none set.
	countersZero []uint64
	seq          []uint32 // last state word sequence written per backend ID
	ports        map[uint32]bool
	dirty        map[ServiceKey]bool
	building     int                    // services rebuildDirty took from dirty and has not written yet
	filter       [vipFilterWords]uint64 // what vip_filter holds

	// Grace periods. XDP runs under rcu_read_lock, so once an RCU grace
	// period has passed after a write, no packet still works with what the
	// write replaced. epoch numbers the writes that retire something (a
	// table switch, an ID release); graceDone is the highest epoch a
	// completed grace period covers. A released backend ID waits in
	// quarantine, and a retired table buffer waits, until graceDone
	// reaches its epoch; graceLoop runs a grace period in the background
	// after each such write so that the next change rarely waits.
	epoch      atomic.Uint64
	graceDone  atomic.Uint64
	graceKick  chan struct{}
	graceExit  chan struct{}
	quarantine []quarantined // guarded by mu
	// fence orders a table's words before the switch to it (see writeTable).
	fence atomic.Uint64

	kick chan struct{}
	// readTurn lets one counter or flow-table reader into the kernel at a
	// time: on a small host, readers walking in parallel occupy every core
	// and the control loop's state write waits for the scheduler, not for
	// a lock. Writers never take it.
	readTurn chan struct{}
	stop     chan struct{}
	done     chan struct{}

	// beforeWrite, when set (tests only), runs before every kernel write
	// with the write's op name; an error it returns is returned instead of
	// performing the write. Failing one write and every later one
	// simulates the process dying right before that write. It may be
	// called from several goroutines at once (buffer installs run in
	// parallel, the rebuild loop runs in the background): guard its state.
	beforeWrite func(op string) error
	// waitRCUHook, when set (tests only), replaces the wait for an RCU
	// grace period. Atomic: the background grace loop reads it.
	waitRCUHook atomic.Pointer[func()]
}

// quarantined is a released backend ID that a packet in flight may still
// hold: it is reused only after a grace period that started after epoch.
type quarantined struct {
	id    uint32
	epoch uint64
}

// membarrierCmdGlobal is MEMBARRIER_CMD_GLOBAL (linux/membarrier.h): the
// kernel answers it with synchronize_rcu().
const membarrierCmdGlobal = 1

// rcuFallback bounds an RCU grace period where membarrier cannot wait for
// one (nohz_full kernels answer EINVAL): far above the 124 ms p99 measured
// for a grace period on a busy host.
const rcuFallback = time.Second

// waitRCU returns after an RCU grace period: every XDP program run that
// started before the call has finished. membarrier(MEMBARRIER_CMD_GLOBAL)
// is exactly synchronize_rcu() and needs no map or privilege.
func (d *Dataplane) waitRCU() {
	if hook := d.waitRCUHook.Load(); hook != nil {
		(*hook)()
		return
	}
	if _, _, errno := unix.Syscall(unix.SYS_MEMBARRIER, membarrierCmdGlobal, 0, 0); errno != 0 {
		time.Sleep(rcuFallback)
	}
}

// retire numbers a write that made something unreachable for new packets,
// asks for a grace period in the background, and returns the epoch that
// grace period must reach.
func (d *Dataplane) retire() uint64 {
	e := d.epoch.Add(1)
	select {
	case d.graceKick <- struct{}{}:
	default:
	}
	return e
}

// grace waits for a grace period that starts now, and records that it
// covers every epoch retired before it started.
func (d *Dataplane) grace() {
	target := d.epoch.Load()
	d.waitRCU()
	for {
		done := d.graceDone.Load()
		if done >= target || d.graceDone.CompareAndSwap(done, target) {
			return
		}
	}
}

// waitGrace returns once no packet can still see what the write of epoch e
// retired; usually the background grace period has passed already.
func (d *Dataplane) waitGrace(e uint64) {
	if d.graceDone.Load() < e {
		d.grace()
	}
}

func (d *Dataplane) graceLoop() {
	defer close(d.graceExit)
	for {
		select {
		case <-d.stop:
			return
		case <-d.graceKick:
			d.grace()
		}
	}
}

// kernelWrite performs one kernel write of the loader: every map update,
// delete and inner-map install goes through it, so tests can
// stop the loader between any two writes (see beforeWrite). op is a short
// stable name of what is written: backend_state, backends, backend_stats,
// service_stats, table_write, service_active, tables_install,
// tables_delete, services, vips, vip_filter, tx_ports, settings,
// share_settings, shared_flows, link_update.
func (d *Dataplane) kernelWrite(op string, write func() error) error {
	if d.beforeWrite != nil {
		if err := d.beforeWrite(op); err != nil {
			return err
		}
	}
	return write()
}

// Open loads the forwarder for opts.Interface. With state pinned by an
// earlier process it adopts that state and upgrades the attached program
// in place through its bpf_link, so forwarding never stops; otherwise it
// creates the maps, pins them and attaches.
func Open(ctx context.Context, opts Options) (*Dataplane, error) {
	if opts.Interface == "" {
		return nil, errors.New("interface: required")
	}
	if opts.PinRoot == "" {
		opts.PinRoot = DefaultPinRoot
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	// Kernels before 5.11 charge maps to RLIMIT_MEMLOCK, which the flow
	// table alone exceeds (a no-op on later ones).
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("lift the memlock limit for BPF maps: %w", err)
	}
	ifc, err := net.InterfaceByName(opts.Interface)
	if err != nil {
		return nil, fmt.Errorf("interface %q: %w", opts.Interface, err)
	}
	d := &Dataplane{
		opts:      opts,
		log:       opts.Logger.With("interface", opts.Interface),
		ifindex:   ifc.Index,
		ifmac:     ifc.HardwareAddr,
		pinDir:    PinDir(opts.PinRoot, opts.Interface),
		services:  map[ServiceKey]*service{},
		members:   map[uint32]*member{},
		lastInc:   make([]uint32, maxBackends),
		seq:       make([]uint32, maxBackends),
		ports:     map[uint32]bool{},
		dirty:     map[ServiceKey]bool{},
		kick:      make(chan struct{}, 1),
		readTurn:  make(chan struct{}, 1),
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
		graceKick: make(chan struct{}, 1),
		graceExit: make(chan struct{}),
	}
	if d.nl, err = netlink.NewHandle(); err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	if err := d.load(ctx); err != nil {
		if d.nl != nil { // a failed adoption may have closed it already
			d.nl.Close()
		}
		return nil, err
	}
	d.running = true
	go d.rebuildLoop()
	go d.graceLoop()
	if len(d.dirty) > 0 { // readBack found tables to repair
		d.kick <- struct{}{}
	}
	return d, nil
}

// PinDir is where the state of the forwarder on iface is pinned.
func PinDir(root, iface string) string {
	return filepath.Join(root, "keepbit", iface)
}

func (d *Dataplane) load(ctx context.Context) error {
	prog, err := ChooseProgram(d.opts.Program)
	if err != nil {
		return err
	}
	spec, err := programSpec(prog)
	if err != nil {
		return fmt.Errorf("load BPF spec: %w", err)
	}
	d.program = prog
	if d.opts.FlowTableSize > 0 {
		spec.Maps[keepbitMapFlows].MaxEntries = d.opts.FlowTableSize
		spec.Maps[keepbitMapSharedFlows].MaxEntries = d.opts.FlowTableSize
	}
	if err := sizeFlowCache(spec, d.opts.FlowCacheSize); err != nil {
		return err
	}
	d.inner = spec.Maps[keepbitMapTables].InnerMap.Copy()
	// Table buffers carry no BTF: loading the key and value types into
	// the kernel was half of each buffer's creation (25 of 50 us here,
	// two buffers per service), and a buffer's words are plain IDs.
	d.inner.Key, d.inner.Value = nil, nil
	// The outer map's template too: Linux 5.15-6.1 compare an inner map's
	// timer offset with the template's, which BTF decides (a struct value
	// with BTF and a buffer without would differ).
	tables := spec.Maps[keepbitMapTables]
	tables.InnerMap = tables.InnerMap.Copy()
	tables.InnerMap.Key, tables.InnerMap.Value = nil, nil

	if d.opts.NoAttach {
		if _, err := d.loadCollection(spec, nil); err != nil {
			return fmt.Errorf("load BPF objects: %w", err)
		}
		d.countersCreated()
		return d.afterLoad()
	}

	mount := d.opts.PinRoot
	if err := ensureBPFFS(mount, d.pinDir); err != nil {
		return err
	}
	linkPin := filepath.Join(d.pinDir, "link")
	if exists(linkPin) {
		return d.adopt(ctx, spec, linkPin)
	}
	return d.create(ctx, spec, linkPin)
}

func (d *Dataplane) create(ctx context.Context, spec *ebpf.CollectionSpec, linkPin string) (err error) {
	maps, err := d.loadCollection(spec, nil)
	if err != nil {
		return fmt.Errorf("load BPF objects: %w", err)
	}
	d.countersCreated()
	defer func() {
		if err != nil {
			d.objs.Close()
			_ = os.RemoveAll(d.pinDir)
		}
	}()
	for _, name := range pinnedMapNames(spec) {
		if err := maps[name].Pin(filepath.Join(d.pinDir, name)); err != nil {
			return fmt.Errorf("pin map %s: %w", name, err)
		}
	}
	if err := d.afterLoad(); err != nil {
		return err
	}
	if err := d.attach(); err != nil {
		return err
	}
	if err := d.xdp.Pin(linkPin); err != nil {
		_ = d.xdp.Close()
		return fmt.Errorf("pin XDP link: %w", err)
	}
	d.log.Info("dataplane attached", "mode", d.mode, "pins", d.pinDir)
	return nil
}

// adopt takes over the state pinned under d.pinDir: maps that fit this
// version are used as they are, maps an earlier version did not have are
// created (and pinned once the new program runs), maps in an earlier
// layout with a known migration are copied into this layout; anything
// else is refused.
func (d *Dataplane) adopt(ctx context.Context, spec *ebpf.CollectionSpec, linkPin string) error {
	pinned, err := openPinned(spec, d.pinDir)
	if err != nil {
		return err
	}
	maps, err := d.loadCollection(spec, &ebpf.CollectionOptions{MapReplacements: pinned.replacements()})
	if err != nil {
		pinned.close()
		return fmt.Errorf("pinned maps do not fit this version (detach to start afresh): %w", err)
	}
	l, err := link.LoadPinnedLink(linkPin, nil)
	if err != nil {
		pinned.close()
		d.objs.Close()
		return fmt.Errorf("adopt pinned XDP link: %w", err)
	}
	// The settings first: a map this version created starts empty, and the
	// new program must not see a zero hash seed.
	if err := d.writeSettings(); err != nil {
		pinned.close()
		l.Close()
		d.objs.Close()
		return err
	}
	// Swap the program under the running link: no packet is lost, unlike
	// a detach and re-attach.
	if err := d.kernelWrite("link_update", func() error { return l.Update(d.objs.KeepbitXdp) }); err != nil {
		pinned.close()
		l.Close()
		d.objs.Close()
		return fmt.Errorf("upgrade XDP program through its link: %w", err)
	}
	d.xdp = l
	d.mode = "adopted"
	err = pinned.finish(d.pinDir, maps)
	pinned.close() // the program and d.objs hold their own references
	if err != nil {
		d.Close()
		return fmt.Errorf("adopt pinned state: %w", err)
	}
	if info, err := l.Info(); err == nil {
		if xi := info.XDP(); xi != nil && xi.Ifindex != uint32(d.ifindex) {
			d.log.Warn("pinned link is attached to another ifindex", "pinned", xi.Ifindex, "want", d.ifindex)
		}
	}
	d.adopted = true
	if err := d.readBack(); err != nil {
		d.Close()
		return fmt.Errorf("read back pinned state: %w", err)
	}
	d.log.Info("dataplane adopted", "services", len(d.services), "backends", len(d.members),
		"created", pinned.missing, "migrated", len(pinned.migrated))
	return nil
}

func (d *Dataplane) afterLoad() error {
	d.resetIndex()
	return d.writeSettings()
}

func (d *Dataplane) writeSettings() error {
	s := keepbitSettingsValue{HashSeed: d.opts.HashSeed}
	if err := d.kernelWrite("settings", func() error { return d.objs.Settings.Put(uint32(0), &s) }); err != nil {
		return fmt.Errorf("write settings: %w", err)
	}
	return d.SetFlowSharing(d.opts.FlowSharing)
}

func (d *Dataplane) attach() error {
	try := func(flags link.XDPAttachFlags) (link.Link, error) {
		return link.AttachXDP(link.XDPOptions{Program: d.objs.KeepbitXdp, Interface: d.ifindex, Flags: flags})
	}
	switch d.opts.Mode {
	case AttachGeneric:
		l, err := try(link.XDPGenericMode)
		if err != nil {
			return fmt.Errorf("attach generic XDP to %s: %w", d.opts.Interface, err)
		}
		d.xdp, d.mode = l, "generic"
		return nil
	}
	l, err := try(link.XDPDriverMode)
	if err == nil {
		d.xdp, d.mode = l, "native"
		return nil
	}
	if d.opts.Mode == AttachNative {
		return fmt.Errorf("attach native XDP to %s: %w", d.opts.Interface, err)
	}
	d.log.Warn("driver cannot run native XDP; falling back to generic XDP, which is much slower", "error", err)
	l, gerr := try(link.XDPGenericMode)
	if gerr != nil {
		return fmt.Errorf("attach XDP to %s: native: %v; generic: %w", d.opts.Interface, err, gerr)
	}
	d.xdp, d.mode = l, "generic"
	return nil
}

// Mode says how the program is attached: native, generic, adopted (a pinned
// link taken over from an earlier process) or "" when not attached.
func (d *Dataplane) Mode() string { return d.mode }

// Adopted reports whether Open took over pinned state.
func (d *Dataplane) Adopted() bool { return d.adopted }

// Close releases this process's handles. Pinned state stays, and with it
// the attached program keeps forwarding with the last written state.
func (d *Dataplane) Close() error {
	select {
	case <-d.stop:
	default:
		close(d.stop)
		if d.running {
			<-d.done
			<-d.graceExit
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, s := range d.services {
		s.closeBuffers()
	}
	var errs []error
	if d.xdp != nil {
		errs = append(errs, d.xdp.Close())
		d.xdp = nil
	}
	errs = append(errs, d.objs.Close())
	if d.nl != nil {
		d.nl.Close()
		d.nl = nil
	}
	return errors.Join(errs...)
}

// Detach stops forwarding: it removes the pinned link (detaching the
// program) and the pinned maps, then closes. Only an explicit operator
// command should call it.
func (d *Dataplane) Detach() error {
	if d.xdp != nil {
		if err := d.xdp.Unpin(); err != nil {
			return fmt.Errorf("unpin XDP link: %w", err)
		}
	}
	err := d.Close()
	if !d.opts.NoAttach {
		if rerr := os.RemoveAll(d.pinDir); rerr != nil {
			err = errors.Join(err, fmt.Errorf("remove pins: %w", rerr))
		}
	}
	return err
}

// RemovePinned detaches the forwarder pinned for iface under root without
// adopting it: the recovery path when pinned state does not fit this version.
func RemovePinned(root, iface string) error {
	if root == "" {
		root = DefaultPinRoot
	}
	dir := PinDir(root, iface)
	linkPin := filepath.Join(dir, "link")
	if exists(linkPin) {
		l, err := link.LoadPinnedLink(linkPin, nil)
		if err != nil {
			return fmt.Errorf("load pinned link: %w", err)
		}
		// Detached explicitly: dropping the last reference detaches too,
		// but Linux 5.10 still showed the program attached right after.
		if err := l.Detach(); err != nil && !errors.Is(err, ebpf.ErrNotSupported) {
			l.Close()
			return fmt.Errorf("detach link: %w", err)
		}
		if err := l.Unpin(); err != nil {
			l.Close()
			return fmt.Errorf("unpin link: %w", err)
		}
		l.Close()
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	return nil
}

// Program is the build of the forwarder this dataplane loaded.
func (d *Dataplane) Program() Program { return d.program }
