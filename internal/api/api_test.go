package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/control"
	"github.com/keepbit/keepbit/internal/recorder"
	"github.com/keepbit/keepbit/loader"
)

type fakeDP struct {
	stats int
	st    loader.Stats
	flows []loader.Flow
}

func (f *fakeDP) Stats() (loader.Stats, error) { f.stats++; return f.st, nil }
func (f *fakeDP) Flows(limit int) ([]loader.Flow, error) {
	return f.flows[:min(limit, len(f.flows))], nil
}

type adminCall struct {
	service string
	addr    netip.Addr
	admin   control.Admin
}

type fakeCtl struct {
	status []control.ServiceStatus
	dp     map[string]*fakeDP
	key    map[string]loader.ServiceKey
	admins []adminCall
	idle   time.Duration
}

func (f *fakeCtl) Generation() int                 { return 4 }
func (f *fakeCtl) Interfaces() []string            { return []string{"eth0", "eth1"} }
func (f *fakeCtl) Status() []control.ServiceStatus { return f.status }
func (f *fakeCtl) SetAdmin(s string, a netip.Addr, ad control.Admin) error {
	if s == "readonly" {
		return fmt.Errorf("service %q: backend %s: disabled applied but not saved (lost on restart): read-only file system", s, a)
	}
	if s != "web" {
		return fmt.Errorf("service %q: %w", s, control.ErrNotConfigured)
	}
	f.admins = append(f.admins, adminCall{s, a, ad})
	return nil
}
func (f *fakeCtl) Live(s string, a netip.Addr, idle time.Duration) (int, uint64, error) {
	if s == "readonly" {
		return 0, 0, errors.New("iterate flows: operation not permitted")
	}
	if s != "web" {
		return 0, 0, fmt.Errorf("service %q: %w", s, control.ErrNotConfigured)
	}
	f.idle = idle
	return 3, 99, nil
}
func (f *fakeCtl) dataplane(s string) (dataplane, loader.ServiceKey, bool) {
	dp, ok := f.dp[s]
	if !ok {
		return nil, loader.ServiceKey{}, false
	}
	return dp, f.key[s], true
}

func flow(client string, packets uint64) loader.Flow {
	return loader.Flow{Client: netip.MustParseAddrPort(client), VIP: netip.MustParseAddrPort("198.51.100.1:80"),
		Proto: loader.TCP, Backend: netip.MustParseAddr("10.0.0.1"), Packets: packets}
}

// testServer: services web and api on eth0 (one dataplane), db on eth1.
func testServer(t *testing.T) (*fakeCtl, *Daemon, http.Handler) {
	t.Helper()
	eth0 := &fakeDP{flows: []loader.Flow{flow("203.0.113.1:1000", 50), flow("203.0.113.2:1000", 5)}}
	eth1 := &fakeDP{flows: []loader.Flow{flow("203.0.113.3:1000", 20)}}
	f := &fakeCtl{dp: map[string]*fakeDP{"web": eth0, "api": eth0, "db": eth1}, key: map[string]loader.ServiceKey{}}
	for i, name := range []string{"web", "api", "db"} {
		key := loader.ServiceKey{VIP: netip.AddrFrom4([4]byte{198, 51, 100, byte(i + 1)}), Port: 80, Proto: loader.TCP}
		f.key[name] = key
		ifc := "eth0"
		if name == "db" {
			ifc = "eth1"
		}
		f.status = append(f.status, control.ServiceStatus{Name: name, Key: key.String(), Interface: ifc})
		dp := f.dp[name]
		if dp.st.Services == nil {
			dp.st = loader.Stats{Services: map[loader.ServiceKey]loader.Counter{}, Backends: map[loader.ServiceKey]map[netip.Addr]loader.Counter{}}
		}
		dp.st.Services[key] = loader.Counter{Packets: uint64(100 * (i + 1))}
		dp.st.Backends[key] = map[netip.Addr]loader.Counter{netip.MustParseAddr("10.0.0.1"): {Packets: uint64(i + 1)}}
	}
	rec := recorder.New(16)
	rec.Add(recorder.Event{Kind: "reload"})
	rec.Add(recorder.Event{Kind: "backend-down", Service: "web", Backend: "10.0.0.1"})
	d := &Daemon{Events: rec, Log: slog.New(slog.DiscardHandler), Started: time.Unix(1700000000, 0).UTC(),
		Reload: func(ctx context.Context) error { return errors.New("config: services[0].vip: not an address") }}
	return f, d, (&server{d: d, ctl: f}).routes()
}

// TestHandlers: status codes and JSON bodies of every route, bad requests
// answered with a JSON error naming the parameter, before anything is
// asked of the controller.
func TestHandlers(t *testing.T) {
	cases := []struct {
		method, path, body string
		code               int
		want               []string // substrings of the body
	}{
		{"GET", "/v1/status", "", 200, []string{`"generation":4`, `"services":3`, `"interfaces":["eth0","eth1"]`}},
		{"GET", "/v1/services", "", 200, []string{`"name":"web"`, `"counters":{"packets":100,`, `"name":"db"`, `"counters":{"packets":300,`, `"10.0.0.1":{"packets":3,`}},
		{"GET", "/v1/flows", "", 200, []string{`"packets":50`, `"packets":20`, `"packets":5`}},
		{"GET", "/v1/flows?limit=2", "", 200, []string{`[{"client":"203.0.113.1:1000"`, `},{"client":"203.0.113.3:1000"`}},
		{"GET", "/v1/flows?limit=abc", "", 400, []string{`"error":"limit: \"abc\" is not a positive number"`}},
		{"GET", "/v1/flows?limit=0", "", 400, []string{`"error":"limit:`}},
		{"GET", "/v1/events?after=1", "", 200, []string{`"seq":2`, `"kind":"backend-down"`}},
		{"GET", "/v1/events?after=x", "", 400, []string{`"error":"after: \"x\" is not an event number"`}},
		{"POST", "/v1/reload", "", 422, []string{`"error":"config: services[0].vip: not an address"`}},
		{"POST", "/v1/check-config", "services: [", 422, []string{`"error":`}},
		{"POST", "/v1/services/web/backends/10.0.0.1/drain", "", 200, []string{`"action":"drain"`, `"backend":"10.0.0.1"`}},
		{"POST", "/v1/services/web/backends/not-an-ip/drain", "", 400, []string{`"error":"backend: \"not-an-ip\" is not an address"`}},
		{"POST", "/v1/services/web/backends/10.0.0.1/explode", "", 404, []string{`"error":"action \"explode\": want drain, enable or disable"`}},
		{"POST", "/v1/services/nope/backends/10.0.0.1/disable", "", 404, []string{`"error":"service \"nope\": not configured"`}},
		{"POST", "/v1/services/readonly/backends/10.0.0.1/disable", "", 500, []string{`"error":"service \"readonly\": backend 10.0.0.1: disabled applied but not saved`}},
		{"GET", "/v1/services/readonly/backends/10.0.0.1/live", "", 500, []string{`"error":"iterate flows: operation not permitted"`}},
		{"GET", "/v1/services/web/backends/10.0.0.1/live", "", 200, []string{`{"flows":3,"packets":99}`}},
		{"GET", "/v1/services/web/backends/10.0.0.1/live?idle=-1s", "", 400, []string{`"error":"idle: \"-1s\" is not a positive duration"`}},
		{"GET", "/v1/services/web/backends/10.0.0.1/live?idle=soon", "", 400, []string{`"error":"idle:`}},
		{"GET", "/v1/services/web/backends/x/live", "", 400, []string{`"error":"backend:`}},
		{"GET", "/v1/services/nope/backends/10.0.0.1/live", "", 404, []string{`"error":"service \"nope\": not configured"`}},
	}
	for _, c := range cases {
		t.Run(c.method+" "+c.path, func(t *testing.T) {
			_, _, h := testServer(t)
			rr := httptest.NewRecorder()
			h.ServeHTTP(rr, httptest.NewRequest(c.method, c.path, strings.NewReader(c.body)))
			body := rr.Body.String()
			if rr.Code != c.code {
				t.Errorf("code %d, want %d; body %s", rr.Code, c.code, body)
			}
			for _, w := range c.want {
				if !strings.Contains(body, w) {
					t.Errorf("body %s\nlacks %s", body, w)
				}
			}
			if rr.Code != 200 {
				var e map[string]string
				if err := json.Unmarshal(rr.Body.Bytes(), &e); err != nil || e["error"] == "" {
					t.Errorf("error body %q is not {\"error\": ...}: %v", body, err)
				}
			}
		})
	}
}

// TestServicesReadsEachDataplaneOnce: GET /v1/services called Stats once
// per service before the fix, every counter of the dataplane each time.
func TestServicesReadsEachDataplaneOnce(t *testing.T) {
	f, _, h := testServer(t)
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/v1/services", nil))
	if n := f.dp["web"].stats; n != 1 {
		t.Errorf("eth0 (web, api): Stats read %d times, want 1", n)
	}
	if n := f.dp["db"].stats; n != 1 {
		t.Errorf("eth1 (db): Stats read %d times, want 1", n)
	}
}

// TestAdminAndLiveArguments: what the controller is asked.
func TestAdminAndLiveArguments(t *testing.T) {
	f, _, h := testServer(t)
	for _, a := range []string{"drain", "enable", "disable"} {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("POST", "/v1/services/web/backends/10.0.0.1/"+a, nil))
	}
	want := []control.Admin{control.Draining, control.Enabled, control.Disabled}
	if len(f.admins) != len(want) {
		t.Fatalf("SetAdmin calls %v, want %v", f.admins, want)
	}
	for i, c := range f.admins {
		if c.admin != want[i] || c.service != "web" || c.addr != netip.MustParseAddr("10.0.0.1") {
			t.Errorf("SetAdmin call %d = %+v, want web 10.0.0.1 %q", i, c, want[i])
		}
	}
	for _, c := range []struct {
		query string
		idle  time.Duration
	}{{"", 10 * time.Second}, {"?idle=2s", 2 * time.Second}} {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/v1/services/web/backends/10.0.0.1/live"+c.query, nil))
		if f.idle != c.idle {
			t.Errorf("live%s: idle %v, want %v", c.query, f.idle, c.idle)
		}
	}
}
