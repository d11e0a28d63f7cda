package probe

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"

	"github.com/keepbit/keepbit/internal/procexec"
)

// prober runs one probe; nil means the backend answered as expected.
type prober interface {
	probe(ctx context.Context) error
}

// newProber makes the prober of s; half-open checks share syn's engine.
func newProber(s Spec, syn *synEngines) (prober, error) {
	d := dialer(s)
	switch s.Kind {
	case TCP:
		return tcpProber{d: d, addr: s.Target.String()}, nil
	case TCPHalfOpen:
		return newSynProber(s, syn)
	case HTTP, HTTPS:
		return newHTTPProber(s, d)
	case UDP:
		return udpProber{d: d, addr: s.Target.String(), payload: s.Payload, expect: []byte(s.ExpectReply)}, nil
	case ICMP:
		return icmpProber{spec: s}, nil
	case Exec:
		return execProber{spec: s}, nil
	}
	return nil, fmt.Errorf("type: %q is not supported", s.Kind)
}

// dialer honours the check's source address and interface.
func dialer(s Spec) *net.Dialer {
	d := &net.Dialer{}
	if s.Source.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: s.Source.AsSlice()}
		if s.Kind == UDP {
			d.LocalAddr = &net.UDPAddr{IP: s.Source.AsSlice()}
		}
	}
	if s.Interface != "" {
		iface := s.Interface
		d.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) { serr = unix.BindToDevice(int(fd), iface) })
			return errors.Join(err, serr)
		}
	}
	return d
}

type tcpProber struct {
	d    *net.Dialer
	addr string
}

func (p tcpProber) probe(ctx context.Context) error {
	c, err := p.d.DialContext(ctx, "tcp", p.addr)
	if err != nil {
		return err
	}
	// Close with RST: thousands of checks must not fill the table with
	// TIME_WAIT sockets.
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	return c.Close()
}

type httpProber struct {
	client *http.Client
	spec   Spec
	url    string
}

func newHTTPProber(s Spec, d *net.Dialer) (prober, error) {
	tlsConf := &tls.Config{InsecureSkipVerify: s.TLSNoVerify, ServerName: s.Host}
	if s.CAFile != "" {
		pem, err := os.ReadFile(s.CAFile)
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file: %s holds no PEM certificate", s.CAFile)
		}
		tlsConf.RootCAs = pool
	}
	if tlsConf.ServerName == "" {
		tlsConf.ServerName = s.Target.Addr().String()
	}
	// A fresh connection per probe: a pooled one would hide a backend that
	// no longer accepts connections.
	tr := &http.Transport{DialContext: d.DialContext, TLSClientConfig: tlsConf, DisableKeepAlives: true}
	path := s.Path
	if path == "" {
		path = "/"
	}
	return httpProber{
		client: &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		spec:   s,
		url:    fmt.Sprintf("%s://%s%s", s.Kind, s.Target, path),
	}, nil
}

func (p httpProber) probe(ctx context.Context) error {
	method := p.spec.Method
	if method == "" {
		method = http.MethodGet
	}
	req, err := http.NewRequestWithContext(ctx, method, p.url, nil)
	if err != nil {
		return err
	}
	if p.spec.Host != "" {
		req.Host = p.spec.Host
	}
	req.Header.Set("User-Agent", "keepbit-probe")
	resp, err := p.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if !statusOK(resp.StatusCode, p.spec.ExpectStatus) {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	if p.spec.ExpectBody != "" {
		body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if err != nil {
			return fmt.Errorf("read body: %w", err)
		}
		if !bytes.Contains(body, []byte(p.spec.ExpectBody)) {
			return fmt.Errorf("body lacks %q", p.spec.ExpectBody)
		}
	}
	return nil
}

func statusOK(code int, want []int) bool {
	if len(want) == 0 {
		return code >= 200 && code < 400
	}
	for _, w := range want {
		if code == w {
			return true
		}
	}
	return false
}

type udpProber struct {
	d       *net.Dialer
	addr    string
	payload []byte
	expect  []byte
}

func (p udpProber) probe(ctx context.Context) error {
	c, err := p.d.DialContext(ctx, "udp", p.addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if _, err := c.Write(p.payload); err != nil {
		return err
	}
	buf := make([]byte, 65536)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return err
		}
		if bytes.Contains(buf[:n], p.expect) {
			return nil
		}
	}
}

type icmpProber struct {
	spec Spec
}

// probe sends one echo request on a raw socket of its own and waits for
// the matching reply (identifier and sequence are random per probe).
func (p icmpProber) probe(ctx context.Context) error {
	addr := p.spec.Target.Addr()
	network, proto, typ, reply := "ip4:icmp", 1, icmp.Type(ipv4.ICMPTypeEcho), icmp.Type(ipv4.ICMPTypeEchoReply)
	listen := "0.0.0.0"
	if addr.Is6() && !addr.Is4In6() {
		network, proto, typ, reply, listen = "ip6:ipv6-icmp", 58, ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply, "::"
	}
	if p.spec.Source.IsValid() {
		listen = p.spec.Source.String()
	}
	c, err := icmp.ListenPacket(network, listen)
	if err != nil {
		return fmt.Errorf("icmp socket: %w", err)
	}
	defer c.Close()
	if p.spec.Interface != "" {
		if err := bindToDevice(c, p.spec.Interface); err != nil {
			return err
		}
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	id, seq := rand.IntN(0xffff), rand.IntN(0xffff)
	msg := icmp.Message{Type: typ, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("keepbit")}}
	b, err := msg.Marshal(nil)
	if err != nil {
		return err
	}
	dst := &net.IPAddr{IP: addr.Unmap().AsSlice()}
	if _, err := c.WriteTo(b, dst); err != nil {
		return err
	}
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return err
		}
		m, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil || m.Type != reply {
			continue
		}
		if e, ok := m.Body.(*icmp.Echo); ok && e.ID == id && e.Seq == seq && from.String() == dst.String() {
			return nil
		}
	}
}

func bindToDevice(c *icmp.PacketConn, iface string) error {
	var pc net.PacketConn
	if c4 := c.IPv4PacketConn(); c4 != nil {
		pc = c4.PacketConn
	} else if c6 := c.IPv6PacketConn(); c6 != nil {
		pc = c6.PacketConn
	}
	sc, ok := pc.(syscall.Conn)
	if !ok {
		return errors.New("interface: socket does not expose its descriptor")
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) { serr = unix.BindToDevice(int(fd), iface) }); err != nil {
		return err
	}
	return serr
}

type execProber struct {
	spec Spec
}

func (p execProber) probe(ctx context.Context) error {
	env := append(slices.Clip(p.spec.Env),
		"KEEPBIT_TARGET_ADDR="+p.spec.Target.Addr().String(),
		"KEEPBIT_TARGET_PORT="+strconv.Itoa(int(p.spec.Target.Port())))
	// procexec kills the whole process group on timeout, not just the shell.
	stderr, err := procexec.Run(ctx, procexec.Command{Path: p.spec.Command, Args: p.spec.Args, Env: env})
	if err != nil {
		if msg := strings.TrimSpace(string(stderr)); msg != "" {
			return fmt.Errorf("%w: %s", err, firstLine(msg))
		}
		return err
	}
	return nil
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
