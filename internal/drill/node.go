package drill

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/keepbit/keepbit/internal/ownership"
)

// NodeOwners are the VIP owners a node drill hands the VIPs over with;
// nil members are not running.
type NodeOwners struct {
	VRRP VRRPOwner
	BGP  BGPOwner
}

// VRRPOwner is what a node drill needs of *ownership.VRRP.
type VRRPOwner interface {
	// HandoffInfo describes each instance: state, peers, adverts heard.
	HandoffInfo() []ownership.HandoffInfo
	// Handoff makes the named instances resign (a master advertises
	// priority 0, a backup takes over) and stay out until release.
	Handoff(why string, names []string) (release func())
}

// BGPOwner is what a node drill needs of *ownership.BGP.
type BGPOwner interface {
	Status() ownership.BGPStatus
	Drain(ctx context.Context, why string, hold time.Duration) (ownership.DrainInfo, error)
	Undrain(ctx context.Context) error
}

// nodePlan is what a node drill would hand off, what it refuses and what
// it could not check.
type nodePlan struct {
	vrrp, bgp bool
	masters   map[string]bool // VRRP instances master here
	refusals  []string
	notes     []string
}

// planNode decides, from the owners' status, whether the node drill can
// run: there must be something this node carries, and a peer able to
// take it over where that can be known.
func planNode(vr []ownership.HandoffInfo, bg *ownership.BGPStatus) nodePlan {
	p := nodePlan{masters: map[string]bool{}}
	for _, in := range vr {
		if in.State != "master" {
			p.notes = append(p.notes, fmt.Sprintf("vrrp %s is %s here: nothing to hand off", in.Name, in.State))
			continue
		}
		p.vrrp = true
		p.masters[in.Name] = true
		switch {
		case in.Heard == 0 && in.Peers == 0:
			p.refusals = append(p.refusals, fmt.Sprintf("vrrp %s: no other router was ever heard and no unicast peer is configured: no backup is known to take over", in.Name))
		case in.Heard == 0:
			p.notes = append(p.notes, fmt.Sprintf("vrrp %s: %d unicast peers configured, none heard since start; VRRPv3 backups are silent, so whether one is running now was not checked", in.Name, in.Peers))
		default:
			p.notes = append(p.notes, fmt.Sprintf("vrrp %s: another router was heard (%d advertisements); VRRPv3 backups are silent, so whether one is running now was not checked", in.Name, in.Heard))
		}
	}
	if bg != nil && bg.Configured {
		announced := 0
		for _, r := range bg.Routes {
			if r.Announced {
				announced++
			}
		}
		switch {
		case bg.Draining:
			p.refusals = append(p.refusals, "bgp: the node is drained already ("+bg.DrainReason+"): undrain first")
		case announced == 0:
			p.notes = append(p.notes, "bgp: no route is announced: nothing to withdraw")
		default:
			p.bgp = true
			p.notes = append(p.notes, "bgp: whether another node announces the same VIPs was not checked (only the routers know)")
		}
	}
	return p
}

func (d *Drills) nodeDrill(ctx context.Context, req Request) (Result, error) {
	if req.Service != "" || req.Backend.IsValid() {
		return Result{}, invalid("service", "a node drill takes no service or backend")
	}
	var vr []ownership.HandoffInfo
	if d.node.VRRP != nil {
		vr = d.node.VRRP.HandoffInfo()
	}
	var bg *ownership.BGPStatus
	if d.node.BGP != nil {
		st := d.node.BGP.Status()
		bg = &st
	}
	p := planNode(vr, bg)
	if !p.vrrp && !p.bgp {
		why := "no VRRP instance is master here and no BGP route is announced"
		if len(p.refusals) > 0 {
			why = strings.Join(p.refusals, "; ")
		}
		return Result{}, refuse("node drill: this node carries no VIP to hand off (%s)", why)
	}
	if len(p.refusals) > 0 && !req.Force {
		return Result{}, refuse("node drill: %s; -force to drill anyway", strings.Join(p.refusals, "; "))
	}
	release, err := d.claim("node")
	if err != nil {
		return Result{}, err
	}
	defer release()
	notes := append(p.notes, p.refusals...)
	read := func() (Sample, error) {
		c := d.ctl.Counters()
		var n uint64
		for _, sc := range c.Services {
			n += sc.Service.Packets
		}
		var err error
		for iface, e := range c.Failed {
			err = errors.Join(err, fmt.Errorf("interface %s: %w", iface, e))
		}
		return Sample{At: time.Now(), Target: n, Service: n}, err
	}
	var endVRRP func()
	fault := func() error {
		if p.vrrp {
			endVRRP = d.node.VRRP.Handoff("drill: planned handoff (keepbitctl drill node)", slices.Sorted(maps.Keys(p.masters)))
		}
		if p.bgp {
			// hold 0: the sessions stay, only the routes go.
			if _, err := d.node.BGP.Drain(context.Background(), "drill", 0); err != nil {
				if endVRRP != nil {
					endVRRP()
				}
				return fmt.Errorf("bgp drain: %w", err)
			}
		}
		return nil
	}
	restore := func() error {
		var err error
		if endVRRP != nil {
			endVRRP()
		}
		if p.bgp {
			err = d.node.BGP.Undrain(context.Background())
		}
		return err
	}
	back := func() bool {
		if p.vrrp {
			for _, in := range d.node.VRRP.HandoffInfo() {
				if p.masters[in.Name] && in.State != "master" {
					return false
				}
			}
		}
		if p.bgp {
			for _, r := range d.node.BGP.Status().Routes {
				if r.Announced {
					return true
				}
			}
			return false
		}
		return true
	}
	return d.run(ctx, req, read, fault, restore, back, &notes)
}
