package spread

import "testing"

func TestOf(t *testing.T) {
	cases := []struct {
		in   []float64
		want Spread
		text string
	}{
		{nil, Spread{}, "0.0 [0.0-0.0]"},
		{[]float64{2}, Spread{2, 2, 2}, "2.0 [2.0-2.0]"},
		{[]float64{3, 1, 2}, Spread{2, 1, 3}, "2.0 [1.0-3.0]"},
		{[]float64{4, 1, 3, 2}, Spread{2.5, 1, 4}, "2.5 [1.0-4.0]"},
	}
	for _, c := range cases {
		got := Of(c.in)
		if got != c.want {
			t.Errorf("Of(%v) = %+v, want %+v", c.in, got, c.want)
		}
		if s := got.Text("%.1f"); s != c.text {
			t.Errorf("Of(%v).Text = %q, want %q", c.in, s, c.text)
		}
	}
}
