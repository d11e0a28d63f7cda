package probe

// timeHeap is a min-heap of values by due time (ns since an owner's
// epoch). The times sit beside the values, so sifting compares integers
// in one slice instead of following a pointer per comparison, and it is
// typed, so a push or pop boxes nothing: at 10,000 half-open checks the
// container/heap versions (time.Time compares through *check, a deadline
// boxed per push and pop) were 6-8% of the prober's CPU.
type timeHeap[T any] struct {
	items []timed[T]
}

type timed[T any] struct {
	at int64
	v  T
}

func (h *timeHeap[T]) len() int { return len(h.items) }

// first is the earliest due time; ok is false when the heap is empty.
func (h *timeHeap[T]) first() (at int64, ok bool) {
	if len(h.items) == 0 {
		return 0, false
	}
	return h.items[0].at, true
}

// peek is the earliest entry; ok is false when the heap is empty.
func (h *timeHeap[T]) peek() (at int64, v T, ok bool) {
	if len(h.items) == 0 {
		return 0, v, false
	}
	return h.items[0].at, h.items[0].v, true
}

func (h *timeHeap[T]) push(at int64, v T) {
	h.items = append(h.items, timed[T]{at, v})
	i := len(h.items) - 1
	for i > 0 {
		p := (i - 1) / 2
		if h.items[p].at <= at {
			break
		}
		h.items[i] = h.items[p]
		i = p
	}
	h.items[i] = timed[T]{at, v}
}

// pop removes and returns the earliest entry; the heap must not be empty.
func (h *timeHeap[T]) pop() (int64, T) {
	top := h.items[0]
	n := len(h.items) - 1
	h.items[0] = h.items[n]
	var zero timed[T]
	h.items[n] = zero // no reference kept past the slice's end
	h.items = h.items[:n]
	h.down(0)
	return top.at, top.v
}

// drop removes the entries whose value gone says so, in one pass.
func (h *timeHeap[T]) drop(gone func(T) bool) {
	kept := h.items[:0]
	for _, it := range h.items {
		if !gone(it.v) {
			kept = append(kept, it)
		}
	}
	clear(h.items[len(kept):])
	h.items = kept
	for i := len(kept)/2 - 1; i >= 0; i-- {
		h.down(i)
	}
}

func (h *timeHeap[T]) down(i int) {
	n := len(h.items)
	if i >= n {
		return
	}
	it := h.items[i]
	for {
		c := 2*i + 1
		if c >= n {
			break
		}
		if r := c + 1; r < n && h.items[r].at < h.items[c].at {
			c = r
		}
		if it.at <= h.items[c].at {
			break
		}
		h.items[i] = h.items[c]
		i = c
	}
	h.items[i] = it
}
