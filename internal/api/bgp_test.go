package api

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/ownership"
	"github.com/keepbit/keepbit/vip/bfd"
	"github.com/keepbit/keepbit/vip/bgp"
)

// fakeBGP is one session with BFD held down and two routes.
type fakeBGP struct {
	configured bool
	drains     []time.Duration
	undrains   int
}

var t0 = time.Unix(1700000000, 0).UTC()

func (f *fakeBGP) Status() ownership.BGPStatus {
	if !f.configured {
		return ownership.BGPStatus{}
	}
	return ownership.BGPStatus{Configured: true, ASN: 65001, RouterID: netip.MustParseAddr("10.91.0.11"),
		Sessions: []ownership.BGPSession{{PeerStatus: bgp.PeerStatus{Address: netip.MustParseAddr("10.91.0.1"), ASN: 65000,
			State: bgp.StateIdle, AdminDown: true, Since: t0, Reason: "held down: bfd: detection-time-expired"}, Transitions: 7, Established: 2,
			BFD: &ownership.BFDStatus{State: bfd.Down, RemoteState: bfd.Up, Diag: bfd.DiagDetectionTimeExpired, Local: netip.MustParseAddr("10.91.0.11"),
				Interface: "eth0", Since: t0, Changes: 4, DetectTime: 300 * time.Millisecond}}},
		Routes: []ownership.BGPRoute{
			{VIP: netip.MustParseAddr("10.90.9.8"), Prefix: netip.MustParsePrefix("10.90.9.8/32"), Announced: true, Since: t0, Services: []string{"dns"}},
			{VIP: netip.MustParseAddr("10.90.9.9"), Prefix: netip.MustParsePrefix("10.90.9.9/32"), Reason: "no usable backend", Since: t0, Services: []string{"web"}},
		}}
}

func (f *fakeBGP) Drain(_ context.Context, why string, hold time.Duration) (ownership.DrainInfo, error) {
	if !f.configured {
		return ownership.DrainInfo{}, ownership.ErrNotConfigured
	}
	f.drains = append(f.drains, hold)
	return ownership.DrainInfo{Withdrawn: 1, CloseAt: t0.Add(10 * time.Second)}, nil
}

func (f *fakeBGP) Undrain(context.Context) error {
	if !f.configured {
		return ownership.ErrNotConfigured
	}
	f.undrains++
	return nil
}

// TestBGPHandlers: GET /v1/bgp prints sessions, BFD and routes with their
// reasons; drain takes hold (default: the config's), refuses a bad one,
// and answers 409 without BGP.
func TestBGPHandlers(t *testing.T) {
	cases := []struct {
		configured   bool
		method, path string
		code         int
		want         []string
		drains       []time.Duration
	}{
		{true, "GET", "/v1/bgp", 200, []string{
			`"configured":true,"asn":65001,"router_id":"10.91.0.11","draining":false`,
			`"sessions":[{"peer":"10.91.0.1","asn":65000,"state":"idle","since":"2023-11-14T22:13:20Z","uptime":0,"admin_down":true,"reason":"held down: bfd: detection-time-expired","routes_sent":0,"transitions":7,"established":2,` +
				`"bfd":{"state":"down","remote_state":"up","diag":"detection-time-expired","local":"10.91.0.11","interface":"eth0","since":"2023-11-14T22:13:20Z","changes":4,"detect_time":300000000}}]`,
			`{"prefix":"10.90.9.8/32","announced":true,"since":"2023-11-14T22:13:20Z","services":["dns"]}`,
			`{"prefix":"10.90.9.9/32","announced":false,"reason":"no usable backend","since":"2023-11-14T22:13:20Z","services":["web"]}`}, nil},
		{false, "GET", "/v1/bgp", 200, []string{`{"configured":false,"draining":false,"sessions":[],"routes":[]}`}, nil},
		{true, "POST", "/v1/bgp/drain", 200, []string{`{"withdrawn":1,"sessions_close_at":"2023-11-14T22:13:30Z"}`}, []time.Duration{-1}},
		{true, "POST", "/v1/bgp/drain?hold=3s", 200, []string{`"withdrawn":1`}, []time.Duration{3 * time.Second}},
		{true, "POST", "/v1/bgp/drain?hold=0s", 200, []string{`"withdrawn":1`}, []time.Duration{0}},
		{true, "POST", "/v1/bgp/drain?hold=-1s", 400, []string{`"error":"hold: \"-1s\" is not a duration of 0 or more"`}, nil},
		{true, "POST", "/v1/bgp/drain?hold=soon", 400, []string{`"error":"hold:`}, nil},
		{true, "POST", "/v1/bgp/drain?hold=25h", 400, []string{`"error":"hold: 25h0m0s is more than 24h0m0s`}, nil},
		{true, "POST", "/v1/bgp/drain?hold=24h", 200, []string{`"withdrawn":1`}, []time.Duration{24 * time.Hour}},
		{false, "POST", "/v1/bgp/drain", 409, []string{`"error":"bgp is not configured (no bgp section)"`}, nil},
		{true, "POST", "/v1/bgp/undrain", 200, []string{`{"draining":false}`}, nil},
		{false, "POST", "/v1/bgp/undrain", 409, []string{`"error":"bgp is not configured`}, nil},
		{true, "GET", "/v1/bgp/drain", 405, nil, nil},
	}
	for _, c := range cases {
		t.Run(c.method+" "+c.path, func(t *testing.T) {
			f, d, _ := testServer(t)
			fb := &fakeBGP{configured: c.configured}
			d.BGP = fb
			h := (&server{d: d, ctl: f}).routes()
			rr := httptest.NewRecorder()
			h.ServeHTTP(rr, httptest.NewRequest(c.method, c.path, http.NoBody))
			body := rr.Body.String()
			if rr.Code != c.code {
				t.Errorf("code %d, want %d; body %s", rr.Code, c.code, body)
			}
			for _, w := range c.want {
				if !strings.Contains(body, w) {
					t.Errorf("body %s\nlacks %s", body, w)
				}
			}
			if len(fb.drains) != len(c.drains) || len(c.drains) > 0 && fb.drains[0] != c.drains[0] {
				t.Errorf("drains %v, want %v", fb.drains, c.drains)
			}
		})
	}
	// No BGP owner at all (a daemon built without one).
	f, d, _ := testServer(t)
	h := (&server{d: d, ctl: f}).routes()
	rr := httptest.NewRecorder()
	h.ServeHTTP(rr, httptest.NewRequest("POST", "/v1/bgp/drain", http.NoBody))
	if rr.Code != http.StatusConflict {
		t.Errorf("drain without a BGP owner: %d %s", rr.Code, rr.Body)
	}
}
