package loader

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/keepbit/keepbit/internal/maglev"
)

// The reference model of the churn test (churn_test.go): what the dataplane
// must do, written without looking at how it does it. It knows services,
// their backends and states, and, per flow, the backend the flow is
// established on. Backends are identified in forwarded frames by their
// destination MAC, which the generator keeps unique per (service, backend).

// churnSeed is the hash seed of every churn dataplane; the model predicts
// Maglev choices with it.
const churnSeed = 7

// churnKeys is the universe of services the generator creates and deletes:
// v4 and v6 VIPs, port services next to a port-0 catch-all of the same VIP
// (so a port service appearing or leaving changes which service a packet
// belongs to), tcp and udp.
var churnKeys = []ServiceKey{
	{VIP: netip.MustParseAddr("198.51.100.10"), Port: 80, Proto: TCP},
	{VIP: netip.MustParseAddr("198.51.100.10"), Port: 0, Proto: TCP},
	{VIP: netip.MustParseAddr("198.51.100.10"), Port: 53, Proto: UDP},
	{VIP: netip.MustParseAddr("198.51.100.11"), Port: 443, Proto: TCP},
	{VIP: netip.MustParseAddr("2001:db8::10"), Port: 80, Proto: TCP},
	{VIP: netip.MustParseAddr("2001:db8::10"), Port: 0, Proto: TCP},
	{VIP: netip.MustParseAddr("2001:db8::10"), Port: 0, Proto: UDP},
	{VIP: netip.MustParseAddr("2001:db8::11"), Port: 53, Proto: UDP},
}

// churnDest is where a flow's packets are addressed.
type churnDest struct {
	vip   netip.Addr
	port  uint16
	proto Proto
}

func (d churnDest) String() string {
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(d.vip, d.port), d.proto)
}

// churnDests: every port service's port, and for a catch-all a port no
// port service has (8080 for tcp, 5353 for udp).
func churnDests() []churnDest {
	var out []churnDest
	for _, k := range churnKeys {
		port := k.Port
		if port == 0 {
			port = 8080
			if k.Proto == UDP {
				port = 5353
			}
		}
		out = append(out, churnDest{vip: k.VIP, port: port, proto: k.Proto})
	}
	return out
}

// churnAddrs is the pool of backend addresses; services share it, so one
// address is a member of several services and comes and goes in each.
var churnAddrs = func() []netip.Addr {
	var out []netip.Addr
	for i := 1; i <= 10; i++ {
		out = append(out, netip.MustParseAddr(fmt.Sprintf("10.0.0.%d", i)))
	}
	for i := 1; i <= 4; i++ {
		out = append(out, netip.MustParseAddr(fmt.Sprintf("2001:db8:b::%d", i)))
	}
	return out
}()

var churnTableSizes = []uint32{251, 509, 1021}

// mBackend is one membership of a backend in a service. serial is new on
// every add: a backend removed and added again is another membership.
type mBackend struct {
	serial int
	key    ServiceKey
	spec   BackendSpec // record and the state the dataplane must hold
}

type mService struct {
	key       ServiceKey
	tableSize uint32
	noBackend NoBackendPolicy
	backends  map[netip.Addr]*mBackend
	// fresh: the table was rebuilt after the last state change (an
	// ApplyService or Sync since), so new flows follow Maglev exactly.
	fresh bool
}

type model struct {
	services map[ServiceKey]*mService
	serial   int
}

func newModel() *model { return &model{services: map[ServiceKey]*mService{}} }

func (m *model) clone() *model {
	c := &model{services: map[ServiceKey]*mService{}, serial: m.serial}
	for k, s := range m.services {
		cs := *s
		cs.backends = map[netip.Addr]*mBackend{}
		for a, b := range s.backends {
			cb := *b
			cb.spec.MAC = slices.Clone(b.spec.MAC)
			cs.backends[a] = &cb
		}
		c.services[k] = &cs
	}
	return c
}

func (m *model) sortedKeys() []ServiceKey {
	keys := make([]ServiceKey, 0, len(m.services))
	for k := range m.services {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, compareKeys)
	return keys
}

func (s *mService) sortedBackends() []*mBackend {
	out := make([]*mBackend, 0, len(s.backends))
	for _, b := range s.backends {
		out = append(out, b)
	}
	slices.SortFunc(out, func(a, b *mBackend) int { return a.spec.Addr.Compare(b.spec.Addr) })
	return out
}

// spec is the ServiceSpec a controller would apply for s.
func (s *mService) spec() ServiceSpec {
	sp := ServiceSpec{TableSize: s.tableSize, NoBackend: s.noBackend}
	for _, b := range s.sortedBackends() {
		bs := b.spec
		bs.MAC = slices.Clone(b.spec.MAC)
		sp.Backends = append(sp.Backends, bs)
	}
	return sp
}

// match is the service a packet to d belongs to: the port service, else
// the VIP's catch-all, else none.
func (m *model) match(d churnDest) *mService {
	if s, ok := m.services[ServiceKey{VIP: d.vip, Port: d.port, Proto: d.proto}]; ok {
		return s
	}
	return m.services[ServiceKey{VIP: d.vip, Proto: d.proto}]
}

// bySerial finds a live membership.
func (m *model) bySerial(serial int) *mBackend {
	for _, s := range m.services {
		for _, b := range s.backends {
			if b.serial == serial {
				return b
			}
		}
	}
	return nil
}

// byMAC finds the live membership whose current record has hw.
func (m *model) byMAC(hw net.HardwareAddr) *mBackend {
	for _, s := range m.services {
		for _, b := range s.backends {
			if string(b.spec.MAC) == string(hw) {
				return b
			}
		}
	}
	return nil
}

// predict is the backend a new flow takes in a fresh table: the Maglev
// table of the up backends of the most preferred group that has one.
func (s *mService) predict(client netip.AddrPort, d churnDest) (*mBackend, error) {
	var ups []*mBackend
	for _, b := range s.sortedBackends() {
		if b.spec.State == Up {
			ups = append(ups, b)
		}
	}
	if len(ups) == 0 {
		return nil, nil
	}
	best := ups[0].spec.Group
	for _, b := range ups {
		best = min(best, b.spec.Group)
	}
	var group []*mBackend
	var bs []maglev.Backend
	for _, b := range ups {
		if b.spec.Group == best {
			group = append(group, b)
			bs = append(bs, maglev.Backend{Name: b.spec.Addr.String(), Weight: b.spec.Weight})
		}
	}
	table, err := maglev.Build(bs, s.tableSize, churnSeed)
	if err != nil {
		return nil, err
	}
	slot := FlowSlot(client, netip.AddrPortFrom(d.vip, d.port), d.proto, s.tableSize, churnSeed)
	return group[table[slot]], nil
}

// opKind is what one generated operation asks of the dataplane.
type opKind uint8

const (
	opApply   opKind = iota // ApplyService with a full spec (creates or updates)
	opDelete                // DeleteService
	opState                 // one or more SetBackendState calls in a row (flaps)
	opSync                  // Sync: rebuild stale tables now
	opRestart               // Close, Open (adopt), re-apply as a restarted controller
)

// churnOp is one step of a churn sequence. Ops are declarative (a full spec,
// a key, an address), so any subsequence of a sequence is again a valid
// sequence: the shrinker relies on it. An op whose service or backend does
// not exist when it runs is skipped.
type churnOp struct {
	kind   opKind
	key    ServiceKey
	spec   ServiceSpec
	addr   netip.Addr
	states []State
	// crashAt >= 0: the loader "dies" right before its crashAt-th kernel
	// write during this op (that write and all later ones are refused); the
	// test then closes, re-opens (adopting the pins) and re-applies.
	crashAt int
	// crashAgain >= 0 (with crashAt): the restarted process dies too, right
	// before that kernel write of its re-apply; a third one recovers.
	crashAgain int
	// cpus is a bit mask over the online CPUs the check after this op runs
	// flows on (bit i = i-th online CPU). Checking on one CPU only lets
	// another CPU's flow cache miss a change.
	cpus uint8
}

func (o churnOp) String() string {
	var b strings.Builder
	switch o.kind {
	case opApply:
		fmt.Fprintf(&b, "apply %s size=%d", o.key, o.spec.TableSize)
		if o.spec.NoBackend == PassNoBackend {
			b.WriteString(" no-backend=pass")
		}
		b.WriteString(" [")
		for i, be := range o.spec.Backends {
			if i > 0 {
				b.WriteString("; ")
			}
			fmt.Fprintf(&b, "%s %s vlan=%d w=%d g=%d %s", be.Addr, be.MAC, be.VLAN, be.Weight, be.Group, be.State)
			if be.Port != "" {
				b.WriteString(" port2")
			}
		}
		b.WriteString("]")
	case opDelete:
		fmt.Fprintf(&b, "delete %s", o.key)
	case opState:
		var sts []string
		for _, s := range o.states {
			sts = append(sts, s.String())
		}
		fmt.Fprintf(&b, "state %s %s %s", o.key, o.addr, strings.Join(sts, "->"))
	case opSync:
		b.WriteString("sync")
	case opRestart:
		b.WriteString("restart (close, adopt, re-apply)")
	}
	if o.crashAt >= 0 && o.kind != opRestart {
		fmt.Fprintf(&b, "  CRASH before kernel write #%d, adopt, re-apply", o.crashAt)
		if o.crashAgain >= 0 {
			fmt.Fprintf(&b, ", CRASH before its write #%d, adopt, re-apply", o.crashAgain)
		}
	}
	fmt.Fprintf(&b, "  | check on cpus %s", cpuList(o.cpus))
	return b.String()
}

func cpuList(mask uint8) string {
	var s []string
	for i := range 8 {
		if mask&(1<<i) != 0 {
			s = append(s, fmt.Sprint(i))
		}
	}
	return strings.Join(s, ",")
}

// apply moves the model as op demands. ApplyService sets the state of new
// members only; existing members keep theirs (SetBackendState is the only
// writer of an existing member's state).
func (m *model) apply(op churnOp) {
	switch op.kind {
	case opApply:
		s, ok := m.services[op.key]
		if !ok {
			s = &mService{key: op.key, backends: map[netip.Addr]*mBackend{}}
			m.services[op.key] = s
		}
		s.tableSize, s.noBackend, s.fresh = op.spec.TableSize, op.spec.NoBackend, true
		want := map[netip.Addr]bool{}
		for _, bs := range op.spec.Backends {
			want[bs.Addr] = true
			if b, ok := s.backends[bs.Addr]; ok {
				st := b.spec.State
				b.spec = bs
				b.spec.MAC = slices.Clone(bs.MAC)
				b.spec.State = st
				continue
			}
			m.serial++
			nb := &mBackend{serial: m.serial, key: op.key, spec: bs}
			nb.spec.MAC = slices.Clone(bs.MAC)
			s.backends[bs.Addr] = nb
		}
		for a := range s.backends {
			if !want[a] {
				delete(s.backends, a)
			}
		}
	case opDelete:
		delete(m.services, op.key)
	case opState:
		s, ok := m.services[op.key]
		if !ok {
			return
		}
		b, ok := s.backends[op.addr]
		if !ok {
			return
		}
		for _, st := range op.states {
			b.spec.State = st
			s.fresh = false
		}
	case opSync:
		for _, s := range m.services {
			s.fresh = true
		}
	case opRestart:
	}
	if op.crashAt >= 0 || op.kind == opRestart {
		// Recovery re-applies everything and syncs.
		for _, s := range m.services {
			s.fresh = true
		}
	}
}

// churnGen generates operation sequences from a seed.
type churnGen struct {
	rng  *rand.Rand
	m    *model
	macs uint32
	ncpu int
	// last is the target of the last state op: flaps of one backend
	// spread over several steps (down, checked on one CPU, up) are what
	// per-CPU caches get wrong, so the generator returns to it often.
	last      ServiceKey
	lastAddr  netip.Addr
	lastState State
}

func generateChurn(seed uint64, steps, ncpu int) []churnOp {
	g := &churnGen{rng: rand.New(rand.NewPCG(seed, seed^0x9E3779B97F4A7C15)), m: newModel(), ncpu: ncpu}
	ops := make([]churnOp, 0, steps)
	for range steps {
		op := g.next()
		g.m.apply(op)
		ops = append(ops, op)
	}
	return ops
}

func (g *churnGen) mac() net.HardwareAddr {
	g.macs++
	return net.HardwareAddr{0x02, 0xcb, byte(g.macs >> 24), byte(g.macs >> 16), byte(g.macs >> 8), byte(g.macs)}
}

func (g *churnGen) state() State {
	switch r := g.rng.IntN(10); {
	case r < 6:
		return Up
	case r < 8:
		return Down
	}
	return Draining
}

func (g *churnGen) newBackend(addr netip.Addr) BackendSpec {
	b := BackendSpec{Addr: addr, MAC: g.mac(), Weight: uint32(1 + g.rng.IntN(4)), Group: uint8(g.rng.IntN(3) / 2), State: g.state()}
	if g.rng.IntN(4) == 0 {
		b.VLAN = uint16(1 + g.rng.IntN(4094))
	}
	if g.rng.IntN(6) == 0 {
		b.Port = "port2" // replaced by the run with its second port's name
	}
	return b
}

func (g *churnGen) pick(n int) int { return g.rng.IntN(n) }

func (g *churnGen) next() churnOp {
	op := churnOp{crashAt: -1, crashAgain: -1}
	// Check on every CPU most of the time; sometimes on one only, so that
	// the other CPU's cache sees a state only after it changed back.
	switch r := g.rng.IntN(4); {
	case g.ncpu < 2 || r < 2:
		op.cpus = uint8(1<<min(g.ncpu, 8) - 1)
	case r < 3:
		op.cpus = 1
	default:
		op.cpus = 2
	}
	keys := g.m.sortedKeys()
	var absent []ServiceKey
	for _, k := range churnKeys {
		if _, ok := g.m.services[k]; !ok {
			absent = append(absent, k)
		}
	}
	r := g.rng.IntN(100)
	switch {
	case len(keys) == 0 || (r < 10 && len(absent) > 0):
		k := absent[g.pick(len(absent))]
		op.kind, op.key = opApply, k
		op.spec = ServiceSpec{TableSize: churnTableSizes[g.pick(len(churnTableSizes))]}
		if g.rng.IntN(4) == 0 {
			op.spec.NoBackend = PassNoBackend
		}
		for _, i := range g.rng.Perm(len(churnAddrs))[:g.rng.IntN(5)] {
			op.spec.Backends = append(op.spec.Backends, g.newBackend(churnAddrs[i]))
		}
	case r < 16:
		op.kind, op.key = opDelete, keys[g.pick(len(keys))]
	case r < 44:
		op.kind, op.key = opApply, keys[g.pick(len(keys))]
		s := g.m.services[op.key]
		op.spec = s.spec()
		for range 1 + g.rng.IntN(3) {
			g.mutate(&op.spec)
		}
	case r < 84:
		k := keys[g.pick(len(keys))]
		bs := g.m.services[k].sortedBackends()
		if len(bs) == 0 {
			op.kind = opSync
			break
		}
		op.kind, op.key, op.addr = opState, k, bs[g.pick(len(bs))].spec.Addr
		if s, ok := g.m.services[g.last]; ok && s.backends[g.lastAddr] != nil && g.rng.IntN(3) == 0 {
			// Back to the last flapped backend, to another state.
			op.key, op.addr = g.last, g.lastAddr
			op.states = []State{(g.lastState + 1 + State(g.rng.IntN(2))) % 3}
		} else if g.rng.IntN(4) == 0 {
			// A flap within one op: no packet sees the middle state.
			flaps := [][]State{{Down, Up}, {Up, Down, Up}, {Down, Draining, Up}, {Draining, Up}, {Up, Down}, {Down, Up, Down}}
			op.states = flaps[g.pick(len(flaps))]
		} else {
			op.states = []State{g.state()}
		}
		g.last, g.lastAddr, g.lastState = op.key, op.addr, op.states[len(op.states)-1]
	case r < 99:
		op.kind = opSync
	default:
		op.kind = opRestart
	}
	if op.kind != opRestart && g.rng.IntN(100) < 3 {
		op.crashAt = g.rng.IntN(20)
		if g.rng.IntN(4) == 0 {
			op.crashAgain = g.rng.IntN(30)
		}
	}
	return op
}

// mutate changes one thing of spec: membership, a record field, the table
// size or the no-backend policy.
func (g *churnGen) mutate(spec *ServiceSpec) {
	switch r := g.rng.IntN(20); {
	case r < 4 && len(spec.Backends) < 6:
		have := map[netip.Addr]bool{}
		for _, b := range spec.Backends {
			have[b.Addr] = true
		}
		for _, i := range g.rng.Perm(len(churnAddrs)) {
			if !have[churnAddrs[i]] {
				spec.Backends = append(spec.Backends, g.newBackend(churnAddrs[i]))
				break
			}
		}
	case r < 8 && len(spec.Backends) > 0:
		i := g.pick(len(spec.Backends))
		spec.Backends = slices.Delete(spec.Backends, i, i+1)
	case r < 18 && len(spec.Backends) > 0:
		b := &spec.Backends[g.pick(len(spec.Backends))]
		switch g.rng.IntN(5) {
		case 0:
			b.Weight = uint32(1 + g.rng.IntN(4))
		case 1:
			b.Group = uint8(g.rng.IntN(3))
		case 2:
			b.MAC = g.mac()
		case 3:
			b.VLAN = 0
			if g.rng.IntN(2) == 0 {
				b.VLAN = uint16(1 + g.rng.IntN(4094))
			}
		case 4:
			if b.Port == "" {
				b.Port = "port2"
			} else {
				b.Port = ""
			}
		}
	case r < 19:
		spec.TableSize = churnTableSizes[g.pick(len(churnTableSizes))]
	default:
		spec.NoBackend = 1 - spec.NoBackend
	}
	slices.SortFunc(spec.Backends, func(a, b BackendSpec) int { return cmp.Compare(a.Addr.String(), b.Addr.String()) })
}
