package loader

import (
	"net"
	"net/netip"
	"strings"
	"testing"
)

func TestValidateRejects(t *testing.T) {
	good := func() BackendSpec { return backend("10.5.0.1", "02:ab:00:00:00:01") }
	key := svc("198.51.100.40", 80, TCP)
	cases := []struct {
		name    string
		key     ServiceKey
		spec    ServiceSpec
		wantErr string
	}{
		{"no VIP", ServiceKey{Port: 80, Proto: TCP}, ServiceSpec{}, "vip: not a valid address"},
		{"bad proto", ServiceKey{VIP: key.VIP, Proto: 47}, ServiceSpec{}, "proto: 47 is not tcp, udp, icmp or icmpv6"},
		{"icmp with a port", svc("198.51.100.40", 8, ICMP), ServiceSpec{}, "port: must be 0 for icmp"},
		{"table size not prime", key, ServiceSpec{TableSize: 1000}, "table_size: 1000 is not a prime"},
		{"backend without address", key, ServiceSpec{Backends: []BackendSpec{{MAC: mac("02:00:00:00:00:01"), Weight: 1}}}, "backend 0: addr: not a valid address"},
		{"backend twice", key, ServiceSpec{Backends: []BackendSpec{good(), good()}}, "backend 1 (10.5.0.1): addr: listed twice"},
		{"no MAC", key, ServiceSpec{Backends: []BackendSpec{{Addr: netip.MustParseAddr("10.5.0.1"), Weight: 1}}}, "mac: want a 6-byte Ethernet address"},
		{"multicast MAC", key, ServiceSpec{Backends: []BackendSpec{func() BackendSpec { b := good(); b.MAC = net.HardwareAddr{1, 0, 0x5e, 0, 0, 1}; return b }()}}, "mac: 01:00:5e:00:00:01 is a multicast address"},
		{"VLAN 4095", key, ServiceSpec{Backends: []BackendSpec{good().vlan(4095)}}, "vlan: 4095 is outside 0-4094"},
		{"weight 0", key, ServiceSpec{Backends: []BackendSpec{good().weight(0)}}, "weight: 0 is outside 1-65536"},
		{"group 8", key, ServiceSpec{Backends: []BackendSpec{good().group(8)}}, "group: 8, at most 7"},
		{"unknown state", key, ServiceSpec{Backends: []BackendSpec{good().state(7)}}, "state: 7 is not up, down or draining"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := validate(c.key, &c.spec)
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Fatalf("got %v, want an error containing %q", err, c.wantErr)
			}
		})
	}
}

// TestRejectedUpdateChangesNothing: a bad update of a live service is
// refused whole and the service keeps forwarding as before.
func TestRejectedUpdateChangesNothing(t *testing.T) {
	l := newLab(t)
	key := svc("198.51.100.41", 80, TCP)
	b := backend("10.5.0.2", "02:ab:00:00:00:02")
	l.apply(key, ServiceSpec{Backends: []BackendSpec{b}})
	bad := []ServiceSpec{
		{Backends: []BackendSpec{b, backend("10.5.0.3", "02:ab:00:00:00:03").port("no-such-port")}},
		{Backends: []BackendSpec{b.weight(0)}},
		{TableSize: 4},
	}
	for _, spec := range bad {
		if _, err := l.dp.ApplyService(key, spec); err == nil {
			t.Fatalf("apply %+v: accepted, want an error", spec)
		}
		if got := l.chosen("198.51.100.41", "203.0.113.80", 7000); got != b.MAC.String() {
			t.Fatalf("after a rejected update the flow went to %s, want %s", got, b.MAC)
		}
		if n := len(l.dp.Services()[0].Backends); n != 1 {
			t.Fatalf("rejected update left %d backends", n)
		}
	}
	if _, err := l.dp.SetBackendState(key, netip.MustParseAddr("10.9.9.9"), Down); err == nil ||
		!strings.Contains(err.Error(), "backend 10.9.9.9: not configured") {
		t.Errorf("state change for an unknown backend: %v", err)
	}
	if _, err := l.dp.DeleteService(svc("198.51.100.99", 80, TCP)); err == nil ||
		!strings.Contains(err.Error(), "not configured") {
		t.Errorf("deleting an unknown service: %v", err)
	}
}

// TestDeleteServiceStopsCachedFlows: after DeleteService even a flow served
// from the per-CPU cache passes to the stack from its next packet, and the
// freed IDs serve a new service correctly.
func TestDeleteServiceStopsCachedFlows(t *testing.T) {
	l := newLab(t)
	key := svc("198.51.100.42", 80, TCP)
	b := backend("10.5.0.4", "02:ab:00:00:00:04")
	l.apply(key, ServiceSpec{Backends: []BackendSpec{b}})
	for range 3 {
		if got := l.chosen("198.51.100.42", "203.0.113.81", 7001); got != b.MAC.String() {
			t.Fatalf("flow went to %s, want %s", got, b.MAC)
		}
	}
	if _, err := l.dp.DeleteService(key); err != nil {
		t.Fatal(err)
	}
	if got := l.chosen("198.51.100.42", "203.0.113.81", 7001); got != "PASS" {
		t.Fatalf("after delete the cached flow got %s, want PASS", got)
	}
	c := backend("10.5.0.5", "02:ab:00:00:00:05")
	l.apply(svc("198.51.100.43", 0, TCP), ServiceSpec{Backends: []BackendSpec{c}})
	if got := l.chosen("198.51.100.43", "203.0.113.81", 7001); got != c.MAC.String() {
		t.Fatalf("new service after delete: flow went to %s, want %s", got, c.MAC)
	}
	if got := l.chosen("198.51.100.42", "203.0.113.81", 7001); got != "PASS" {
		t.Fatalf("deleted VIP: %s, want PASS", got)
	}
}
