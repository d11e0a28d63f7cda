package config

import (
	"fmt"
	"strings"
	"testing"
)

// BenchmarkParseScale: decoding and validating the config of a 1,000
// services x 16 backends node, as keepbitd does at start and reload.
func BenchmarkParseScale(b *testing.B) {
	var sb strings.Builder
	sb.WriteString(`node: {hash_seed: 7, pin_root: /tmp/x/bpf, state_dir: /tmp/x/state}
interfaces: [{name: kbs0}]
api: {socket: /tmp/x/keepbit.sock}
metrics: {listen: "127.0.0.1:19469"}
log: {format: json, level: info}
defaults:
  table_size: 2053
  check: {type: tcp, interval: 10s, timeout: 1s, rise: 1, fall: 2, jitter: 0.5}
services:
`)
	for i := range 1000 {
		fmt.Fprintf(&sb, "  - name: s%d\n    vip: 10.90.%d.%d\n    port: 80\n", i, i/250, i%250+1)
		sb.WriteString("    backends:\n")
		for j := range 16 {
			n := i*16 + j
			fmt.Fprintf(&sb, "      - {address: 10.80.%d.%d, mac: %q, weight: %d}\n", n/250, n%250+1, "02:00:00:00:00:01", 1)
		}
	}
	data := []byte(sb.String())
	b.ResetTimer()
	for b.Loop() {
		if _, err := Parse("x", data); err != nil {
			b.Fatal(err)
		}
	}
}
