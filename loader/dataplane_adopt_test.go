package loader

import (
	"testing"
	"time"
)

// TestReadStatesBatch: the batched read that adoption uses returns exactly
// what a lookup per ID returns, words with a sequence and incarnation in
// them included, and is timed against it (the log shows both).
func TestReadStatesBatch(t *testing.T) {
	l := newLab(t)
	for _, id := range []uint32{1, 2, 4095, 4096, 4097, 40000, maxBackends - 1} {
		w := uint64(id)<<stateSeqShift | uint64(id&0xFFFF)<<stateIncShift | uint64(Up)
		if err := l.dp.objs.BackendState.Put(id, w); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	batch, err := l.dp.readStates()
	if err != nil {
		t.Fatal(err)
	}
	tookBatch := time.Since(start)
	start = time.Now()
	single, err := l.dp.readStatesOneByOne(make([]uint64, maxBackends))
	if err != nil {
		t.Fatal(err)
	}
	tookSingle := time.Since(start)
	t.Logf("read %d state words: batched %v, one by one %v", maxBackends, tookBatch, tookSingle)
	if len(batch) != maxBackends {
		t.Fatalf("batched read returned %d words, want %d", len(batch), maxBackends)
	}
	for id := range batch {
		if batch[id] != single[id] {
			t.Errorf("backend %d: batched %#x, one by one %#x", id, batch[id], single[id])
		}
	}
	if batch[4096] == 0 || batch[maxBackends-1] == 0 {
		t.Error("written words read back as zero")
	}
}
