// Package lab builds network labs out of namespaces, veth pairs and a
// bridge: the test suites and `make demo` use it. Everything it creates
// is removed by the Close functions it returns.
package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"time"

	"github.com/vishvananda/netns"
)

// NewNS returns a new, anonymous network namespace; closing the handle
// (with nothing else holding it) removes it and its interfaces.
func NewNS() (netns.NsHandle, error) {
	type result struct {
		ns  netns.NsHandle
		err error
	}
	ch := make(chan result)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			ch <- result{err: err}
			return
		}
		ns, err := netns.New()
		if err != nil {
			ch <- result{err: err}
			return
		}
		if err := netns.Set(orig); err != nil {
			ch <- result{err: err}
			return // the thread stays locked and dies with the goroutine
		}
		orig.Close()
		runtime.UnlockOSThread()
		ch <- result{ns: ns}
	}()
	r := <-ch
	if r.err != nil {
		return 0, fmt.Errorf("new network namespace: %w", r.err)
	}
	return r.ns, nil
}

// InNS runs fn on a thread inside ns. Sockets fn opens stay in ns, and
// processes it starts run there. With netns.None() fn runs here, in the
// caller's namespace, so helpers take "this namespace" the same way.
func InNS(ns netns.NsHandle, fn func() error) error {
	if ns == netns.None() {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, err)
			return // leave the thread locked: it is in the wrong namespace
		}
		orig.Close()
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// DialContext dials from inside ns (for an http.Transport): the socket
// is created there and stays there.
func DialContext(ns netns.NsHandle, timeout time.Duration) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := InNS(ns, func() error {
			var err error
			c, err = (&net.Dialer{Timeout: timeout}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}
