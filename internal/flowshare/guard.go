package flowshare

import (
	"context"
	"sync"
	"time"
)

// replayWindow remembers which of a sender's last windowSize sequence
// numbers arrived (like IPsec's anti-replay window): a datagram sent
// again by someone who recorded it is refused, while datagrams reordered
// by the network within the window are still taken.
type replayWindow struct {
	top  uint64                  // highest sequence accepted
	seen [windowSize / 64]uint64 // bit i: top-i was accepted
	last time.Time               // when the sender was last heard
}

const windowSize = 1024

// accept reports whether seq is new, and records it if so.
func (w *replayWindow) accept(seq uint64) bool {
	if seq == 0 {
		return false // sequences start at 1
	}
	if seq > w.top {
		w.shift(seq - w.top)
		w.top = seq
		w.seen[0] |= 1
		return true
	}
	d := w.top - seq
	if d >= windowSize {
		return false
	}
	word, bit := d/64, d%64
	if w.seen[word]&(1<<bit) != 0 {
		return false
	}
	w.seen[word] |= 1 << bit
	return true
}

// shift moves the window up by n: bit i becomes bit i+n.
func (w *replayWindow) shift(n uint64) {
	if n >= windowSize {
		w.seen = [windowSize / 64]uint64{}
		return
	}
	words, bits := int(n/64), n%64
	for i := len(w.seen) - 1; i >= 0; i-- {
		var v uint64
		if j := i - words; j >= 0 {
			v = w.seen[j] << bits
			if bits != 0 && j-1 >= 0 {
				v |= w.seen[j-1] >> (64 - bits)
			}
		}
		w.seen[i] = v
	}
}

// tokenBucket limits flows per second. It lets a batch take more than is
// left and go into debt (a datagram is never split to fit the bucket);
// the next batch then waits the debt off, so the average holds and a
// burst is at most burst plus one datagram.
type tokenBucket struct {
	mu     sync.Mutex
	rate   float64 // tokens a second
	burst  float64
	tokens float64
	last   time.Time
}

func newTokenBucket(rate, burst float64, now time.Time) *tokenBucket {
	return &tokenBucket{rate: rate, burst: burst, tokens: burst, last: now}
}

// take spends n tokens if the bucket is not in debt and returns 0, or
// returns how long to wait before trying again.
func (b *tokenBucket) take(now time.Time, n int) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	if el := now.Sub(b.last); el > 0 {
		b.tokens = min(b.burst, b.tokens+el.Seconds()*b.rate)
		b.last = now
	}
	if b.tokens < 0 {
		return time.Duration(-b.tokens / b.rate * float64(time.Second))
	}
	b.tokens -= float64(n)
	return 0
}

// wait spends n tokens, waiting while the bucket is in debt.
func (b *tokenBucket) wait(ctx context.Context, n int) error {
	for {
		d := b.take(time.Now(), n)
		if d == 0 {
			return nil
		}
		t := time.NewTimer(max(d, 100*time.Microsecond))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}
