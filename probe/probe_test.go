package probe

import (
	"context"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/keepbit/keepbit/internal/lab"
	"github.com/keepbit/keepbit/internal/privtest"
)

func addrPort(t testing.TB, s string) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		t.Fatal(err)
	}
	return ap
}

func base(kind Kind, target netip.AddrPort) Spec {
	return Spec{Kind: kind, Target: target, Interval: 2 * time.Second, Timeout: 2 * time.Second, Rise: 1, Fall: 1}
}

// servers are real endpoints on loopback that the probe cases point at.
type servers struct {
	tcpOpen, tcpClosed netip.AddrPort
	http, https        *httptest.Server
	caFile             string
	udpEcho, udpMute   netip.AddrPort
}

func startServers(t *testing.T) *servers {
	s := &servers{}
	s.tcpOpen = privtest.ServeAcceptClose(t, netns.None(), "tcp", "127.0.0.1:0").AddrPort()
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	s.tcpClosed = addrPort(t, closed.Addr().String())
	closed.Close()

	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "healthy host=", r.Host) })
	mux.HandleFunc("/fail", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "sick", http.StatusInternalServerError) })
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(2 * time.Second):
		case <-r.Context().Done():
		}
	})
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/ok", http.StatusFound) })
	s.http = httptest.NewServer(mux)
	t.Cleanup(s.http.Close)
	s.https = httptest.NewTLSServer(mux)
	t.Cleanup(s.https.Close)
	s.caFile = filepath.Join(t.TempDir(), "ca.pem")
	cert := s.https.TLS.Certificates[0].Certificate[0]
	if err := os.WriteFile(s.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert}), 0o600); err != nil {
		t.Fatal(err)
	}

	s.udpEcho = privtest.ServeUDP(t, netns.None(), "udp", "127.0.0.1:0", lab.EchoPrefix("pong:")).AddrPort()
	s.udpMute = privtest.ServeUDP(t, netns.None(), "udp", "127.0.0.1:0", nil).AddrPort()
	return s
}

func target(t testing.TB, srv *httptest.Server) netip.AddrPort {
	return addrPort(t, strings.TrimPrefix(strings.TrimPrefix(srv.URL, "http://"), "https://"))
}

// TestProbeKinds runs one probe of each case against a real server and
// checks the verdict and, for failures, the reason.
func TestProbeKinds(t *testing.T) {
	s := startServers(t)
	httpT, httpsT := target(t, s.http), target(t, s.https)
	with := func(sp Spec, f func(*Spec)) Spec { f(&sp); return sp }
	cases := []struct {
		name    string
		spec    Spec
		wantErr string // "" = must succeed
	}{
		{"tcp open", base(TCP, s.tcpOpen), ""},
		{"tcp refused", base(TCP, s.tcpClosed), "connection refused"},
		{"http 200", with(base(HTTP, httpT), func(p *Spec) { p.Path = "/ok" }), ""},
		{"http 500", with(base(HTTP, httpT), func(p *Spec) { p.Path = "/fail" }), "status 500"},
		{"http 500 expected", with(base(HTTP, httpT), func(p *Spec) { p.Path = "/fail"; p.ExpectStatus = []int{500} }), ""},
		{"http redirect not followed, 3xx ok by default", with(base(HTTP, httpT), func(p *Spec) { p.Path = "/redirect" }), ""},
		{"http redirect when 200 required", with(base(HTTP, httpT), func(p *Spec) { p.Path = "/redirect"; p.ExpectStatus = []int{200} }), "status 302"},
		{"http body match", with(base(HTTP, httpT), func(p *Spec) { p.Path = "/ok"; p.ExpectBody = "healthy" }), ""},
		{"http body mismatch", with(base(HTTP, httpT), func(p *Spec) { p.Path = "/ok"; p.ExpectBody = "ready" }), `body lacks "ready"`},
		{"http host header", with(base(HTTP, httpT), func(p *Spec) { p.Path = "/ok"; p.Host = "web.example"; p.ExpectBody = "host=web.example" }), ""},
		{"http timeout", with(base(HTTP, httpT), func(p *Spec) { p.Path = "/slow"; p.Timeout = 100 * time.Millisecond }), "deadline exceeded"},
		{"https with test CA", with(base(HTTPS, httpsT), func(p *Spec) { p.Path = "/ok"; p.CAFile = s.caFile; p.Host = "example.com" }), ""},
		{"https verifies by default", with(base(HTTPS, httpsT), func(p *Spec) { p.Path = "/ok" }), "certificate"},
		{"https wrong name", with(base(HTTPS, httpsT), func(p *Spec) { p.Path = "/ok"; p.CAFile = s.caFile; p.Host = "other.test" }), "certificate is valid for"},
		{"https no verify", with(base(HTTPS, httpsT), func(p *Spec) { p.Path = "/ok"; p.TLSNoVerify = true }), ""},
		{"udp echo", with(base(UDP, s.udpEcho), func(p *Spec) { p.Payload = []byte("ping"); p.ExpectReply = "pong:ping" }), ""},
		{"udp wrong reply", with(base(UDP, s.udpEcho), func(p *Spec) { p.Payload = []byte("ping"); p.ExpectReply = "ready"; p.Timeout = 100 * time.Millisecond }), "timeout"},
		{"udp no reply", with(base(UDP, s.udpMute), func(p *Spec) { p.Payload = []byte("ping"); p.Timeout = 100 * time.Millisecond }), "timeout"},
		{"exec true", with(base(Exec, s.tcpOpen), func(p *Spec) { p.Command = "true" }), ""},
		{"exec false", with(base(Exec, s.tcpOpen), func(p *Spec) { p.Command = "false" }), "exit status 1"},
		{"exec sees target and env", with(base(Exec, s.tcpOpen), func(p *Spec) {
			p.Command = "sh"
			p.Args = []string{"-c", `[ "$KEEPBIT_TARGET_ADDR" = 127.0.0.1 ] && [ "$KEEPBIT_TARGET_PORT" = ` + fmt.Sprint(s.tcpOpen.Port()) + ` ] && [ "$MODE" = strict ]`}
			p.Env = []string{"MODE=strict"}
		}), ""},
		{"exec stderr in the error", with(base(Exec, s.tcpOpen), func(p *Spec) { p.Command = "sh"; p.Args = []string{"-c", "echo backend sick >&2; exit 3"} }), "exit status 3: backend sick"},
		{"exec hang killed at timeout", with(base(Exec, s.tcpOpen), func(p *Spec) {
			p.Command = "sh"
			p.Args = []string{"-c", "sleep 5; true"}
			p.Timeout = 100 * time.Millisecond
		}), "killed"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := c.spec.Validate(); err != nil {
				t.Fatalf("spec: %v", err)
			}
			p, err := newProber(c.spec, nil)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), c.spec.Timeout)
			defer cancel()
			start := time.Now()
			err = p.probe(ctx)
			took := time.Since(start)
			if took > c.spec.Timeout+time.Second {
				t.Errorf("probe took %v, its timeout is %v", took, c.spec.Timeout)
			}
			switch {
			case c.wantErr == "" && err != nil:
				t.Fatalf("want success, got %v", err)
			case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
				t.Fatalf("want error containing %q, got %v", c.wantErr, err)
			}
		})
	}
}

// TestProbeICMP needs a raw socket: root, in the test's own namespace.
func TestProbeICMP(t *testing.T) {
	privtest.Require(t)
	cases := []struct {
		name    string
		target  string
		wantErr string
	}{
		{"ipv4 loopback answers", "127.0.0.1", ""},
		{"ipv6 loopback answers", "::1", ""},
		{"no route", "192.0.2.1", "unreachable"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sp := base(ICMP, netip.AddrPortFrom(netip.MustParseAddr(c.target), 0))
			p, err := newProber(sp, nil)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), sp.Timeout)
			defer cancel()
			err = p.probe(ctx)
			if c.wantErr == "" && err != nil {
				t.Fatalf("want success, got %v", err)
			}
			if c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)) {
				t.Fatalf("want error containing %q, got %v", c.wantErr, err)
			}
		})
	}
}
