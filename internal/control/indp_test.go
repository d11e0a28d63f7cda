package control

import (
	"net/netip"
	"testing"

	"github.com/keepbit/keepbit/loader"
)

// TestBackendLeavingDataplaneIsNotUp: a backend whose MAC becomes unknown
// (its configured MAC removed, no neighbour entry) leaves the dataplane;
// the controller must stop counting it as up. It kept the state it had,
// so Status showed it up and keep-last / the panic threshold counted it:
// when the only backend left in the dataplane failed, keep-last let it go
// because the absent one was "still up", and the service dropped all
// traffic.
func TestBackendLeavingDataplaneIsNotUp(t *testing.T) {
	a, b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	svc := func(bMAC string) string {
		return `  - name: web
    vip: 10.99.0.1
    port: 80
    when_all_down: keep-last
    backends:
      - {address: 10.0.0.1, mac: "02:00:00:00:00:01"}
      - {address: 10.0.0.2` + bMAC + `}
`
	}
	l := newCtlLab(t)
	c := l.start(l.config(svc(`, mac: "02:00:00:00:00:02"`)))
	verdict(c, "web", a, true)
	verdict(c, "web", b, true)
	if err := c.Reload(t.Context(), l.config(svc(""))); err != nil {
		t.Fatal(err)
	}
	if got := held(t, c)["web"]; statesString(got) != "10.0.0.1=up" {
		t.Fatalf("after b's MAC went away the dataplane holds %s, want 10.0.0.1=up alone", statesString(got))
	}
	for _, bs := range c.Status()[0].Backends {
		if bs.Address == b.String() && bs.State == loader.Up.String() {
			t.Errorf("status shows %s up while it is not in the dataplane", b)
		}
	}
	verdict(c, "web", a, false)
	if got := held(t, c)["web"]; statesString(got) != "10.0.0.1=up" {
		t.Fatalf("the last backend in the dataplane failed: it holds %s, want 10.0.0.1=up (keep-last)", statesString(got))
	}
}
