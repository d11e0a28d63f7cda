package config

import (
	_ "embed"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/keepbit/keepbit/internal/maglev"
	"github.com/keepbit/keepbit/loader"
	"github.com/keepbit/keepbit/probe"
)

//go:embed default.yaml
var defaultYAML []byte

// DefaultName is how errors name the embedded default config.
const DefaultName = "<embedded default keepbit.yaml>"

// Default returns the embedded default config (the one `make demo` runs).
func Default() (*Config, error) { return Parse(DefaultName, defaultYAML) }

// DefaultYAML returns the text of the embedded default config.
func DefaultYAML() []byte { return append([]byte(nil), defaultYAML...) }

// Load reads and validates file.
func Load(file string) (*Config, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(file, data)
}

// builtinCheck is what a service gets when neither it nor defaults.check
// says otherwise.
var builtinCheck = Check{Type: "tcp", Interval: time.Second, Timeout: 500 * time.Millisecond, Rise: 2, Fall: 3, Jitter: 0.1}

// Parse decodes and validates data read from file. The error lists every
// problem found, one per line, each as file:line: field: what is wrong.
func Parse(file string, data []byte) (*Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if root.Kind == 0 {
		return nil, fmt.Errorf("%s: empty config", file)
	}
	d := &decoder{file: file, root: &root}
	cfg := &Config{}
	d.decode(&root, reflect.ValueOf(cfg).Elem(), "")
	if len(d.errs) == d.valueErrs {
		d.applyDefaults(cfg) // decodes the inherited checks
	}
	if len(d.errs) == d.valueErrs {
		d.validate(cfg)
	}
	if len(d.errs) > 0 {
		return nil, errors.Join(d.errs...)
	}
	return cfg, nil
}

func (d *decoder) applyDefaults(c *Config) {
	if c.Node.PinRoot == "" {
		c.Node.PinRoot = "/sys/fs/bpf"
	}
	if c.Node.StateDir == "" {
		c.Node.StateDir = "/var/lib/keepbit"
	}
	unmapAddrs(c)
	d.bgpDefaults(c)
	d.flowSharingDefaults(c)
	d.drillDefaults(c)
	d.predictDefaults(c)
	d.passiveDefaults(c)
	for i := range c.Interfaces {
		if c.Interfaces[i].Mode == "" {
			c.Interfaces[i].Mode = "auto"
		}
	}
	if c.API.Socket == "" {
		c.API.Socket = "/run/keepbit/keepbit.sock"
	}
	if c.Metrics.Listen == "" {
		c.Metrics.Listen = "127.0.0.1:9469"
	}
	if c.Log.Format == "" {
		c.Log.Format = "text"
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Defaults.TableSize == 0 {
		c.Defaults.TableSize = maglev.DefaultSize
	}
	for i := range c.VRRP {
		v := &c.VRRP[i]
		if v.Name == "" {
			v.Name = fmt.Sprintf("vrid-%d", v.VRID)
		}
		if v.Interface == "" && len(c.Interfaces) == 1 {
			v.Interface = c.Interfaces[0].Name
		}
		if v.Priority == 0 && !d.written(fmt.Sprintf("vrrp[%d].priority", i)) {
			v.Priority = 100
		}
		if v.AdvertInterval == 0 {
			v.AdvertInterval = time.Second
		}
		if v.Preempt == nil {
			yes := true
			v.Preempt = &yes
		}
		if v.Announce.Count == 0 {
			v.Announce.Count = 3
		}
		if v.Announce.Spacing == 0 {
			v.Announce.Spacing = 10 * time.Millisecond
		}
		if v.Announce.Refresh == nil {
			refresh := time.Second
			v.Announce.Refresh = &refresh
		}
		if v.Announce.Late == nil {
			late := 1100 * time.Millisecond
			v.Announce.Late = &late
		}
		for j := range v.Track.Commands {
			tc := &v.Track.Commands[j]
			if tc.Interval == 0 {
				tc.Interval = time.Second
			}
			if tc.Timeout == 0 {
				tc.Timeout = 500 * time.Millisecond
			}
		}
		if v.Notify.Command != "" && v.Notify.Timeout == 0 {
			v.Notify.Timeout = 5 * time.Second
		}
	}
	defCheck := builtinCheck
	if c.Defaults.Check != nil {
		d.decode(c.Defaults.Check, reflect.ValueOf(&defCheck).Elem(), "defaults.check")
	}
	for i := range c.Services {
		s := &c.Services[i]
		path := fmt.Sprintf("services[%d]", i)
		if s.Protocol == "" {
			s.Protocol = "tcp"
		}
		if s.Name == "" {
			s.Name = fmt.Sprintf("%s/%s", netip.AddrPortFrom(s.VIP, s.Port), s.Protocol)
		}
		if s.Interface == "" && len(c.Interfaces) == 1 {
			s.Interface = c.Interfaces[0].Name
		}
		if s.Forwarding == "" {
			s.Forwarding = "dsr"
		}
		if s.TableSize == 0 {
			s.TableSize = c.Defaults.TableSize
		}
		if s.WhenAllDown == "" {
			s.WhenAllDown = "drop"
		}
		if s.Notify.Command != "" && s.Notify.Timeout == 0 {
			s.Notify.Timeout = 5 * time.Second
		}
		s.Check = defCheck
		if s.CheckNode != nil {
			d.decode(s.CheckNode, reflect.ValueOf(&s.Check).Elem(), path+".check")
		}
		for j := range s.Backends {
			b := &s.Backends[j]
			if b.Weight == 0 && !d.written(fmt.Sprintf("%s.backends[%d].weight", path, j)) {
				b.Weight = 1
			}
			b.Check = s.Check
			if b.CheckNode != nil {
				d.decode(b.CheckNode, reflect.ValueOf(&b.Check).Elem(), fmt.Sprintf("%s.backends[%d].check", path, j))
			}
		}
	}
}

// unmapAddrs takes an IPv4-mapped IPv6 address (::ffff:a.b.c.d) as the
// IPv4 address it maps: the dataplane matches IPv4 packets by their IPv4
// address and keys services that way, so a VIP or backend kept mapped here
// would never equal what the dataplane reports back (a reload would then
// delete and re-create the service, losing its flows). Validation runs on
// the unmapped addresses, so ::ffff:10.0.0.1 and 10.0.0.1 in one service
// are the same backend listed twice.
func unmapAddrs(c *Config) {
	for i := range c.Services {
		s := &c.Services[i]
		s.VIP = s.VIP.Unmap()
		for j := range s.Backends {
			s.Backends[j].Address = s.Backends[j].Address.Unmap()
		}
	}
	for i := range c.VRRP {
		v := &c.VRRP[i]
		for j := range v.VIPs {
			v.VIPs[j] = v.VIPs[j].Unmap()
		}
		for j := range v.Peers {
			v.Peers[j] = v.Peers[j].Unmap()
		}
	}
}

func (d *decoder) validate(c *Config) {
	d.validateBGP(c)
	d.validateFlowSharing(c)
	d.validateDrills(c)
	d.validatePredict(c)
	d.validatePassive(c)
	if !filepath.IsAbs(c.Node.PinRoot) {
		d.fail("node.pin_root", "%q is not an absolute path", c.Node.PinRoot)
	}
	if !filepath.IsAbs(c.Node.StateDir) {
		d.fail("node.state_dir", "%q is not an absolute path", c.Node.StateDir)
	}
	if err := loader.ValidFlowCacheSize(c.Node.FlowCacheSize); err != nil {
		d.fail("node.flow_cache_size", "%v", err)
	}
	if len(c.Interfaces) == 0 {
		d.fail("interfaces", "at least one interface is required")
	}
	ifaces := map[string]bool{}
	for i, ifc := range c.Interfaces {
		p := fmt.Sprintf("interfaces[%d]", i)
		switch {
		case ifc.Name == "":
			d.fail(p+".name", "required")
		case ifaces[ifc.Name]:
			d.fail(p+".name", "%q is listed twice", ifc.Name)
		}
		ifaces[ifc.Name] = true
	}
	if !filepath.IsAbs(c.API.Socket) {
		d.fail("api.socket", "%q is not an absolute path", c.API.Socket)
	}
	if c.Metrics.Listen != "off" {
		if _, _, err := net.SplitHostPort(c.Metrics.Listen); err != nil {
			d.fail("metrics.listen", "%q is not host:port or off", c.Metrics.Listen)
		}
	}
	oneOf(d, "log.format", c.Log.Format, "text", "json")
	oneOf(d, "log.level", c.Log.Level, "debug", "info", "warn", "error")

	d.validateVRRP(c, ifaces)
	names := map[string]bool{}
	keys := map[string]string{}
	for i := range c.Services {
		s := &c.Services[i]
		p := fmt.Sprintf("services[%d]", i)
		if names[s.Name] {
			d.fail(p+".name", "%q is used by another service", s.Name)
		}
		names[s.Name] = true
		if !s.VIP.IsValid() {
			d.fail(p+".vip", "required")
			continue
		}
		key := fmt.Sprintf("%s/%d/%s", s.VIP, s.Port, s.Protocol)
		if other, dup := keys[key]; dup {
			d.fail(p, "same VIP, port and protocol as service %q", other)
		}
		keys[key] = s.Name
		if (s.Protocol == "icmp" || s.Protocol == "icmpv6") && s.Port != 0 {
			d.fail(p+".port", "must be 0 for %s", s.Protocol)
		}
		switch {
		case s.Interface == "":
			d.fail(p+".interface", "required when more than one interface is configured")
		case !ifaces[s.Interface]:
			d.fail(p+".interface", "%q is not in interfaces", s.Interface)
		}
		oneOf(d, p+".forwarding", s.Forwarding, "dsr")
		if s.TableSize > maglev.MaxSize || !maglev.IsPrime(s.TableSize) {
			d.fail(p+".table_size", "%d is not a prime up to %d", s.TableSize, maglev.MaxSize)
		}
		if s.PanicThreshold < 0 || s.PanicThreshold > 100 {
			d.fail(p+".panic_threshold", "%d is not a percentage from 0 to 100", s.PanicThreshold)
		}
		if f := s.Flap; f.Transitions != 0 || f.Within != 0 || f.HoldDown != 0 {
			if f.Transitions < 2 || f.Within <= 0 || f.HoldDown <= 0 {
				d.fail(p+".flap", "needs transitions (at least 2), within and hold_down together")
			}
		}
		if len(s.Backends) > 1024 {
			d.fail(p+".backends", "%d backends, at most 1024", len(s.Backends))
		}
		d.validateCheck(p+".check", s, s.Check)
		addrs := map[netip.Addr]bool{}
		for j := range s.Backends {
			b := &s.Backends[j]
			bp := fmt.Sprintf("%s.backends[%d]", p, j)
			switch {
			case !b.Address.IsValid():
				d.fail(bp+".address", "required")
			case addrs[b.Address]:
				d.fail(bp+".address", "%s is listed twice", b.Address)
			}
			addrs[b.Address] = true
			if b.Weight < 1 || b.Weight > 65536 {
				d.fail(bp+".weight", "%d is outside 1-65536", b.Weight)
			}
			if b.Group > 7 {
				d.fail(bp+".group", "%d, at most 7", b.Group)
			}
			if b.VLAN > 4094 {
				d.fail(bp+".vlan", "%d is outside 0-4094", b.VLAN)
			}
			if b.CheckNode != nil {
				d.validateCheck(bp+".check", s, b.Check)
			}
			if src := b.Check.Source; src.IsValid() && b.Check.Type != "exec" && src.Unmap().Is4() != b.Address.Unmap().Is4() {
				d.fail(bp+".check.source", "%s is not of the address family of the backend %s", src, b.Address)
			}
		}
	}
}

// validateCheck checks c through probe's own rules (with a placeholder
// target, since the backend address is filled in later).
func (d *decoder) validateVRRP(c *Config, ifaces map[string]bool) {
	names := map[string]bool{}
	vrids := map[string]string{}
	owners := map[netip.Addr]string{} // VIP -> instance
	for i := range c.VRRP {
		v := &c.VRRP[i]
		p := fmt.Sprintf("vrrp[%d]", i)
		if names[v.Name] {
			d.fail(p+".name", "%q is used by another instance", v.Name)
		}
		names[v.Name] = true
		if v.VRID == 0 {
			d.fail(p+".vrid", "required, 1-255")
		}
		switch {
		case v.Interface == "":
			d.fail(p+".interface", "required when more than one interface is configured")
		case !ifaces[v.Interface]:
			d.fail(p+".interface", "%q is not in interfaces", v.Interface)
		}
		if v.Priority == 0 {
			d.fail(p+".priority", "0 is reserved for resignation: use 1-254, or 255 for the address owner")
		}
		if v.AdvertInterval < 10*time.Millisecond || v.AdvertInterval > 40950*time.Millisecond || v.AdvertInterval%(10*time.Millisecond) != 0 {
			d.fail(p+".advert_interval", "%v: want a multiple of 10ms from 10ms to 40.95s (VRRPv3 counts centiseconds)", v.AdvertInterval)
		}
		if len(v.VIPs) == 0 {
			d.fail(p+".vips", "at least one VIP is required")
		}
		// An advertisement counts its addresses in 8 bits.
		if len(v.VIPs) > 255 {
			d.fail(p+".vips", "%d VIPs, at most 255 per instance (a VRRPv3 advertisement counts them in 8 bits)", len(v.VIPs))
		}
		v6 := len(v.VIPs) > 0 && v.VIPs[0].Is6()
		for j, a := range v.VIPs {
			jp := fmt.Sprintf("%s.vips[%d]", p, j)
			if a.Is6() != v6 {
				d.fail(jp, "%s: all VIPs of an instance must be IPv4 or all IPv6 (VRRPv3 runs one family per instance)", a)
			}
			// Two instances owning one address would remove it from
			// under each other (a starting instance clears stale VIPs,
			// a resigning one releases its own).
			if other, dup := owners[a]; dup {
				d.fail(jp, "%s is already a VIP of instance %q", a, other)
				continue
			}
			owners[a] = v.Name
		}
		for j, a := range v.Peers {
			if a.Is6() != v6 {
				d.fail(fmt.Sprintf("%s.peers[%d]", p, j), "%s is not of the VIPs' family", a)
			}
		}
		key := fmt.Sprintf("%s/%d/%v", v.Interface, v.VRID, v6)
		if other, dup := vrids[key]; dup {
			d.fail(p+".vrid", "%d is already used on %s by instance %q", v.VRID, v.Interface, other)
		}
		vrids[key] = v.Name
		if v.Announce.Count < 1 || v.Announce.Count > 100 {
			d.fail(p+".announce.count", "%d, want 1-100", v.Announce.Count)
		}
		weight := func(path string, w int) {
			if w < 0 || w > 253 {
				d.fail(path, "%d, want 0 (fault) to 253", w)
			}
		}
		if v.Track.Dataplane != nil {
			weight(p+".track.dataplane.weight", v.Track.Dataplane.Weight)
		}
		for j, it := range v.Track.Interfaces {
			ip := fmt.Sprintf("%s.track.interfaces[%d]", p, j)
			if it.Name == "" {
				d.fail(ip+".name", "required")
			}
			weight(ip+".weight", it.Weight)
		}
		svcNames := map[string]bool{}
		for _, s := range c.Services {
			svcNames[s.Name] = true
		}
		for j, it := range v.Track.Services {
			ip := fmt.Sprintf("%s.track.services[%d]", p, j)
			if !svcNames[it.Name] {
				d.fail(ip+".name", "%q is not a configured service", it.Name)
			}
			weight(ip+".weight", it.Weight)
		}
		for j, tc := range v.Track.Commands {
			ip := fmt.Sprintf("%s.track.commands[%d]", p, j)
			if tc.Command == "" {
				d.fail(ip+".command", "required")
			}
			if tc.Timeout > tc.Interval {
				d.fail(ip+".timeout", "%v is longer than the interval %v", tc.Timeout, tc.Interval)
			}
			weight(ip+".weight", tc.Weight)
		}
	}
}

func (d *decoder) validateCheck(path string, s *Service, c Check) {
	// The placeholder is of the source's family: each backend's own
	// address is checked against the source where backends are.
	placeholder := netip.MustParseAddr("192.0.2.1")
	if c.Source.IsValid() && !c.Source.Unmap().Is4() {
		placeholder = netip.MustParseAddr("2001:db8::1")
	}
	sp := c.Spec(placeholder, s.Port)
	err := sp.Validate()
	if err == nil {
		return
	}
	field, _, _ := strings.Cut(err.Error(), ":")
	if field == "target" {
		d.fail(join(path, "port"), "the service has port 0: the check needs a port of its own")
		return
	}
	msg := strings.TrimPrefix(err.Error(), field+": ")
	d.fail(join(path, strings.ReplaceAll(field, " ", "_")), "%s", msg)
}

// Spec turns the check into a probe for a backend at addr serving port.
func (c Check) Spec(addr netip.Addr, servicePort uint16) probe.Spec {
	port := c.Port
	if port == 0 {
		port = servicePort
	}
	return probe.Spec{
		Kind:         probe.Kind(c.Type),
		Target:       netip.AddrPortFrom(addr, port),
		Interval:     c.Interval,
		FastInterval: c.FastInterval,
		Timeout:      c.Timeout,
		Rise:         c.Rise,
		Fall:         c.Fall,
		Jitter:       c.Jitter,
		Source:       c.Source,
		Interface:    c.Interface,
		Method:       c.Method,
		Path:         c.Path,
		Host:         c.Host,
		ExpectStatus: c.ExpectStatus,
		ExpectBody:   c.ExpectBody,
		CAFile:       c.CAFile,
		TLSNoVerify:  c.TLSNoVerify,
		Payload:      []byte(c.Payload),
		ExpectReply:  c.ExpectReply,
		Command:      c.Command,
		Args:         c.Args,
		Env:          c.Env,
	}
}

func oneOf(d *decoder, path, got string, allowed ...string) {
	for _, a := range allowed {
		if got == a {
			return
		}
	}
	d.fail(path, "%q is not one of %s", got, strings.Join(allowed, ", "))
}
