package api

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/control"
	"github.com/keepbit/keepbit/internal/drill"
)

// fakeDrills answers as drill.Drills would for the request it is given.
type fakeDrills struct{ reqs []drill.Request }

func (f *fakeDrills) Run(_ context.Context, req drill.Request) (drill.Result, error) {
	f.reqs = append(f.reqs, req)
	switch {
	case req.Service == "nosuch":
		return drill.Result{}, fmt.Errorf("service %q: %w", req.Service, control.ErrNotConfigured)
	case req.Service == "busy":
		return drill.Result{}, fmt.Errorf("a drill is already running: %w", drill.ErrRefused)
	case req.For == 2*time.Hour:
		return drill.Result{}, fmt.Errorf("for: 2h0m0s: want 100ms to 1h0m0s: %w", drill.ErrInvalid)
	}
	return drill.Result{ID: 7, Kind: req.Kind, Service: req.Service, Result: drill.ResultOK, For: req.For, MTTR: 90 * time.Millisecond}, nil
}

func (f *fakeDrills) History() []drill.Result {
	return []drill.Result{{ID: 7, Kind: drill.Backend, Result: drill.ResultOK}}
}

func (f *fakeDrills) Running() []string { return nil }

// TestDrillHandlers: the drill routes' codes and errors; the request the
// runner gets.
func TestDrillHandlers(t *testing.T) {
	for _, c := range []struct {
		method, path string
		code         int
		want         string
		req          *drill.Request
	}{
		{"POST", "/v1/drills/backend/web/10.0.0.1?for=2s", 200, `"id":7,"kind":"backend","service":"web"`,
			&drill.Request{Kind: drill.Backend, Service: "web", Backend: netip.MustParseAddr("10.0.0.1"), For: 2 * time.Second, Source: "operator"}},
		{"POST", "/v1/drills/backend/web/10.0.0.1?force=true", 200, `"mttr":90000000`,
			&drill.Request{Kind: drill.Backend, Service: "web", Backend: netip.MustParseAddr("10.0.0.1"), Force: true, Source: "operator"}},
		{"POST", "/v1/drills/node?for=1s", 200, `"kind":"node"`, &drill.Request{Kind: drill.Node, For: time.Second, Source: "operator"}},
		{"POST", "/v1/drills/backend/web/10.0.0.1?for=soon", 400, `"error":"for: \"soon\" is not a duration like 10s"`, nil},
		{"POST", "/v1/drills/backend/web/10.0.0.1?for=-1s", 400, `"error":"for: -1s: want more than 0"`, nil},
		{"POST", "/v1/drills/backend/web/10.0.0.1?force=maybe", 400, `"error":"force: \"maybe\" is not true or false"`, nil},
		{"POST", "/v1/drills/backend/web/not-an-address", 400, `"error":"backend: \"not-an-address\" is not an address"`, nil},
		{"POST", "/v1/drills/backend/web/10.0.0.1?for=2h", 400, `for: 2h0m0s`, nil},
		{"POST", "/v1/drills/backend/nosuch/10.0.0.1", 404, `service \"nosuch\": not configured`, nil},
		{"POST", "/v1/drills/backend/busy/10.0.0.1", 409, `already running`, nil},
		{"GET", "/v1/drills", 200, `{"running":[],"results":[{"id":7,"kind":"backend"`, nil},
	} {
		t.Run(c.method+" "+c.path, func(t *testing.T) {
			f, d, _ := testServer(t)
			fd := &fakeDrills{}
			d.Drills = fd
			rr := httptest.NewRecorder()
			(&server{d: d, ctl: f}).routes().ServeHTTP(rr, httptest.NewRequest(c.method, c.path, http.NoBody))
			if rr.Code != c.code || !strings.Contains(rr.Body.String(), c.want) {
				t.Fatalf("%d %s, want %d with %s", rr.Code, rr.Body, c.code, c.want)
			}
			if c.req != nil && (len(fd.reqs) != 1 || fd.reqs[0] != *c.req) {
				t.Fatalf("runner got %+v, want %+v", fd.reqs, *c.req)
			}
		})
	}
	f, d, _ := testServer(t)
	rr := httptest.NewRecorder()
	(&server{d: d, ctl: f}).routes().ServeHTTP(rr, httptest.NewRequest("POST", "/v1/drills/node", http.NoBody))
	if rr.Code != http.StatusConflict {
		t.Fatalf("no drills in the daemon: %d %s", rr.Code, rr.Body)
	}
}
