package maglev

import (
	"fmt"
	"math"
	"strings"
	"testing"
)

func names(n int) []Backend {
	bs := make([]Backend, n)
	for i := range bs {
		bs[i] = Backend{Name: fmt.Sprintf("10.0.%d.%d", i/250, i%250+1), Weight: 1}
	}
	return bs
}

func shares(table []uint32, n int) []float64 {
	s := make([]float64, n)
	for _, e := range table {
		s[e]++
	}
	for i := range s {
		s[i] /= float64(len(table))
	}
	return s
}

func TestBalanceFollowsWeights(t *testing.T) {
	cases := []struct {
		name    string
		weights []uint32
		size    uint32
	}{
		{"equal 3", []uint32{1, 1, 1}, DefaultSize},
		{"equal 16", []uint32{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, DefaultSize},
		{"2:1", []uint32{2, 1}, DefaultSize},
		{"1:2:3:4", []uint32{1, 2, 3, 4}, DefaultSize},
		{"100:1", []uint32{100, 1}, DefaultSize},
		{"small table", []uint32{1, 1, 1, 1}, 401},
		{"weight 0 gets nothing", []uint32{1, 0, 1}, DefaultSize},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			bs := names(len(tc.weights))
			var total float64
			for i, w := range tc.weights {
				bs[i].Weight = w
				total += float64(w)
			}
			table, err := Build(bs, tc.size, 42)
			if err != nil {
				t.Fatal(err)
			}
			got := shares(table, len(bs))
			for i, w := range tc.weights {
				want := float64(w) / total
				if math.Abs(got[i]-want) > 0.01 {
					t.Errorf("backend %d weight %d: share %.4f, want %.4f +- 0.01", i, w, got[i], want)
				}
			}
		})
	}
}

func TestRemovalMovesOnlyThatBackend(t *testing.T) {
	for _, n := range []int{3, 8, 16, 100} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			bs := names(n)
			before, err := Build(bs, DefaultSize, 7)
			if err != nil {
				t.Fatal(err)
			}
			gone := n / 2
			rest := append(append([]Backend{}, bs[:gone]...), bs[gone+1:]...)
			after, err := Build(rest, DefaultSize, 7)
			if err != nil {
				t.Fatal(err)
			}
			moved, owned := 0, 0
			for slot := range before {
				was := bs[before[slot]].Name
				now := rest[after[slot]].Name
				if was == bs[gone].Name {
					owned++
					continue
				}
				if was != now {
					moved++
				}
			}
			// Only the removed backend's slots must move, plus a little churn.
			extra := float64(moved) / float64(len(before))
			t.Logf("%d backends: removed one owning %d slots; %d others moved (%.2f%%)", n, owned, moved, 100*extra)
			if extra > 0.03 {
				t.Errorf("%.2f%% of slots not owned by the removed backend moved, want <= 3%%", 100*extra)
			}
		})
	}
}

func TestDeterministic(t *testing.T) {
	bs := names(10)
	a, _ := Build(bs, 1009, 99)
	rev := make([]Backend, len(bs))
	for i := range bs {
		rev[len(bs)-1-i] = bs[i]
	}
	b, _ := Build(rev, 1009, 99)
	for i := range a {
		if bs[a[i]].Name != rev[b[i]].Name {
			t.Fatalf("slot %d: %s vs %s: input order changed the table", i, bs[a[i]].Name, rev[b[i]].Name)
		}
	}
	c, _ := Build(bs, 1009, 100)
	same := 0
	for i := range a {
		if a[i] == c[i] {
			same++
		}
	}
	if same == len(a) {
		t.Error("a different seed gave the same table")
	}
}

func TestBuildRejects(t *testing.T) {
	cases := []struct {
		name    string
		bs      []Backend
		size    uint32
		wantErr string
	}{
		{"size not prime", names(2), 65536, "table size 65536: must be a prime"},
		{"size too big", names(2), MaxSize + 1, "must be a prime between 2 and"},
		{"size 1", names(2), 1, "must be a prime"},
		{"no backends", nil, 101, "no backend with a positive weight"},
		{"all weight 0", []Backend{{"a", 0}}, 101, "no backend with a positive weight"},
		{"duplicate", []Backend{{"a", 1}, {"a", 1}}, 101, `backend "a": listed twice`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Build(tc.bs, tc.size, 0)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got %v, want error containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestIsPrime(t *testing.T) {
	for n, want := range map[uint32]bool{0: false, 1: false, 2: true, 3: true, 4: false, 65537: true, 65535: false, 251: true, 1009: true} {
		if IsPrime(n) != want {
			t.Errorf("IsPrime(%d) = %v", n, !want)
		}
	}
}

func BenchmarkBuild(b *testing.B) {
	bs := names(16)
	for b.Loop() {
		if _, err := Build(bs, DefaultSize, 1); err != nil {
			b.Fatal(err)
		}
	}
}
