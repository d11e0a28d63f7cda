package lab

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"

	"github.com/vishvananda/netns"
)

// Listen opens a listener inside ns (netns.None(): here). The socket stays
// in ns whichever thread uses it later.
func Listen(ns netns.NsHandle, network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := InNS(ns, func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen %s %s: %w", network, addr, err)
	}
	return ln, nil
}

// ListenPacket opens a packet socket inside ns (netns.None(): here).
func ListenPacket(ns netns.NsHandle, network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := InNS(ns, func() error {
		var err error
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen %s %s: %w", network, addr, err)
	}
	return pc, nil
}

// server is a socket with one goroutine serving it; Close closes the
// socket and waits for the goroutine, once.
type server struct {
	close func() error
	done  chan struct{}
	once  sync.Once
	err   error
}

func (s *server) Close() error {
	s.once.Do(func() {
		s.err = s.close()
		<-s.done
	})
	return s.err
}

// AcceptClose is a TCP listener that accepts every connection and closes
// it at once: all a TCP health check needs to see a backend up.
type AcceptClose struct {
	server
	ln net.Listener
}

// ServeAcceptClose listens on addr ("127.0.0.1:0", ":80") inside ns and
// accepts and closes until Close.
func ServeAcceptClose(ns netns.NsHandle, network, addr string) (*AcceptClose, error) {
	ln, err := Listen(ns, network, addr)
	if err != nil {
		return nil, err
	}
	a := &AcceptClose{server: server{close: ln.Close, done: make(chan struct{})}, ln: ln}
	go func() {
		defer close(a.done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return a, nil
}

// Addr is the listening address (the port chosen, for ":0").
func (a *AcceptClose) Addr() net.Addr { return a.ln.Addr() }

// AddrPort is Addr as a netip.AddrPort.
func (a *AcceptClose) AddrPort() netip.AddrPort { return addrPort(a.ln.Addr()) }

func addrPort(a net.Addr) netip.AddrPort {
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// UDPServer answers datagrams on a socket inside a namespace.
type UDPServer struct {
	server
	pc net.PacketConn
}

// EchoPrefix answers each datagram with prefix and the datagram.
func EchoPrefix(prefix string) func(req []byte) []byte {
	return func(req []byte) []byte { return append([]byte(prefix), req...) }
}

// ServeUDP listens on addr inside ns and sends answer(datagram) back to
// each sender until Close; a nil answer function, or a nil answer, sends
// nothing (a port that is open but mute).
func ServeUDP(ns netns.NsHandle, network, addr string, answer func(req []byte) []byte) (*UDPServer, error) {
	pc, err := ListenPacket(ns, network, addr)
	if err != nil {
		return nil, err
	}
	u := &UDPServer{server: server{close: pc.Close, done: make(chan struct{})}, pc: pc}
	go func() {
		defer close(u.done)
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if answer == nil {
				continue
			}
			if out := answer(buf[:n]); out != nil {
				_, _ = pc.WriteTo(out, from)
			}
		}
	}()
	return u, nil
}

// Addr is the socket's address.
func (u *UDPServer) Addr() net.Addr { return u.pc.LocalAddr() }

// AddrPort is Addr as a netip.AddrPort.
func (u *UDPServer) AddrPort() netip.AddrPort { return addrPort(u.pc.LocalAddr()) }

// HTTPServer is an http.Server on a listener inside a namespace.
type HTTPServer struct {
	server
	ln net.Listener
}

// ServeHTTP serves h on addr inside ns until Close, which also drops the
// connections open then (a backend that dies, not one that drains).
func ServeHTTP(ns netns.NsHandle, network, addr string, h http.Handler) (*HTTPServer, error) {
	ln, err := Listen(ns, network, addr)
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: h}
	s := &HTTPServer{server: server{close: srv.Close, done: make(chan struct{})}, ln: ln}
	go func() {
		defer close(s.done)
		_ = srv.Serve(ln) // closes ln when it returns
	}()
	return s, nil
}

// Addr is the listening address.
func (s *HTTPServer) Addr() net.Addr { return s.ln.Addr() }

// Identify answers every request with body: which backend answered, for
// tests that count where a load balancer sent each request.
func Identify(body string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, body) })
}
