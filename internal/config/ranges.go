package config

import "time"

// Range checks shared by the sections' validations; each reports the
// field by its path.

// inRange reports an integer outside [lo, hi], naming the field, and
// whether it did.
func inRange(d *decoder, path string, v, lo, hi int) (bad bool) {
	if v < lo || v > hi {
		d.fail(path, "%d is outside %d-%d", v, lo, hi)
		return true
	}
	return false
}

// durationIn reports a duration outside [lo, hi], naming the field.
func durationIn(d *decoder, path string, v, lo, hi time.Duration) {
	if v < lo || v > hi {
		d.fail(path, "%v, want %v to %v", v, lo, hi)
	}
}
