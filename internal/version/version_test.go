package version

import (
	"runtime/debug"
	"testing"
)

func TestFromBuild(t *testing.T) {
	full := &debug.BuildInfo{GoVersion: "go1.24.1", Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "0123456789abcdef0123"}, {Key: "vcs.modified", Value: "true"}}}
	clean := &debug.BuildInfo{GoVersion: "go1.24.1", Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "0123456789ab"}, {Key: "vcs.modified", Value: "false"}}}
	for _, c := range []struct {
		name  string
		stamp string
		bi    *debug.BuildInfo
		want  Info
		line  string
	}{
		{"no build info", "", nil, Info{Version: "devel"}, "keepbit devel"},
		{"stamped, modified", "v0.3.0-12-g0123456", full,
			Info{Version: "v0.3.0-12-g0123456", Revision: "0123456789abcdef0123", Modified: true, GoVersion: "go1.24.1"},
			"keepbit v0.3.0-12-g0123456 (0123456789ab, modified) built with go1.24.1"},
		{"unstamped, clean", "", clean,
			Info{Version: "devel", Revision: "0123456789ab", GoVersion: "go1.24.1"},
			"keepbit devel (0123456789ab) built with go1.24.1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := fromBuild(c.stamp, c.bi)
			if got != c.want {
				t.Fatalf("fromBuild = %+v, want %+v", got, c.want)
			}
			if s := got.String(); s != c.line {
				t.Fatalf("String = %q, want %q", s, c.line)
			}
		})
	}
}
