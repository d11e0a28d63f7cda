package control

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/keepbit/keepbit/loader"
)

// TestTopFlows: each dataplane's top flows merge into the limit with the
// most packets, most first, equal counts in dataplane order.
func TestTopFlows(t *testing.T) {
	f := func(port uint16, packets uint64) loader.Flow {
		return loader.Flow{Client: netip.AddrPortFrom(netip.MustParseAddr("203.0.113.1"), port), Packets: packets}
	}
	cases := []struct {
		name  string
		lists [][]loader.Flow
		limit int
		want  []uint16 // client ports
	}{
		{"none", nil, 5, nil},
		{"one dataplane", [][]loader.Flow{{f(1, 5), f(2, 50)}}, 5, []uint16{2, 1}},
		{"merged and cut", [][]loader.Flow{{f(1, 50), f(2, 5)}, {f(3, 20)}}, 2, []uint16{1, 3}},
		{"ties keep order", [][]loader.Flow{{f(1, 7)}, {f(2, 7)}}, 2, []uint16{1, 2}},
		{"limit 0", [][]loader.Flow{{f(1, 7)}}, 0, nil},
	}
	for _, c := range cases {
		var got []uint16
		for _, fl := range topFlows(c.lists, c.limit) {
			got = append(got, fl.Client.Port())
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}
