package api

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/flowshare"
	"github.com/keepbit/keepbit/internal/ownership"
)

type fakeShare ownership.FlowShareStatus

func (f fakeShare) Status() ownership.FlowShareStatus { return ownership.FlowShareStatus(f) }

// TestFlowShareHandler: GET /v1/flowshare prints the warm-up (who answered,
// who did not) and the counters; without flow sharing, enabled is false.
func TestFlowShareHandler(t *testing.T) {
	on := ownership.FlowShareStatus{Enabled: true, Warm: true, Skipped: 2,
		Warmup: flowshare.WarmReport{Took: 40 * time.Millisecond,
			Peers:   []flowshare.PeerWarmup{{Peer: netip.MustParseAddrPort("10.91.0.12:7785"), Answered: true, Flows: 120}, {Peer: netip.MustParseAddrPort("10.91.0.13:7785")}},
			Missing: []netip.AddrPort{netip.MustParseAddrPort("10.91.0.13:7785")}},
		Node: flowshare.Stats{SentFlows: 300, Rejected: flowshare.Rejects{MAC: 3}}}
	cases := []struct {
		name  string
		owner FlowShareOwner
		want  []string
	}{
		{"off", nil, []string{`{"enabled":false,"warm":false,"warmup_took":0,"peers":[],"counters":{},"dataplane":{}}`}},
		{"on", fakeShare(on), []string{`"enabled":true,"warm":true,"warmup_took":40000000`,
			`"peers":[{"peer":"10.91.0.12:7785","answered":true,"flows":120},{"peer":"10.91.0.13:7785","answered":false,"flows":0}]`,
			`"missing":["10.91.0.13:7785"]`, `"sent_flows":300`, `"rejected_mac":3`, `"skipped_flows":2`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f, d, _ := testServer(t)
			d.FlowShare = c.owner
			h := (&server{d: d, ctl: f}).routes()
			rr := httptest.NewRecorder()
			h.ServeHTTP(rr, httptest.NewRequest("GET", "/v1/flowshare", http.NoBody))
			if rr.Code != 200 {
				t.Fatalf("code %d: %s", rr.Code, rr.Body)
			}
			for _, w := range c.want {
				if !strings.Contains(rr.Body.String(), w) {
					t.Errorf("body %s\nlacks %s", rr.Body, w)
				}
			}
		})
	}
}
