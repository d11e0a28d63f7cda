package config

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestDefaultConfig(t *testing.T) {
	c, err := Default()
	if err != nil {
		t.Fatalf("embedded default config: %v", err)
	}
	if len(c.Services) != 1 || len(c.Services[0].Backends) != 3 {
		t.Fatalf("services %+v", c.Services)
	}
	s := c.Services[0]
	if s.Check.Type != "http" || s.Check.Interval != 20*time.Millisecond || s.Check.Path != "/healthz" || s.Check.Rise != 2 {
		t.Errorf("effective check %+v: want http /healthz with the defaults' 20ms interval", s.Check)
	}
	if s.Interface != "kb-lb0" || s.Backends[0].Weight != 1 || s.Backends[2].Group != 1 {
		t.Errorf("defaults not applied: %+v", s)
	}
	if c.Metrics.Listen != "127.0.0.1:9469" || c.API.Socket != "/run/keepbit/keepbit.sock" || c.Node.PinRoot != "/sys/fs/bpf" || c.Node.StateDir != "/var/lib/keepbit" {
		t.Errorf("daemon defaults: %+v %+v %+v", c.Metrics, c.API, c.Node)
	}
}

// TestCheckInheritance: defaults.check, then the service's check, then the
// backend's, each overriding only the fields it names.
func TestCheckInheritance(t *testing.T) {
	c, err := Parse("k.yaml", []byte(`
interfaces: [{name: eth0}]
defaults:
  check: {type: http, interval: 2s, timeout: 1s, rise: 3, fall: 4, path: /health}
services:
  - vip: 192.0.2.10
    port: 80
    check: {interval: 500ms, timeout: 200ms}
    backends:
      - address: 10.0.0.1
      - address: 10.0.0.2
        check: {type: tcp, port: 8080}
`))
	if err != nil {
		t.Fatal(err)
	}
	s := c.Services[0]
	b1, b2 := s.Backends[0].Check, s.Backends[1].Check
	if b1.Type != "http" || b1.Interval != 500*time.Millisecond || b1.Rise != 3 || b1.Path != "/health" {
		t.Errorf("backend 1 check %+v", b1)
	}
	if b2.Type != "tcp" || b2.Port != 8080 || b2.Interval != 500*time.Millisecond || b2.Fall != 4 {
		t.Errorf("backend 2 check %+v", b2)
	}
	if sp := b2.Spec(s.Backends[1].Address, s.Port); sp.Target.String() != "10.0.0.2:8080" {
		t.Errorf("backend 2 probe target %s", sp.Target)
	}
	if s.Name != "192.0.2.10:80/tcp" {
		t.Errorf("default name %q", s.Name)
	}
}

// TestBadConfigs: each file must fail with exactly these errors.
func TestBadConfigs(t *testing.T) {
	const head = "interfaces: [{name: eth0}]\n"
	cases := []struct {
		name string
		yaml string
		want []string
	}{
		{"syntax", "services: [", []string{"k.yaml: yaml: line 1: did not find expected node content"}},
		{"empty", "", []string{"k.yaml: empty config"}},
		{"unknown top-level field", head + "servces: []\n", []string{"k.yaml:2: servces: unknown field (known: api, bgp, defaults, drills, flow_sharing, interfaces, log, metrics, node, services, vrrp)"}},
		{"no interfaces", "services: []\n", []string{"k.yaml:1: interfaces: at least one interface is required"}},
		{"bad VIP", head + "services:\n  - vip: 192.0.2.300\n", []string{`k.yaml:3: services[0].vip: "192.0.2.300" is not an IPv4 or IPv6 address`}},
		{"missing VIP", head + "services:\n  - port: 80\n", []string{"k.yaml:3: services[0].vip: required"}},
		{"port out of range", head + "services:\n  - vip: 192.0.2.1\n    port: 70000\n", []string{`k.yaml:4: services[0].port: "70000" is not a whole number from 0 to 65535`}},
		{"bad protocol", head + "services:\n  - vip: 192.0.2.1\n    port: 80\n    protocol: sctp\n", []string{`k.yaml:5: services[0].protocol: "sctp" is not one of tcp, udp, icmp, icmpv6`}},
		{"unknown interface", head + "services:\n  - vip: 192.0.2.1\n    port: 80\n    interface: eth9\n", []string{`k.yaml:5: services[0].interface: "eth9" is not in interfaces`}},
		{"table size not prime", head + "services:\n  - vip: 192.0.2.1\n    port: 80\n    table_size: 65536\n", []string{"k.yaml:5: services[0].table_size: 65536 is not a prime up to 16777216"}},
		{"duplicate service", head + "services:\n  - {vip: 192.0.2.1, port: 80, name: a}\n  - {vip: 192.0.2.1, port: 80, name: b}\n", []string{`k.yaml:4: services[1]: same VIP, port and protocol as service "a"`}},
		{"bad policy", head + "services:\n  - vip: 192.0.2.1\n    port: 80\n    when_all_down: panic\n", []string{`k.yaml:5: services[0].when_all_down: "panic" is not one of drop, pass, keep-last`}},
		{"panic threshold", head + "services:\n  - vip: 192.0.2.1\n    port: 80\n    panic_threshold: 150\n", []string{"k.yaml:5: services[0].panic_threshold: 150 is not a percentage from 0 to 100"}},
		{"flap half set", head + "services:\n  - vip: 192.0.2.1\n    port: 80\n    flap: {transitions: 3}\n", []string{"k.yaml:5: services[0].flap: needs transitions (at least 2), within and hold_down together"}},
		{"bad duration", head + "services:\n  - vip: 192.0.2.1\n    check: {interval: soon}\n", []string{`k.yaml:4: services[0].check.interval: "soon" is not a duration like 250ms or 2s`}},
		{"check timeout longer than interval", head + "services:\n  - vip: 192.0.2.1\n    port: 80\n    check:\n      interval: 100ms\n      timeout: 1s\n", []string{"k.yaml:7: services[0].check.timeout: 1s is longer than the interval 100ms"}},
		{"check type", head + "services:\n  - vip: 192.0.2.1\n    port: 80\n    check: {type: smtp}\n", []string{`k.yaml:5: services[0].check.type: "smtp" is not tcp, tcp-half-open, http, https, udp, icmp or exec`}},
		{"check source of another family", head + "services:\n  - vip: 192.0.2.1\n    port: 80\n    check: {type: tcp-half-open, source: \"2001:db8::9\"}\n    backends:\n      - address: 10.0.0.1\n      - address: 2001:db8::2\n",
			[]string{"k.yaml:7: services[0].backends[0].check.source: 2001:db8::9 is not of the address family of the backend 10.0.0.1"}},
		{"port-0 service needs a check port", head + "services:\n  - vip: 192.0.2.1\n", []string{"k.yaml:3: services[0].check.port: the service has port 0: the check needs a port of its own"}},
		// A problem with a check field that was not written points at
		// the check's key, as for any other field.
		{"unwritten check field, block check", head + "services:\n  - vip: 192.0.2.1\n    check:\n      type: http\n", []string{"k.yaml:4: services[0].check.port: the service has port 0: the check needs a port of its own"}},
		{"unwritten check field, aliased check", head + "defaults:\n  check: &hc\n    type: http\nservices:\n  - vip: 192.0.2.1\n    check: *hc\n", []string{"k.yaml:7: services[0].check.port: the service has port 0: the check needs a port of its own"}},
		{"backend errors, all reported", head + `services:
  - vip: 192.0.2.1
    port: 80
    backends:
      - address: 10.0.0.1
        mac: 01:00:5e:00:00:01
        weight: 0
      - address: 10.0.0.1
        vlan: 5000
        group: 9
`, []string{
			"k.yaml:7: services[0].backends[0].mac: 01:00:5e:00:00:01 is a multicast address",
			"k.yaml:8: services[0].backends[0].weight: 0 is outside 1-65536",
			"k.yaml:9: services[0].backends[1].address: 10.0.0.1 is listed twice",
			"k.yaml:11: services[0].backends[1].group: 9, at most 7",
			"k.yaml:10: services[0].backends[1].vlan: 5000 is outside 0-4094",
		}},
		{"bad MAC", head + "services:\n  - vip: 192.0.2.1\n    port: 80\n    backends: [{address: 10.0.0.1, mac: nope}]\n", []string{`k.yaml:5: services[0].backends[0].mac: "nope" is not an Ethernet address like 02:00:5e:10:00:01`}},
		{"typed values, all reported", `interfaces: [{name: eth0, mode: turbo}]
services:
  - vip: 192.0.2.1
    port: 80
    protocol: sctp
    when_all_down: panic
    backends: [{address: 10.0.0.1, mac: "00:00:00:00:00:00", weight: 0}]
`, []string{
			`k.yaml:1: interfaces[0].mode: "turbo" is not one of auto, native, generic`,
			`k.yaml:5: services[0].protocol: "sctp" is not one of tcp, udp, icmp, icmpv6`,
			`k.yaml:6: services[0].when_all_down: "panic" is not one of drop, pass, keep-last`,
			"k.yaml:7: services[0].backends[0].mac: 00:00:00:00:00:00 is the zero address",
			"k.yaml:7: services[0].backends[0].weight: 0 is outside 1-65536",
		}},
		{"unknown backend field", head + "services:\n  - vip: 192.0.2.1\n    port: 80\n    backends: [{adress: 10.0.0.1}]\n", []string{"k.yaml:5: services[0].backends[0].adress: unknown field (known: address, check, group, mac, port, vlan, weight)"}},
		{"backend check override invalid", head + "services:\n  - vip: 192.0.2.1\n    port: 80\n    backends:\n      - address: 10.0.0.1\n        check: {rise: 0}\n", []string{"k.yaml:7: services[0].backends[0].check.rise: 0, must be at least 1"}},
		{"list where a value belongs", head + "log: {format: [a]}\n", []string{"k.yaml:2: log.format: want a single value, not a list or mapping"}},
		{"log level", head + "log: {level: loud}\n", []string{`k.yaml:2: log.level: "loud" is not one of debug, info, warn, error`}},
		{"metrics address", head + "metrics: {listen: nowhere}\n", []string{`k.yaml:2: metrics.listen: "nowhere" is not host:port or off`}},
		{"duplicate key", head + "log: {level: info, level: warn}\n", []string{"k.yaml:2: log.level: given twice"}},
		{"relative state dir", "node: {state_dir: var/keepbit}\n" + head, []string{`k.yaml:1: node.state_dir: "var/keepbit" is not an absolute path`}},
		{"flow cache not a power of two", "node: {flow_cache_size: 10000}\n" + head, []string{`k.yaml:1: node.flow_cache_size: flow cache size 10000: want a power of two from 256 to 1048576`}},
		{"mapped and plain address are one backend", head + "services:\n  - vip: 192.0.2.1\n    port: 80\n    backends:\n      - address: 10.0.0.1\n      - address: ::ffff:10.0.0.1\n",
			[]string{"k.yaml:7: services[0].backends[1].address: 10.0.0.1 is listed twice"}},
		{"mapped VIP is the IPv4 service", head + "services:\n  - {vip: 192.0.2.1, port: 80, name: a}\n  - {vip: \"::ffff:192.0.2.1\", port: 80, name: b}\n",
			[]string{`k.yaml:4: services[1]: same VIP, port and protocol as service "a"`}},
		{"vrrp without vrid and vips", head + "vrrp:\n  - name: v\n", []string{"k.yaml:3: vrrp[0].vrid: required, 1-255", "k.yaml:3: vrrp[0].vips: at least one VIP is required"}},
		{"vrrp interval not in centiseconds", head + "vrrp:\n  - vrid: 1\n    vips: [192.0.2.1]\n    advert_interval: 15ms\n", []string{"k.yaml:5: vrrp[0].advert_interval: 15ms: want a multiple of 10ms from 10ms to 40.95s (VRRPv3 counts centiseconds)"}},
		{"vrrp priority 0", head + "vrrp:\n  - vrid: 1\n    vips: [192.0.2.1]\n    priority: 0\n", []string{"k.yaml:5: vrrp[0].priority: 0 is reserved for resignation: use 1-254, or 255 for the address owner"}},
		{"vrrp mixed families", head + "vrrp:\n  - vrid: 1\n    vips: [192.0.2.1, 2001:db8::1]\n", []string{"k.yaml:4: vrrp[0].vips[1]: 2001:db8::1: all VIPs of an instance must be IPv4 or all IPv6 (VRRPv3 runs one family per instance)"}},
		{"vrrp VIP in two instances", head + "vrrp:\n  - {name: a, vrid: 1, vips: [192.0.2.1]}\n  - {name: b, vrid: 2, vips: [192.0.2.2, 192.0.2.1]}\n", []string{`k.yaml:4: vrrp[1].vips[1]: 192.0.2.1 is already a VIP of instance "a"`}},
		{"vrrp VIP twice in one instance", head + "vrrp:\n  - {name: a, vrid: 1, vips: [192.0.2.1, 192.0.2.1]}\n", []string{`k.yaml:3: vrrp[0].vips[1]: 192.0.2.1 is already a VIP of instance "a"`}},
		{"vrrp more than 255 VIPs", head + "vrrp:\n  - {name: a, vrid: 1, vips: [" + manyVIPs(256) + "]}\n", []string{"k.yaml:3: vrrp[0].vips: 256 VIPs, at most 255 per instance (a VRRPv3 advertisement counts them in 8 bits)"}},
		{"vrrp duplicate vrid", head + "vrrp:\n  - {name: a, vrid: 1, vips: [192.0.2.1]}\n  - {name: b, vrid: 1, vips: [192.0.2.2]}\n", []string{`k.yaml:4: vrrp[1].vrid: 1 is already used on eth0 by instance "a"`}},
		{"vrrp tracks an unknown service", head + "vrrp:\n  - vrid: 1\n    vips: [192.0.2.1]\n    track: {services: [{name: nope, weight: 10}]}\n", []string{`k.yaml:5: vrrp[0].track.services[0].name: "nope" is not a configured service`}},
		{"vrrp track weight", head + "vrrp:\n  - vrid: 1\n    vips: [192.0.2.1]\n    track: {interfaces: [{name: eth1, weight: 300}]}\n", []string{"k.yaml:5: vrrp[0].track.interfaces[0].weight: 300, want 0 (fault) to 253"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("k.yaml", []byte(c.yaml))
			if err == nil {
				t.Fatal("accepted")
			}
			got := strings.Split(err.Error(), "\n")
			if strings.Join(got, "\n") != strings.Join(c.want, "\n") {
				t.Fatalf("errors:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(c.want, "\n  "))
			}
		})
	}
}

func TestVRRPDefaults(t *testing.T) {
	c, err := Parse("k.yaml", []byte(`
interfaces: [{name: eth0}]
vrrp:
  - vrid: 51
    vips: [192.0.2.10]
    track:
      dataplane: {weight: 0}
      commands: [{command: /bin/true, weight: 20}]
`))
	if err != nil {
		t.Fatal(err)
	}
	v := c.VRRP[0]
	if v.Name != "vrid-51" || v.Interface != "eth0" || v.Priority != 100 || v.AdvertInterval != time.Second || !*v.Preempt ||
		v.Announce.Count != 3 || v.Announce.Spacing != 10*time.Millisecond || v.Track.Commands[0].Interval != time.Second || v.Track.Dataplane == nil {
		t.Fatalf("defaults not applied: %+v", v)
	}
}

// TestMappedAddressesUnmapped: an IPv4-mapped IPv6 address (::ffff:a.b.c.d)
// is taken as the IPv4 address, which is how the dataplane keys services
// and backends (issue 7 defect 12: kept mapped, every reload deleted and
// re-created the service).
func TestMappedAddressesUnmapped(t *testing.T) {
	c, err := Parse("k.yaml", []byte(`
interfaces: [{name: eth0}]
services:
  - vip: "::ffff:192.0.2.10"
    port: 80
    backends: [{address: "::ffff:10.0.0.1"}, {address: "2001:db8::1"}]
vrrp:
  - {vrid: 1, vips: ["::ffff:192.0.2.10"], peers: ["::ffff:10.9.0.2"]}
`))
	if err != nil {
		t.Fatal(err)
	}
	s := c.Services[0]
	got := []string{s.VIP.String(), s.Name, s.Backends[0].Address.String(), s.Backends[1].Address.String(), c.VRRP[0].VIPs[0].String(), c.VRRP[0].Peers[0].String()}
	want := []string{"192.0.2.10", "192.0.2.10:80/tcp", "10.0.0.1", "2001:db8::1", "192.0.2.10", "10.9.0.2"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("addresses %v, want %v", got, want)
	}
}

// manyVIPs lists n distinct IPv4 addresses for a flow-style YAML list.
func manyVIPs(n int) string {
	vips := make([]string, n)
	for i := range vips {
		vips[i] = fmt.Sprintf("10.0.%d.%d", i/250, i%250+1)
	}
	return strings.Join(vips, ", ")
}
