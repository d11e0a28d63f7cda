package apiclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/api"
	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/internal/control"
	"github.com/keepbit/keepbit/internal/recorder"
)

// serve answers every request with code and body over a Unix socket,
// recording "METHOD path?query".
func serve(t *testing.T, code int, body string) (*Client, *[]string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var seen []string
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = append(seen, r.Method+" "+r.URL.RequestURI())
		w.WriteHeader(code)
		fmt.Fprint(w, body)
	}))
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return New(sock), &seen
}

// TestCalls: each call's request, and its typed result or its error for
// the daemon's answer.
func TestCalls(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name    string
		code    int
		body    string
		call    func(c *Client) (any, error)
		request string
		want    any
		wantErr string
	}{
		{"status", 200, `{"generation":4,"interfaces":["eth0"],"services":2,"started":"2023-11-14T22:13:20Z"}`,
			func(c *Client) (any, error) { return c.Status(ctx) }, "GET /v1/status",
			api.Status{Generation: 4, Interfaces: []string{"eth0"}, Services: 2, Started: time.Unix(1700000000, 0).UTC()}, ""},
		{"services", 200, `[{"name":"web","key":"198.51.100.1:80/tcp","interface":"eth0","backends":[{"address":"10.0.0.1","state":"up","health":"up"}],"counters":{"packets":5,"bytes":6},"backend_counters":{"10.0.0.1":{"packets":5,"bytes":6}}}]`,
			func(c *Client) (any, error) { return c.Services(ctx) }, "GET /v1/services",
			[]api.Service{{ServiceStatus: api.ServiceStatus{Name: "web", Key: "198.51.100.1:80/tcp", Interface: "eth0",
				Backends: []api.Backend{{Address: "10.0.0.1", State: "up", Health: "up"}}},
				Counters: api.Counter{Packets: 5, Bytes: 6}, Backends: map[string]api.Counter{"10.0.0.1": {Packets: 5, Bytes: 6}}}}, ""},
		{"flows", 200, `[{"client":"203.0.113.1:1000","packets":50}]`,
			func(c *Client) (any, error) { return c.Flows(ctx, 7) }, "GET /v1/flows?limit=7",
			[]api.Flow{{Client: "203.0.113.1:1000", Packets: 50}}, ""},
		{"vips", 200, `[{"name":"v4","vrid":42,"state":"master","vips":["198.51.100.1"]}]`,
			func(c *Client) (any, error) { return c.VIPs(ctx) }, "GET /v1/vip",
			[]api.VIP{{Name: "v4", VRID: 42, State: "master", VIPs: []string{"198.51.100.1"}}}, ""},
		{"reload", 200, `{"generation":5}`,
			func(c *Client) (any, error) { return c.Reload(ctx) }, "POST /v1/reload", 5, ""},
		{"reload refused", 422, `{"error":"keepbit.yaml:3: services[0].vip: not an address"}` + "\n",
			func(c *Client) (any, error) { return c.Reload(ctx) }, "POST /v1/reload", 0,
			"keepbitd answered 422 Unprocessable Entity: keepbit.yaml:3: services[0].vip: not an address"},
		{"diff", 200, `{"changes":[{"path":"node.hash_seed","op":"changed","before":"1","after":"2","effect":"restart"}]}`,
			func(c *Client) (any, error) { return c.Diff(ctx, "new keepbit.yaml", []byte("node: {hash_seed: 2}")) }, "POST /v1/diff?name=new+keepbit.yaml",
			[]config.Change{{Path: "node.hash_seed", Op: "changed", Before: "1", After: "2", Effect: "restart"}}, ""},
		{"diff refused", 422, `{"error":"new.yaml:1: services: want a list"}`,
			func(c *Client) (any, error) { return c.Diff(ctx, "new.yaml", []byte("services: 3")) }, "POST /v1/diff?name=new.yaml",
			[]config.Change(nil), "keepbitd answered 422 Unprocessable Entity: new.yaml:1: services: want a list"},
		{"drain", 200, `{"action":"drain"}`,
			func(c *Client) (any, error) { return nil, c.SetAdmin(ctx, "web/x", "10.0.0.1", control.Draining) },
			"POST /v1/services/web%2Fx/backends/10.0.0.1/drain", nil, ""},
		{"enable", 200, `{}`,
			func(c *Client) (any, error) { return nil, c.SetAdmin(ctx, "web", "10.0.0.1", control.Enabled) },
			"POST /v1/services/web/backends/10.0.0.1/enable", nil, ""},
		{"disable unknown", 404, `{"error":"service \"nope\": not configured"}`,
			func(c *Client) (any, error) { return nil, c.SetAdmin(ctx, "nope", "10.0.0.1", control.Disabled) },
			"POST /v1/services/nope/backends/10.0.0.1/disable", nil, `keepbitd answered 404 Not Found: service "nope": not configured`},
		{"live", 200, `{"flows":3,"packets":99}`,
			func(c *Client) (any, error) { return c.Live(ctx, "web", "10.0.0.1", 1500*time.Millisecond) },
			"GET /v1/services/web/backends/10.0.0.1/live?idle=1.5s", api.Live{Flows: 3, Packets: 99}, ""},
		{"not json error", 502, "bad gateway\n",
			func(c *Client) (any, error) { return c.Status(ctx) }, "GET /v1/status", api.Status{},
			"keepbitd answered 502 Bad Gateway: bad gateway"},
		{"empty error", 500, "",
			func(c *Client) (any, error) { return c.Status(ctx) }, "GET /v1/status", api.Status{},
			"keepbitd answered 500 Internal Server Error"},
		{"bad answer", 200, `{"generation":"four"}`,
			func(c *Client) (any, error) { return c.Status(ctx) }, "GET /v1/status", api.Status{},
			"keepbitd: GET /v1/status: answer: json: cannot unmarshal"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cl, seen := serve(t, c.code, c.body)
			got, err := c.call(cl)
			if len(*seen) != 1 || (*seen)[0] != c.request {
				t.Errorf("requests %q, want [%q]", *seen, c.request)
			}
			if c.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), c.wantErr) {
					t.Fatalf("error %v, want %q", err, c.wantErr)
				}
				var ae *Error
				if c.code != 200 && (!errors.As(err, &ae) || ae.Code != c.code) {
					t.Errorf("error %#v is not an *Error with code %d", err, c.code)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.want != nil && !reflect.DeepEqual(got, c.want) {
				t.Errorf("got %#v\nwant %#v", got, c.want)
			}
		})
	}
}

// TestEvents: every line reaches fn, decoded; fn's error ends the call.
func TestEvents(t *testing.T) {
	cl, seen := serve(t, 200, `{"seq":3,"kind":"reload"}`+"\n"+`{"seq":4,"kind":"backend-down","service":"web","backend":"10.0.0.1"}`+"\n")
	var got []string
	err := cl.Events(context.Background(), 2, true, func(line []byte, e recorder.Event) error {
		got = append(got, fmt.Sprintf("%d %s %s", e.Seq, e.Kind, e.Backend))
		return nil
	})
	if err != nil || !reflect.DeepEqual(got, []string{"3 reload ", "4 backend-down 10.0.0.1"}) {
		t.Fatalf("events %q, %v", got, err)
	}
	if (*seen)[0] != "GET /v1/events?after=2&follow=1" {
		t.Errorf("request %s", (*seen)[0])
	}
	stop := errors.New("enough")
	n := 0
	if err := cl.Events(context.Background(), 0, false, func([]byte, recorder.Event) error { n++; return stop }); !errors.Is(err, stop) || n != 1 {
		t.Fatalf("fn's error: got %v after %d events", err, n)
	}
}

// TestNoDaemon: a missing socket is an error naming it; a cancelled
// context ends a call.
func TestNoDaemon(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	if _, err := New(sock).Status(context.Background()); err == nil || !strings.Contains(err.Error(), sock) {
		t.Fatalf("error %v, want one naming %s", err, sock)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	cl, _ := serve(t, 200, `{}`)
	if _, err := cl.Status(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled call: %v", err)
	}
}
