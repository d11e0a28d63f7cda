package privtest

import (
	"errors"
	"runtime"
	"testing"

	"github.com/vishvananda/netns"
)

// NewNS returns a new, anonymous network namespace that is closed (and
// with its interfaces gone) when t ends.
func NewNS(t testing.TB) netns.NsHandle {
	t.Helper()
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
		t.Fatalf("new network namespace: %v", r.err)
	}
	t.Cleanup(func() { r.ns.Close() })
	return r.ns
}

// InNS runs fn on a thread inside ns. Sockets fn opens stay in ns, and
// processes it starts run there.
func InNS(ns netns.NsHandle, fn func() error) error {
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
