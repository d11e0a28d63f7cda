package config

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestPassive: the section decoded with its defaults; absent, off.
func TestPassive(t *testing.T) {
	for _, c := range []struct {
		name string
		yaml string
		want *Passive
	}{
		{"absent: off", "", nil},
		{"empty: on with the defaults", "    passive: {}\n",
			&Passive{SynRetransmits: 5, Window: 2 * time.Second, Action: "eject", Hold: 10 * time.Second, MaxEjected: 1}},
		{"every field", "    passive: {syn_retransmits: 20, window: 500ms, action: flag, hold: 1m, max_ejected: 2}\n",
			&Passive{SynRetransmits: 20, Window: 500 * time.Millisecond, Action: "flag", Hold: time.Minute, MaxEjected: 2}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := Parse("k.yaml", []byte(predictBase+c.yaml))
			if err != nil {
				t.Fatal(err)
			}
			if got := cfg.Services[0].Passive; !reflect.DeepEqual(got, c.want) {
				t.Fatalf("got %+v\nwant %+v", got, c.want)
			}
		})
	}
}

// TestBadPassive: every error names file:line and the field.
func TestBadPassive(t *testing.T) {
	for _, c := range []struct {
		name, yaml, want string
	}{
		{"unknown action", "    passive: {action: drain}\n", `k.yaml:9: services[0].passive.action: "drain" is not one of eject, flag`},
		{"no retransmits", "    passive: {syn_retransmits: 0}\n", "k.yaml:9: services[0].passive.syn_retransmits: 0 is outside 1-100000"},
		{"window below the sampling", "    passive: {window: 10ms}\n", "k.yaml:9: services[0].passive.window: 10ms, want 100ms to 1m0s"},
		{"hold too long", "    passive: {hold: 2h}\n", "k.yaml:9: services[0].passive.hold: 2h0m0s, want 1s to 1h0m0s"},
		{"max ejected 0", "    passive: {max_ejected: 0}\n", "k.yaml:9: services[0].passive.max_ejected: 0: at least 1"},
		{"udp service", "    protocol: udp\n    passive: {}\n", "k.yaml:10: services[0].passive: counts retransmitted TCP SYNs: the service's protocol is udp"},
		{"not a mapping", "    passive: [5]\n", "k.yaml:9: services[0].passive:"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("k.yaml", []byte(predictBase+c.yaml))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v\nwant it to contain %q", err, c.want)
			}
		})
	}
}
