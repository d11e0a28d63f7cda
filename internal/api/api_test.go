package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/internal/control"
	"github.com/keepbit/keepbit/internal/ownership"
	"github.com/keepbit/keepbit/internal/recorder"
	"github.com/keepbit/keepbit/loader"
	"github.com/keepbit/keepbit/probe"
	"github.com/keepbit/keepbit/vip/vrrp"
)

type adminCall struct {
	service string
	addr    netip.Addr
	admin   control.Admin
}

// fakeCtl is the controller: services web and api on eth0, db on eth1.
type fakeCtl struct {
	status   []control.ServiceStatus
	counters control.Counters
	reads    int // Counters calls
	flows    []loader.Flow
	flowsErr error
	admins   []adminCall
	idle     time.Duration
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
func (f *fakeCtl) Counters() control.Counters { f.reads++; return f.counters }
func (f *fakeCtl) Flows(limit int) ([]loader.Flow, error) {
	return f.flows[:min(limit, len(f.flows))], f.flowsErr
}

// fakeVRRP is one instance, master.
type fakeVRRP struct{}

func (fakeVRRP) Status() []ownership.VRRPStatus {
	return []ownership.VRRPStatus{{Name: "v4", VRID: 42, Interface: "eth0", VIPs: []netip.Addr{netip.MustParseAddr("198.51.100.1")},
		State: vrrp.Master, Priority: 100, BasePriority: 150, Tracking: "all backends of service web down",
		Since: time.Unix(1700000000, 0).UTC(), Reason: "master down", Received: vrrp.Counters{Accepted: 9}}}
}

func flow(client string, packets uint64) loader.Flow {
	return loader.Flow{Client: netip.MustParseAddrPort(client), VIP: netip.MustParseAddrPort("198.51.100.1:80"),
		Proto: loader.TCP, Backend: netip.MustParseAddr("10.0.0.1"), Packets: packets}
}

// testServer: services web and api on eth0, db on eth1 (no counters: its
// dataplane does not hold it).
func testServer(t *testing.T) (*fakeCtl, *Daemon, http.Handler) {
	t.Helper()
	f := &fakeCtl{counters: control.Counters{Services: map[string]control.ServiceCounters{}},
		flows: []loader.Flow{flow("203.0.113.1:1000", 50), flow("203.0.113.3:1000", 20), flow("203.0.113.2:1000", 5)}}
	for i, name := range []string{"web", "api", "db"} {
		key := loader.ServiceKey{VIP: netip.AddrFrom4([4]byte{198, 51, 100, byte(i + 1)}), Port: 80, Proto: loader.TCP}
		ifc := "eth0"
		if name == "db" {
			ifc = "eth1"
		}
		be := netip.MustParseAddr("10.0.0.1")
		f.status = append(f.status, control.ServiceStatus{Name: name, Key: key, Interface: ifc, Backends: []control.BackendStatus{
			{Address: be, MAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, Weight: 100, Health: probe.Up, State: loader.Draining, Admin: control.Draining,
				Reason: "draining by operator", Since: time.Unix(1700000000, 0).UTC()}}})
		if name != "db" {
			f.counters.Services[name] = control.ServiceCounters{Interface: ifc, Service: loader.Counter{Packets: uint64(100 * (i + 1)), Bytes: 7},
				Backends: map[netip.Addr]loader.Counter{be: {Packets: uint64(i + 1)}}}
		}
	}
	rec := recorder.New(16)
	rec.Add(recorder.Event{Kind: "reload"})
	rec.Add(recorder.Event{Kind: "backend-down", Service: "web", Backend: "10.0.0.1"})
	d := &Daemon{Events: rec, VRRP: fakeVRRP{}, Log: slog.New(slog.DiscardHandler), Started: time.Unix(1700000000, 0).UTC(),
		Reload: func(ctx context.Context) error { return errors.New("config: services[0].vip: not an address") },
		Diff: func(name string, body []byte) ([]config.Change, error) {
			running, err := config.Parse("running.yaml", []byte(diffRunning))
			if err != nil {
				return nil, err
			}
			cand, err := config.Parse(name, body)
			if err != nil {
				return nil, err
			}
			return config.Diff(running, cand), nil
		}}
	return f, d, (&server{d: d, ctl: f}).routes()
}

const diffRunning = `interfaces: [{name: eth0}]
services:
  - {name: web, vip: 198.51.100.1, port: 80, backends: [{address: 10.0.0.1, mac: "02:00:00:00:00:01"}]}
`

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
		{"GET", "/v1/services", "", 200, []string{
			`{"name":"web","key":"198.51.100.1:80/tcp","interface":"eth0","backends":[{"address":"10.0.0.1","mac":"02:00:00:00:00:01","weight":100,"group":0,"health":"up","state":"draining","admin":"draining","reason":"draining by operator","since":"2023-11-14T22:13:20Z"}],"counters":{"packets":100,"bytes":7},"backend_counters":{"10.0.0.1":{"packets":1,"bytes":0}}}`,
			`"name":"api"`, `"counters":{"packets":200,`, `"10.0.0.1":{"packets":2,`,
			`{"name":"db","key":"198.51.100.3:80/tcp","interface":"eth1","backends":[{`, `"counters":{"packets":0,"bytes":0},"backend_counters":{}}`}},
		{"GET", "/v1/vip", "", 200, []string{`[{"name":"v4","vrid":42,"interface":"eth0","vips":["198.51.100.1"],"state":"master","priority":100,"base_priority":150,"since":"2023-11-14T22:13:20Z","reason":"master down","tracking":"all backends of service web down","received":{"Accepted":9,`}},
		{"GET", "/v1/flows", "", 200, []string{`"packets":50`, `"packets":20`, `"packets":5`, `"proto":"tcp"`, `"backend":"10.0.0.1"`}},
		{"GET", "/v1/flows?limit=2", "", 200, []string{`[{"client":"203.0.113.1:1000"`, `},{"client":"203.0.113.3:1000"`}},
		{"GET", "/v1/flows?limit=abc", "", 400, []string{`"error":"limit: \"abc\" is not a positive number"`}},
		{"GET", "/v1/flows?limit=0", "", 400, []string{`"error":"limit:`}},
		{"GET", "/v1/events?after=1", "", 200, []string{`"seq":2`, `"kind":"backend-down"`}},
		{"GET", "/v1/events?after=x", "", 400, []string{`"error":"after: \"x\" is not an event number"`}},
		{"POST", "/v1/reload", "", 422, []string{`"error":"config: services[0].vip: not an address"`}},
		{"POST", "/v1/check-config", "services: [", 422, []string{`"error":`}},
		{"POST", "/v1/diff", diffRunning, 200, []string{`{"changes":[]}`}},
		{"POST", "/v1/diff", strings.Replace(diffRunning, `mac: "02:00:00:00:00:01"}`, `mac: "02:00:00:00:00:01", weight: 3}`, 1), 200,
			[]string{`{"changes":[{"path":"services[web].backends[10.0.0.1].weight","op":"changed","before":"1","after":"3"}]}`}},
		{"POST", "/v1/diff?name=new.yaml", "services: [", 422, []string{`"error":"new.yaml:`}},
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

// TestServicesReadsCountersOnce: GET /v1/services reads the counters once
// for all services (the controller reads each dataplane once); before, it
// read a dataplane's every counter once per service.
func TestServicesReadsCountersOnce(t *testing.T) {
	f, _, h := testServer(t)
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/v1/services", nil))
	if f.reads != 1 {
		t.Errorf("Counters read %d times for 3 services, want 1", f.reads)
	}
}

// TestFlowsError: a dataplane that cannot be read is a 500 naming it.
func TestFlowsError(t *testing.T) {
	f, _, h := testServer(t)
	f.flowsErr = errors.New("interface eth1: iterate flows: operation not permitted")
	rr := httptest.NewRecorder()
	h.ServeHTTP(rr, httptest.NewRequest("GET", "/v1/flows", nil))
	if want := `{"error":"interface eth1: iterate flows: operation not permitted"}` + "\n"; rr.Code != 500 || rr.Body.String() != want {
		t.Errorf("%d %s, want 500 %s", rr.Code, rr.Body, want)
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
