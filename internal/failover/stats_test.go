package failover

import (
	"testing"
	"time"
)

func ms(n ...int) []time.Duration {
	out := make([]time.Duration, len(n))
	for i, v := range n {
		out[i] = time.Duration(v) * time.Millisecond
	}
	return out
}

func TestPercentile(t *testing.T) {
	cases := []struct {
		name string
		in   []time.Duration
		p    float64
		want time.Duration
		err  bool
	}{
		{"p50 of odd count", ms(5, 1, 3), 50, 3 * time.Millisecond, false},
		{"p99 of 20 is the worst", ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 40), 99, 40 * time.Millisecond, false},
		{"p0 is the best", ms(7, 2, 9), 0, 2 * time.Millisecond, false},
		{"p100 is the max", ms(7, 2, 9), 100, 9 * time.Millisecond, false},
		{"no samples", nil, 50, 0, true},
		{"p out of range", ms(1), 101, 0, true},
	}
	for _, c := range cases {
		got, err := Percentile(c.in, c.p)
		if (err != nil) != c.err || got != c.want {
			t.Errorf("%s: got %v, %v; want %v, err=%v", c.name, got, err, c.want, c.err)
		}
	}
}

func TestVerdict(t *testing.T) {
	cases := []struct {
		got, target time.Duration
		want        string
	}{
		{30 * time.Millisecond, 30 * time.Millisecond, "30ms <= 30ms: met"},
		{41 * time.Millisecond, 40 * time.Millisecond, "41ms > 40ms: MISSED"},
	}
	for _, c := range cases {
		if got := Verdict(c.got, c.target); got != c.want {
			t.Errorf("Verdict(%v, %v) = %q, want %q", c.got, c.target, got, c.want)
		}
	}
}
