package config

import (
	"strings"
	"testing"
)

const diffBase = `node: {name: lb1, hash_seed: 42, pin_root: /sys/fs/bpf}
interfaces: [{name: eth0}]
defaults:
  check: {type: tcp, interval: 1s, timeout: 500ms, rise: 2, fall: 3}
services:
  - name: web
    vip: 192.0.2.10
    port: 443
    backends:
      - {address: 10.0.0.11, mac: "02:00:00:00:00:11"}
      - {address: 10.0.0.12, mac: "02:00:00:00:00:12", weight: 2}
  - name: dns
    vip: 192.0.2.53
    port: 53
    protocol: udp
    backends:
      - {address: 10.0.0.21, mac: "02:00:00:00:00:21"}
vrrp:
  - {name: v1, vrid: 7, interface: eth0, priority: 100, advert_interval: 100ms, vips: [192.0.2.10]}
`

func TestDiff(t *testing.T) {
	for _, c := range []struct {
		name string
		edit func(string) string
		want []string // "op path before -> after [effect]"
	}{
		{"same file", func(s string) string { return s }, nil},
		{"reordered backends and services are no change", func(s string) string {
			s = strings.Replace(s, `      - {address: 10.0.0.11, mac: "02:00:00:00:00:11"}
      - {address: 10.0.0.12, mac: "02:00:00:00:00:12", weight: 2}`, `      - {address: 10.0.0.12, mac: "02:00:00:00:00:12", weight: 2}
      - {address: 10.0.0.11, mac: "02:00:00:00:00:11"}`, 1)
			return s
		}, nil},
		{"weight changed", func(s string) string {
			return strings.Replace(s, `weight: 2}`, `weight: 5}`, 1)
		}, []string{"changed services[web].backends[10.0.0.12].weight 2 -> 5"}},
		{"backend added and removed", func(s string) string {
			return strings.Replace(s, `{address: 10.0.0.11, mac: "02:00:00:00:00:11"}`, `{address: 10.0.0.13, mac: "02:00:00:00:00:13"}`, 1)
		}, []string{
			"removed services[web].backends[10.0.0.11] address=10.0.0.11 mac=02:00:00:00:00:11 weight=1 ->",
			"added services[web].backends[10.0.0.13]  -> address=10.0.0.13 mac=02:00:00:00:00:13 weight=1",
		}},
		{"the default check reaches every backend", func(s string) string {
			return strings.Replace(s, `rise: 2, fall: 3}`, `rise: 2, fall: 2}`, 1)
		}, []string{
			"changed services[dns].backends[10.0.0.21].check.fall 3 -> 2",
			"changed services[dns].check.fall 3 -> 2",
			"changed services[web].backends[10.0.0.11].check.fall 3 -> 2",
			"changed services[web].backends[10.0.0.12].check.fall 3 -> 2",
			"changed services[web].check.fall 3 -> 2",
		}},
		{"service removed", func(s string) string {
			i := strings.Index(s, "  - name: dns")
			j := strings.Index(s, "vrrp:")
			return s[:i] + s[j:]
		}, []string{"removed services[dns] name=dns vip=192.0.2.53 port=53 protocol=udp interface=eth0 forwarding=dsr ->"}},
		{"VIP and VRRP priority", func(s string) string {
			s = strings.Replace(s, "vip: 192.0.2.10", "vip: 192.0.2.11", 1)
			return strings.Replace(s, "priority: 100, advert_interval: 100ms, vips: [192.0.2.10]", "priority: 150, advert_interval: 100ms, vips: [192.0.2.11]", 1)
		}, []string{
			"changed services[web].vip 192.0.2.10 -> 192.0.2.11",
			"changed vrrp[v1].priority 100 -> 150",
			"changed vrrp[v1].vips [192.0.2.10] -> [192.0.2.11]",
		}},
		{"start-only fields say what they take", func(s string) string {
			s = strings.Replace(s, "hash_seed: 42", "hash_seed: 43", 1)
			s = strings.Replace(s, "pin_root: /sys/fs/bpf", "pin_root: /run/bpf", 1)
			return strings.Replace(s, "interfaces: [{name: eth0}]", "interfaces: [{name: eth0, mode: generic}]", 1)
		}, []string{
			"changed interfaces[eth0].mode auto -> generic [detach]",
			"changed node.hash_seed 42 -> 43 [restart]",
			"changed node.pin_root /sys/fs/bpf -> /run/bpf [detach]",
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			a, err := Parse("running.yaml", []byte(diffBase))
			if err != nil {
				t.Fatal(err)
			}
			b, err := Parse("candidate.yaml", []byte(c.edit(diffBase)))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, ch := range Diff(a, b) {
				line := strings.TrimSpace(ch.Op + " " + ch.Path + " " + ch.Before + " -> " + ch.After)
				if ch.Effect != "" {
					line += " [" + ch.Effect + "]"
				}
				got = append(got, line)
			}
			if strings.Join(got, "\n") != strings.Join(c.want, "\n") {
				t.Fatalf("diff:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(c.want, "\n"))
			}
		})
	}
}

func TestWriteChanges(t *testing.T) {
	for _, c := range []struct {
		name    string
		changes []Change
		want    string
	}{
		{"none", nil, "no changes\n"},
		{"each kind", []Change{
			{Path: "node.hash_seed", Op: "changed", Before: "42", After: "43", Effect: "restart"},
			{Path: "services[web].backends[10.0.0.13]", Op: "added", After: "address=10.0.0.13 weight=1"},
			{Path: "services[dns]", Op: "removed", Before: "name=dns"},
		}, "changed  node.hash_seed                     42 -> 43  (a reload refuses this: restart keepbitd)\n" +
			"added    services[web].backends[10.0.0.13]  address=10.0.0.13 weight=1\n" +
			"removed  services[dns]                      name=dns\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var b strings.Builder
			if err := WriteChanges(&b, c.changes); err != nil {
				t.Fatal(err)
			}
			if b.String() != c.want {
				t.Fatalf("got:\n%q\nwant:\n%q", b.String(), c.want)
			}
		})
	}
}
