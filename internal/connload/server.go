// Package connload measures what load balancer changes do to TCP
// connections: long-lived connections that exchange a sequence number every
// few milliseconds (and notice resets, stalls and a change of the backend
// answering), and a stream of short connections. Server is the backend side.
//
// The protocol is one line each way: the client sends "<seq>\n", the
// backend answers "<seq> <identity>\n". The identity names the backend, so
// a client sees which backend its connection reached through the load
// balancer (with DSR the answer comes straight from the backend).
package connload

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/vishvananda/netns"

	"github.com/keepbit/keepbit/internal/lab"
)

// Server echoes sequence numbers with its identity on every connection it
// accepts, until Close.
type Server struct {
	ln       net.Listener
	identity string
	accepted atomic.Int64

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// Listen starts a Server on addr ("host:port", TCP) inside ns; netns.None()
// listens in the caller's namespace. The socket stays in ns.
func Listen(ns netns.NsHandle, addr, identity string) (*Server, error) {
	var ln net.Listener
	listen := func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	}
	var err error
	if ns == netns.None() {
		err = listen()
	} else {
		err = lab.InNS(ns, listen)
	}
	if err != nil {
		return nil, fmt.Errorf("connload listen %s: %w", addr, err)
	}
	return Serve(ln, identity), nil
}

// Serve answers on ln until Close; it takes ln over.
func Serve(ln net.Listener, identity string) *Server {
	s := &Server{ln: ln, identity: identity, conns: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go s.accept()
	return s
}

// Addr is the listening address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Accepted is how many connections the server has accepted.
func (s *Server) Accepted() int64 { return s.accepted.Load() }

// Open is how many connections are open now.
func (s *Server) Open() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

func (s *Server) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // e.g. a connection reset before accept: keep serving
		}
		s.accepted.Add(1)
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serve(c)
	}
}

func (s *Server) serve(c net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	r := bufio.NewReader(c)
	w := bufio.NewWriter(c)
	var buf []byte
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return
		}
		seq, err := strconv.ParseUint(string(line[:len(line)-1]), 10, 64)
		if err != nil {
			return // not our protocol (e.g. a health check writing): hang up
		}
		buf = strconv.AppendUint(buf[:0], seq, 10)
		buf = append(buf, ' ')
		buf = append(buf, s.identity...)
		buf = append(buf, '\n')
		if _, err := w.Write(buf); err != nil {
			return
		}
		// Answer everything that arrived together in one segment.
		if r.Buffered() == 0 {
			if err := w.Flush(); err != nil {
				return
			}
		}
	}
}

// Close stops listening and closes every connection.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	err := s.ln.Close()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}
