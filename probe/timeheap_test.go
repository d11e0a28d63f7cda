package probe

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// TestTimeHeap: against a model (a plain list), with pushes, pops and
// drops interleaved at random (seeded), equal times included: every pop
// is an entry the model holds with the earliest time, and a drop keeps
// exactly the entries it should.
func TestTimeHeap(t *testing.T) {
	type entry struct {
		at int64
		v  int
	}
	for seed := range uint64(20) {
		r := rand.New(rand.NewPCG(seed, 1))
		var h timeHeap[int]
		var model []entry
		for step := range 3000 {
			switch k := r.IntN(100); {
			case k == 0:
				h.drop(func(v int) bool { return v%3 == 0 })
				model = slices.DeleteFunc(model, func(e entry) bool { return e.v%3 == 0 })
			case k < 40 && len(model) > 0:
				earliest := slices.MinFunc(model, func(a, b entry) int { return int(a.at - b.at) }).at
				if at, ok := h.first(); !ok || at != earliest {
					t.Fatalf("seed %d step %d: first %d %v, want %d", seed, step, at, ok, earliest)
				}
				at, v := h.pop()
				i := slices.Index(model, entry{at, v})
				if at != earliest || i < 0 {
					t.Fatalf("seed %d step %d: popped (%d, %d), want time %d and an entry pushed", seed, step, at, v, earliest)
				}
				model = slices.Delete(model, i, i+1)
			default:
				e := entry{int64(r.IntN(500)), step}
				h.push(e.at, e.v)
				model = append(model, e)
			}
			if h.len() != len(model) {
				t.Fatalf("seed %d step %d: %d entries, want %d", seed, step, h.len(), len(model))
			}
		}
	}
}
