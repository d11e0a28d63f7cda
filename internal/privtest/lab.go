package privtest

import (
	"testing"

	"github.com/vishvananda/netns"

	"github.com/keepbit/keepbit/internal/lab"
)

// NewNS returns a new network namespace that is removed when t ends.
func NewNS(t testing.TB) netns.NsHandle {
	t.Helper()
	ns, err := lab.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

// InNS runs fn on a thread inside ns.
func InNS(ns netns.NsHandle, fn func() error) error { return lab.InNS(ns, fn) }

// TxChecksumOff: see lab.TxChecksumOff.
func TxChecksumOff(name string) error { return lab.TxChecksumOff(name) }

// AttachPass attaches an XDP pass program for the rest of t.
func AttachPass(t testing.TB, ns netns.NsHandle, ifindex int) {
	t.Helper()
	detach, err := lab.AttachPass(ns, ifindex)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(detach)
}
