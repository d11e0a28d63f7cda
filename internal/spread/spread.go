// Package spread summarises repeated measurements as a median with the
// smallest and largest value, the form every benchmark report here uses.
package spread

import (
	"fmt"
	"slices"
)

// Spread is a median with the smallest and largest value.
type Spread struct{ Median, Min, Max float64 }

// Of summarizes vs (the median of an even count is the mean of the middle
// two).
func Of(vs []float64) Spread {
	if len(vs) == 0 {
		return Spread{}
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return Spread{Median: m, Min: s[0], Max: s[len(s)-1]}
}

// Text writes "median [min-max]", each with format.
func (s Spread) Text(format string) string {
	return fmt.Sprintf(format+" ["+format+"-"+format+"]", s.Median, s.Min, s.Max)
}
