package loader

import (
	"bytes"
	"sync/atomic"
	"testing"
	"time"
)

// TestReviewInfoSlotGrace: a backend record change writes the idle
// backend_info slot and flips the state word to it. The slot it flipped
// away from was live until that flip: a packet that read the previous
// state word may still be copying that record (into its frame and its
// flow cache entry), and an element wider than 8 bytes is not written
// atomically. So the next change, which writes that slot again, must wait
// for a grace period after the flip, as a table buffer does. Before the
// fix the second change rewrote it at once (seen here with grace periods
// held back: the record write came while the grace period was pending).
func TestReviewInfoSlotGrace(t *testing.T) {
	l := newLab(t)
	key := svc("198.51.100.61", 80, TCP)
	spec := func(hw string) ServiceSpec {
		return ServiceSpec{Backends: []BackendSpec{backend("10.6.1.1", hw)}}
	}
	l.apply(key, spec("02:61:00:00:00:01"))
	release := l.blockRCU()
	// Slot 0 -> 1: slot 0 was never flipped away from before, no wait.
	var firstErr error
	if ok, done := returnsWithin(5*time.Second, func() { _, firstErr = l.dp.ApplyService(key, spec("02:61:00:00:00:02")) }); !ok {
		release()
		<-done
		t.Fatal("first record change waited for a grace period")
	}
	if firstErr != nil {
		t.Fatalf("first record change: %v", firstErr)
	}

	var recordWritten atomic.Bool
	l.dp.beforeWrite = func(op string) error {
		if op == "backends" {
			recordWritten.Store(true)
		}
		return nil
	}
	// Slot 1 -> 0: slot 0 was live until the previous change.
	var applyErr error
	returned, done := returnsWithin(300*time.Millisecond, func() { _, applyErr = l.dp.ApplyService(key, spec("02:61:00:00:00:03")) })
	if returned {
		t.Fatal("second record change returned while the grace period after the first was pending")
	}
	if recordWritten.Load() {
		t.Error("the record slot that was live until the previous change was rewritten before a grace period passed")
	}
	release()
	<-done
	if applyErr != nil {
		t.Fatalf("second record change: %v", applyErr)
	}
	if !recordWritten.Load() {
		t.Fatal("record never written after the grace period")
	}
	p := v4(t, pkt{src: "203.0.113.61", dst: "198.51.100.61", l4: tcpTo(80), payload: []byte("x")}, 0)
	verdict, out := l.run(p)
	if verdict != xdpTX || !bytes.Equal(out[:6], mac("02:61:00:00:00:03")) {
		t.Fatalf("verdict %s to %x, want TX to 02:61:00:00:00:03", verdictName(verdict), out[:6])
	}
}
