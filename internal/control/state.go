package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"

	"github.com/keepbit/keepbit/internal/config"
)

// ErrRestartRequired: a reload changed a setting that takes effect at
// start only; the running config keeps serving.
var ErrRestartRequired = errors.New("a restart is needed to apply it; the running config keeps serving")

// startOnly refuses a reload that changes what is fixed at start: the
// hash seed is in the running program's settings and must stay equal on
// every node sharing VIPs (changing it moves every flow), and the state dir
// holds the overrides already loaded. The pin root is where the attached
// program's link is pinned: a start with another pin root finds no
// program to adopt and cannot attach (the old link holds the interface,
// EBUSY), so it takes a detach, not a restart.
func startOnly(running, next config.Node) error {
	var errs []error
	if running.HashSeed != next.HashSeed {
		errs = append(errs, fmt.Errorf("node.hash_seed: changed from %d to %d: %w", running.HashSeed, next.HashSeed, ErrRestartRequired))
	}
	if running.PinRoot != next.PinRoot {
		errs = append(errs, fmt.Errorf("node.pin_root: changed from %s to %s: %w", running.PinRoot, next.PinRoot, ErrDetachRequired))
	}
	if running.FlowCacheSize != next.FlowCacheSize {
		errs = append(errs, fmt.Errorf("node.flow_cache_size: changed from %d to %d: %w", running.FlowCacheSize, next.FlowCacheSize, ErrRestartRequired))
	}
	if running.StateDir != next.StateDir {
		errs = append(errs, fmt.Errorf("node.state_dir: changed from %s to %s: %w", running.StateDir, next.StateDir, ErrRestartRequired))
	}
	return errors.Join(errs...)
}

// ErrDetachRequired: a reload changed how or where the program is
// attached (an interface's mode, the pin root). A reload keeps an open
// interface's program, and a start adopts the pinned link as it is (or,
// with another pin root, fails to attach), so a restart alone does not
// apply it.
var ErrDetachRequired = errors.New("the attached program stays as it is, across restarts too, until it is detached (keepbitd --detach with the running config: forwarding stops) and started again; the running config keeps serving")

// attachFixed refuses a reload that changes the mode of an interface
// that stays in the config (it was ignored silently).
func attachFixed(running, next []config.Interface) error {
	was := map[string]config.AttachMode{}
	for _, ifc := range running {
		was[ifc.Name] = ifc.Mode
	}
	var errs []error
	for _, ifc := range next {
		if m, ok := was[ifc.Name]; ok && m != ifc.Mode {
			errs = append(errs, fmt.Errorf("interface %s: mode: changed from %s to %s: %w", ifc.Name, m, ifc.Mode, ErrDetachRequired))
		}
	}
	return errors.Join(errs...)
}

// overridesFile is where the operator's overrides are kept.
const overridesFile = "overrides.json"

type overrideRecord struct {
	Service string     `json:"service"`
	Backend netip.Addr `json:"backend"`
	Admin   Admin      `json:"admin"`
}

type stateFile struct {
	Overrides []overrideRecord `json:"overrides"`
}

func adminName(a Admin) string {
	if a == Enabled {
		return "enabled"
	}
	return string(a)
}

// loadOverrides reads the overrides saved in dir (none when the file does
// not exist). A file that cannot be read is an error: starting without
// it could put a backend under maintenance back in rotation.
func loadOverrides(dir string) (map[string]map[netip.Addr]Admin, error) {
	out := map[string]map[netip.Addr]Admin{}
	if dir == "" {
		return out, nil
	}
	path := filepath.Join(dir, overridesFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("operator overrides: %w", err)
	}
	var f stateFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("operator overrides: %s: %w (fix or remove the file to start without overrides)", path, err)
	}
	for i, r := range f.Overrides {
		if r.Admin != Disabled && r.Admin != Draining || r.Service == "" || !r.Backend.IsValid() {
			return nil, fmt.Errorf("operator overrides: %s: overrides[%d]: want a service, a backend and admin disabled or draining, got %+v (fix or remove the file to start without overrides)", path, i, r)
		}
		if out[r.Service] == nil {
			out[r.Service] = map[netip.Addr]Admin{}
		}
		out[r.Service][r.Backend.Unmap()] = r.Admin
	}
	return out, nil
}

func (c *Controller) setOverrideLocked(service string, addr netip.Addr, a Admin) {
	if a == Enabled {
		delete(c.overrides[service], addr)
		if len(c.overrides[service]) == 0 {
			delete(c.overrides, service)
		}
	} else {
		if c.overrides[service] == nil {
			c.overrides[service] = map[netip.Addr]Admin{}
		}
		c.overrides[service][addr] = a
	}
	c.overrideGen++
}

// saveOverrides writes the current overrides to the state dir, atomically
// (temporary file, fsync, rename, fsync of the directory), so a crash
// leaves the old file or the new one, never a torn one. It runs outside
// c.mu: an fsync must not hold up probe verdicts.
func (c *Controller) saveOverrides() error {
	c.mu.Lock()
	gen := c.overrideGen
	var f stateFile
	for svc, m := range c.overrides {
		for addr, a := range m {
			f.Overrides = append(f.Overrides, overrideRecord{Service: svc, Backend: addr, Admin: a})
		}
	}
	c.mu.Unlock()
	slices.SortFunc(f.Overrides, func(a, b overrideRecord) int {
		if a.Service != b.Service {
			if a.Service < b.Service {
				return -1
			}
			return 1
		}
		return a.Backend.Compare(b.Backend)
	})
	c.saveMu.Lock()
	defer c.saveMu.Unlock()
	if gen <= c.savedGen {
		return nil // a newer set is on disk already
	}
	if c.stateDir == "" {
		return nil
	}
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("operator overrides: %w", err)
	}
	if err := writeAtomic(c.stateDir, overridesFile, append(data, '\n')); err != nil {
		return fmt.Errorf("operator overrides: %w", err)
	}
	c.savedGen = gen
	return nil
}

func writeAtomic(dir, name string, data []byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, name+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, name)); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync() // the rename itself survives a power loss
}

// pruneOverrides drops (and logs) the overrides of backends cfg no longer
// has, and saves the rest when anything was dropped.
func (c *Controller) pruneOverrides(cfg *config.Config) error {
	have := map[string]map[netip.Addr]bool{}
	for _, s := range cfg.Services {
		have[s.Name] = map[netip.Addr]bool{}
		for _, b := range s.Backends {
			have[s.Name][b.Address] = true
		}
	}
	type dropped struct {
		svc   string
		addr  netip.Addr
		admin Admin
	}
	var gone []dropped
	c.mu.Lock()
	for svc, m := range c.overrides {
		for addr, a := range m {
			if !have[svc][addr] {
				gone = append(gone, dropped{svc, addr, a})
			}
		}
	}
	for _, d := range gone {
		c.setOverrideLocked(d.svc, d.addr, Enabled)
	}
	c.mu.Unlock()
	for _, d := range gone {
		c.log.Info("operator override dropped: the backend is no longer configured", "service", d.svc, "backend", d.addr, "admin", d.admin)
	}
	if len(gone) == 0 {
		return nil
	}
	return c.saveOverrides()
}
