package config

import (
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// flowKey writes a key file with the given content and mode.
func flowKey(t *testing.T, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "flow.key")
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFlowSharingDefaults(t *testing.T) {
	key := flowKey(t, strings.Repeat("s", 40)+"\n", 0o600)
	cases := []struct {
		name string
		yaml string
		want *FlowSharing
	}{
		{"absent: off", "", nil},
		{"peers, defaults", "flow_sharing:\n  key_file: " + key + "\n  peers: [10.0.0.2, \"10.0.0.3:9000\", \"::ffff:10.0.0.4\", \"[fd00::5]:7000\"]\n",
			&FlowSharing{Port: 7785, KeyFile: key, MaxRate: 50000, BatchInterval: 5 * time.Millisecond, WarmupTimeout: 2 * time.Second,
				LongLivedAfter: 10 * time.Second, Refresh: 30 * time.Second,
				Peers: []string{"10.0.0.2", "10.0.0.3:9000", "::ffff:10.0.0.4", "[fd00::5]:7000"},
				PeerAddrs: []netip.AddrPort{netip.MustParseAddrPort("10.0.0.2:7785"), netip.MustParseAddrPort("10.0.0.3:9000"),
					netip.MustParseAddrPort("10.0.0.4:7785"), netip.MustParseAddrPort("[fd00::5]:7000")}}},
		{"multicast, everything set", `flow_sharing:
  port: 4000
  multicast: {group: 239.255.77.85, interface: eth1}
  key_file: ` + key + `
  max_rate: 1000
  batch_interval: 1ms
  warmup_timeout: 500ms
  long_lived_after: 5s
  refresh: 1m
`, &FlowSharing{Port: 4000, KeyFile: key, MaxRate: 1000, BatchInterval: time.Millisecond, WarmupTimeout: 500 * time.Millisecond,
			LongLivedAfter: 5 * time.Second, Refresh: time.Minute,
			Multicast: &FlowMulticast{Group: netip.MustParseAddr("239.255.77.85"), Interface: "eth1"}}},
		{"listen", "flow_sharing:\n  listen: 10.0.0.1\n  key_file: " + key + "\n  peers: [10.0.0.2]\n",
			&FlowSharing{Port: 7785, Listen: netip.MustParseAddr("10.0.0.1"), KeyFile: key, MaxRate: 50000, BatchInterval: 5 * time.Millisecond,
				WarmupTimeout: 2 * time.Second, LongLivedAfter: 10 * time.Second, Refresh: 30 * time.Second,
				Peers: []string{"10.0.0.2"}, PeerAddrs: []netip.AddrPort{netip.MustParseAddrPort("10.0.0.2:7785")}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("k.yaml", []byte("interfaces: [{name: eth0}]\n"+tc.yaml))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(c.FlowSharing, tc.want) {
				t.Errorf("got  %+v\nwant %+v", c.FlowSharing, tc.want)
			}
		})
	}
}

// TestFlowSharingErrors: each section must fail with exactly these errors.
func TestFlowSharingErrors(t *testing.T) {
	key := flowKey(t, strings.Repeat("s", 32), 0o600)
	loose := flowKey(t, strings.Repeat("s", 32), 0o644)
	short := flowKey(t, "too short\n", 0o600)
	const head = "interfaces: [{name: eth0}]\nflow_sharing:\n"
	k := "  key_file: " + key + "\n"
	peers := "  peers: [10.0.0.2]\n"
	cases := []struct {
		name string
		yaml string
		want []string
	}{
		{"empty section", "interfaces: [{name: eth0}]\nflow_sharing:\n", []string{
			"k.yaml:2: flow_sharing: needs peers (the other nodes' addresses) or multicast (group and interface)",
			"k.yaml:2: flow_sharing.key_file: required: a file holding the shared secret (openssl rand -base64 48)"}},
		{"unknown field", head + k + peers + "  peer: [10.0.0.3]\n", []string{
			"k.yaml:5: flow_sharing.peer: unknown field (known: batch_interval, key_file, listen, long_lived_after, max_rate, multicast, peers, port, refresh, warmup_timeout)"}},
		{"both peers and multicast", head + k + peers + "  multicast: {group: 239.1.1.1, interface: eth0}\n", []string{
			"k.yaml:5: flow_sharing.multicast: peers and multicast are exclusive: pick one"}},
		{"bad peers", head + k + "  peers:\n    - 10.0.0.2\n    - 10.0.0.300\n    - 0.0.0.0\n    - 224.0.0.5\n    - \"10.0.0.2:7785\"\n    - \"10.0.0.9:0\"\n    - fe80::1%eth0\n", []string{
			`k.yaml:6: flow_sharing.peers[1]: "10.0.0.300" is not an address or address:port`,
			"k.yaml:7: flow_sharing.peers[2]: 0.0.0.0 is not a node's unicast address",
			"k.yaml:8: flow_sharing.peers[3]: 224.0.0.5 is not a node's unicast address",
			"k.yaml:9: flow_sharing.peers[4]: 10.0.0.2:7785 is listed twice (also peers[0])",
			"k.yaml:10: flow_sharing.peers[5]: port 0",
			`k.yaml:11: flow_sharing.peers[6]: "fe80::1%eth0" is not an address or address:port`}},
		{"peer of another family than listen", head + k + "  listen: 10.0.0.1\n  peers: [\"fd00::2\"]\n", []string{
			"k.yaml:5: flow_sharing.peers[0]: fd00::2 is not of listen's family (10.0.0.1)"}},
		{"multicast incomplete", head + k + "  multicast: {group: 10.0.0.1}\n", []string{
			"k.yaml:4: flow_sharing.multicast.group: 10.0.0.1 is not a multicast address",
			"k.yaml:4: flow_sharing.multicast.interface: required: the interface the group is joined on"}},
		{"multicast without group, with listen", head + k + "  listen: 10.0.0.1\n  multicast:\n    interface: eth0\n", []string{
			"k.yaml:5: flow_sharing.multicast.group: required",
			"k.yaml:4: flow_sharing.listen: not used with multicast (the group's port is bound on every address)"}},
		{"key file readable by others", head + peers + "  key_file: " + loose + "\n", []string{
			"k.yaml:4: flow_sharing.key_file: " + loose + " has mode 0644: it must not be readable or writable by group or others (chmod 600)"}},
		{"key too short", head + peers + "  key_file: " + short + "\n", []string{
			"k.yaml:4: flow_sharing.key_file: " + short + " holds a key of 9 bytes: at least 32 are required (openssl rand -base64 48)"}},
		{"key file missing", head + peers + "  key_file: /nonexistent/flow.key\n", []string{
			"k.yaml:4: flow_sharing.key_file: open /nonexistent/flow.key: no such file or directory"}},
		{"key file relative", head + peers + "  key_file: flow.key\n", []string{
			`k.yaml:4: flow_sharing.key_file: "flow.key" is not an absolute path`}},
		{"zeros and out of range", head + k + peers + "  port: 0\n  max_rate: 0\n  batch_interval: 0s\n  warmup_timeout: 1h\n  long_lived_after: 500ms\n  refresh: 2h\n", []string{
			"k.yaml:5: flow_sharing.port: 0 is not a port: want 1-65535 (default 7785)",
			"k.yaml:6: flow_sharing.max_rate: 0 flows/s, want 1-10000000",
			"k.yaml:7: flow_sharing.batch_interval: 0s, want 100µs to 1s",
			"k.yaml:8: flow_sharing.warmup_timeout: 1h0m0s, want 10ms to 10m0s",
			"k.yaml:9: flow_sharing.long_lived_after: 500ms, want 1s to 1h0m0s",
			"k.yaml:10: flow_sharing.refresh: 2h0m0s, want 1s to 1h0m0s"}},
		{"port too large", head + k + peers + "  port: 70000\n", []string{
			`k.yaml:5: flow_sharing.port: "70000" is not a whole number from 0 to 65535`}},
		{"listen multicast", head + k + peers + "  listen: 239.1.1.1\n", []string{
			"k.yaml:5: flow_sharing.listen: 239.1.1.1 is a multicast address: use multicast.group"}},
		{"peers not a list", head + k + "  peers: 10.0.0.2\n", []string{
			"k.yaml:4: flow_sharing.peers: want a list"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("k.yaml", []byte(tc.yaml))
			if err == nil {
				t.Fatalf("accepted, want %q", tc.want)
			}
			got := strings.Split(err.Error(), "\n")
			if !slices.Equal(got, tc.want) {
				t.Errorf("got\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(tc.want, "\n  "))
			}
		})
	}
}
