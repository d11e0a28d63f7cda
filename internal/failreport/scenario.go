package failreport

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/keepbit/keepbit/internal/failover"
)

// Scenario is one kind of failure: what it does to the lab, how the lab
// is put back, and which flight-recorder event marks its failover.
type Scenario struct {
	Name string
	Kind failover.Kind
	// Event is the recorder event whose phases are measured ("" none),
	// read on the node that handled it: the master for a backend
	// failure, the other node for a node failure.
	Event string
	// Inject fails something and returns the backend it took out ("" for
	// a node failure, or none).
	Inject func(ctx context.Context, L *Lab, master *Node) (failed string, err error)
	// Prepare (nil: nothing) sets the lab up before the client load
	// starts: a config the scenario needs, or a backend already down
	// for one that measures its return.
	Prepare func(ctx context.Context, L *Lab, master *Node) error
	// Restore puts the lab back; Run then waits for it to settle.
	Restore func(ctx context.Context, L *Lab, master *Node) error
}

// Scenarios lists the report's scenarios in report order.
func Scenarios() []Scenario {
	first := func(L *Lab) *Backend { return L.Backends[0] }
	restart := func(b *Backend) error {
		if b.Running() {
			b.Signal(syscall.SIGCONT)
			return nil
		}
		return b.Start()
	}
	restartNode := func(L *Lab, n *Node) error {
		if n.Running() {
			n.Signal(syscall.SIGCONT)
			return nil
		}
		return L.StartNode(n)
	}
	return []Scenario{
		{Name: "backend process killed", Kind: failover.BackendFailure, Event: "backend-down",
			Inject: func(_ context.Context, L *Lab, _ *Node) (string, error) {
				first(L).Signal(syscall.SIGKILL)
				return first(L).Name, nil
			},
			Restore: func(_ context.Context, L *Lab, _ *Node) error { return restart(first(L)) }},
		{Name: "backend host frozen", Kind: failover.BackendFailure, Event: "backend-down",
			Inject: func(_ context.Context, L *Lab, _ *Node) (string, error) {
				first(L).Signal(syscall.SIGSTOP)
				return first(L).Name, nil
			},
			Restore: func(_ context.Context, L *Lab, _ *Node) error { first(L).Signal(syscall.SIGCONT); return nil }},
		{Name: "backend blackholed", Kind: failover.BackendFailure, Event: "backend-down",
			Inject: func(_ context.Context, L *Lab, _ *Node) (string, error) {
				return first(L).Name, first(L).Blackhole(true)
			},
			Restore: func(_ context.Context, L *Lab, _ *Node) error { return first(L).Blackhole(false) }},
		{Name: "backend slow (answers after the check timeout)", Kind: failover.BackendFailure, Event: "backend-down",
			Inject: func(_ context.Context, L *Lab, _ *Node) (string, error) {
				first(L).Signal(syscall.SIGUSR1)
				return first(L).Name, nil
			},
			Restore: func(_ context.Context, L *Lab, _ *Node) error { first(L).Signal(syscall.SIGUSR2); return nil }},
		{Name: "backend flapping (killed, back, killed)", Kind: failover.BackendFailure, Event: "backend-down",
			Inject: func(_ context.Context, L *Lab, _ *Node) (string, error) {
				b := first(L)
				b.Signal(syscall.SIGKILL)
				time.Sleep(150 * time.Millisecond)
				if err := b.Start(); err != nil {
					return b.Name, err
				}
				time.Sleep(150 * time.Millisecond)
				b.Signal(syscall.SIGKILL)
				return b.Name, nil
			},
			Restore: func(_ context.Context, L *Lab, _ *Node) error { return restart(first(L)) }},
		{Name: "backend drained with long-lived connections", Kind: failover.BackendFailure,
			Inject: func(ctx context.Context, L *Lab, _ *Node) (string, error) {
				return first(L).Name, L.Admin(ctx, first(L), "drain")
			},
			Restore: func(ctx context.Context, L *Lab, _ *Node) error { return L.Admin(ctx, first(L), "enable") }},
		{Name: "backend returns", Kind: failover.BackendFailure, Event: "backend-up",
			Prepare: func(ctx context.Context, L *Lab, _ *Node) error {
				first(L).Signal(syscall.SIGKILL)
				return L.WaitBackends(ctx, "down", first(L))
			},
			Inject:  func(_ context.Context, L *Lab, _ *Node) (string, error) { return "", first(L).Start() },
			Restore: func(_ context.Context, L *Lab, _ *Node) error { return restart(first(L)) }},
		allDown("drop", restart),
		allDown("pass", restart),
		allDown("keep-last", restart),
		{Name: "primary group lost (backup group takes over)", Kind: failover.BackendFailure, Event: "backend-down",
			Prepare: func(ctx context.Context, L *Lab, _ *Node) error { return L.Reconfigure(ctx, "drop", true) },
			Inject: func(_ context.Context, L *Lab, _ *Node) (string, error) {
				primary := L.Backends[:len(L.Backends)-1]
				var names []string
				for _, b := range primary {
					b.Signal(syscall.SIGKILL)
					names = append(names, b.Name)
				}
				return strings.Join(names, ","), nil
			},
			Restore: func(ctx context.Context, L *Lab, _ *Node) error { return restoreAll(ctx, L, restart) }},
		{Name: "primary group returns", Kind: failover.BackendFailure, Event: "backend-up",
			Prepare: func(ctx context.Context, L *Lab, _ *Node) error {
				if err := L.Reconfigure(ctx, "drop", true); err != nil {
					return err
				}
				primary := L.Backends[:len(L.Backends)-1]
				for _, b := range primary {
					b.Signal(syscall.SIGKILL)
				}
				return L.WaitBackends(ctx, "down", primary...)
			},
			Inject: func(_ context.Context, L *Lab, _ *Node) (string, error) {
				for _, b := range L.Backends[:len(L.Backends)-1] {
					if err := b.Start(); err != nil {
						return "", err
					}
				}
				return "", nil
			},
			Restore: func(ctx context.Context, L *Lab, _ *Node) error { return restoreAll(ctx, L, restart) }},
		{Name: "Keepbit master frozen", Kind: failover.NodeFailure, Event: "vrrp-master",
			Inject:  func(_ context.Context, _ *Lab, m *Node) (string, error) { m.Signal(syscall.SIGSTOP); return "", nil },
			Restore: func(_ context.Context, L *Lab, m *Node) error { m.Signal(syscall.SIGCONT); return nil }},
		{Name: "Keepbit master killed -9", Kind: failover.NodeFailure, Event: "vrrp-master",
			Inject:  func(_ context.Context, _ *Lab, m *Node) (string, error) { m.Signal(syscall.SIGKILL); return "", nil },
			Restore: func(_ context.Context, L *Lab, m *Node) error { return restartNode(L, m) }},
		{Name: "Keepbit master link down", Kind: failover.NodeFailure, Event: "vrrp-master",
			Inject:  func(_ context.Context, L *Lab, m *Node) (string, error) { return "", L.l.SetPort(m.Name, false) },
			Restore: func(_ context.Context, L *Lab, m *Node) error { return L.l.SetPort(m.Name, true) }},
		{Name: "Keepbit master partitioned (frames dropped)", Kind: failover.NodeFailure, Event: "vrrp-master",
			Inject: func(_ context.Context, L *Lab, m *Node) (string, error) {
				undo, err := L.l.DropPort(m.Name)
				L.undo = undo
				return "", err
			},
			Restore: func(_ context.Context, L *Lab, _ *Node) error {
				if L.undo == nil {
					return nil
				}
				err := L.undo()
				L.undo = nil
				return err
			}},
		{Name: "planned handoff (master stopped: priority 0)", Kind: failover.NodeFailure, Event: "vrrp-master",
			Inject:  func(_ context.Context, _ *Lab, m *Node) (string, error) { m.Signal(syscall.SIGTERM); return "", nil },
			Restore: func(_ context.Context, L *Lab, m *Node) error { return restartNode(L, m) }},
		{Name: "keepbitd restarted on the master under load", Kind: failover.NodeFailure, Event: "vrrp-master",
			Inject: func(_ context.Context, L *Lab, m *Node) (string, error) {
				m.Signal(syscall.SIGKILL)
				return "", L.StartNode(m)
			},
			Restore: func(context.Context, *Lab, *Node) error { return nil }},
		{Name: "keepbitd reloaded under load", Kind: failover.BackendFailure,
			Inject: func(_ context.Context, L *Lab, _ *Node) (string, error) {
				for _, n := range L.Nodes {
					n.Signal(syscall.SIGHUP)
				}
				return "", nil
			},
			Restore: func(context.Context, *Lab, *Node) error { return nil }},
	}
}

// allDown kills every backend under the when_all_down policy.
func allDown(policy string, restart func(*Backend) error) Scenario {
	return Scenario{Name: "all backends down (when_all_down: " + policy + ")", Kind: failover.BackendFailure, Event: "backend-down",
		Prepare: func(ctx context.Context, L *Lab, _ *Node) error { return L.Reconfigure(ctx, policy, false) },
		Inject: func(_ context.Context, L *Lab, _ *Node) (string, error) {
			for _, b := range L.Backends {
				b.Signal(syscall.SIGKILL)
			}
			return "all", nil
		},
		Restore: func(ctx context.Context, L *Lab, _ *Node) error { return restoreAll(ctx, L, restart) }}
}

// restoreAll brings every backend back and the lab's config to its
// default (drop, one group).
func restoreAll(ctx context.Context, L *Lab, restart func(*Backend) error) error {
	var errs []error
	for _, b := range L.Backends {
		errs = append(errs, restart(b))
	}
	errs = append(errs, L.Reconfigure(ctx, "drop", false))
	return errors.Join(errs...)
}

// Select returns the scenarios whose names contain any of the filters
// (all for none).
func Select(all []Scenario, filters []string) ([]Scenario, error) {
	if len(filters) == 0 {
		return all, nil
	}
	var out []Scenario
	for _, s := range all {
		for _, f := range filters {
			if f != "" && contains(s.Name, f) {
				out = append(out, s)
				break
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no scenario matches %q", filters)
	}
	return out, nil
}
