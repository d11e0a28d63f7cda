package config

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

const drillBase = `interfaces: [{name: eth0}]
services:
  - name: web
    vip: 10.0.0.100
    port: 80
    backends: [{address: 10.0.0.1}, {address: 10.0.0.2}]
`

// TestDrills: the drills section decoded with its defaults; absent, none.
func TestDrills(t *testing.T) {
	for _, c := range []struct {
		name string
		yaml string
		want []Drill
	}{
		{"absent: none", "", nil},
		{"backend and node", `drills:
  - {kind: backend, service: web, backend: "::ffff:10.0.0.1", every: 24h}
  - kind: node
    every: 168h
    for: 30s
    notify: {command: /bin/true}
`, []Drill{
			{Kind: "backend", Service: "web", Backend: netip.MustParseAddr("10.0.0.1"), Every: 24 * time.Hour, For: 10 * time.Second},
			{Kind: "node", Every: 168 * time.Hour, For: 30 * time.Second, Notify: Notify{Command: "/bin/true", Timeout: 5 * time.Second}},
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := Parse("k.yaml", []byte(drillBase+c.yaml))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(cfg.Drills, c.want) {
				t.Fatalf("got %+v\nwant %+v", cfg.Drills, c.want)
			}
		})
	}
}

// TestBadDrills: every error names file:line and the field.
func TestBadDrills(t *testing.T) {
	for _, c := range []struct {
		name, yaml, want string
	}{
		{"no kind", "drills: [{every: 1h}]", "k.yaml:7: drills[0].kind: required: backend or node"},
		{"unknown kind", "drills: [{kind: rack, every: 1h}]", `k.yaml:7: drills[0].kind: "rack" is not one of backend, node`},
		{"backend without service", "drills: [{kind: backend, backend: 10.0.0.1, every: 1h}]", "drills[0].service: required for a backend drill"},
		{"unknown service", "drills: [{kind: backend, service: api, backend: 10.0.0.1, every: 1h}]", `drills[0].service: "api" is not a configured service`},
		{"backend not in service", "drills: [{kind: backend, service: web, backend: 10.0.0.9, every: 1h}]", `drills[0].backend: 10.0.0.9 is not a backend of service "web"`},
		{"backend missing", "drills: [{kind: backend, service: web, every: 1h}]", "drills[0].backend: required for a backend drill"},
		{"bad backend address", "drills: [{kind: backend, service: web, backend: web1, every: 1h}]", `drills[0].backend: "web1" is not an IPv4 or IPv6 address`},
		{"node with service", "drills: [{kind: node, service: web, every: 1h}]", "drills[0].service: a node drill takes no service"},
		{"no every", "drills: [{kind: node}]", "drills[0].every: required"},
		{"every too often", "drills: [{kind: node, every: 10s}]", "drills[0].every: 10s, at least 1m0s"},
		{"bad every", "drills: [{kind: node, every: daily}]", `drills[0].every: "daily" is not a duration`},
		{"for too short", "drills: [{kind: node, every: 1h, for: 1ms}]", "drills[0].for: 1ms, want 100ms to 1h0m0s"},
		{"for not shorter than every", "drills: [{kind: node, every: 1m, for: 1m}]", "drills[0].for: 1m0s is not shorter than every (1m0s)"},
		{"same target twice", "drills: [{kind: node, every: 1h}, {kind: node, every: 2h}]", "drills[1]: drills the same node as drills[0]"},
		{"notify without command", "drills: [{kind: node, every: 1h, notify: {timeout: 1s}}]", "drills[0].notify.command: required with args or timeout"},
		{"unknown field", "drills: [{kind: node, every: 1h, often: yes}]", "drills[0].often: unknown field"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("k.yaml", []byte(drillBase+c.yaml+"\n"))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want %q", err, c.want)
			}
		})
	}
}
