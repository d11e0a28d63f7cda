// Package version says which build of Keepbit is running: the release
// stamped at link time and the source revision Go records in the binary.
package version

import (
	"fmt"
	"runtime/debug"
)

// release is `git describe` of the built tree, stamped by the Makefile
// (-ldflags "-X github.com/keepbit/keepbit/internal/version.release=...").
// It is written only by the linker, never at run time.
var release string

// Info describes one binary.
type Info struct {
	// Version is the stamped release, or "devel" for a build without
	// the Makefile's stamp (go build, go test).
	Version string `json:"version"`
	// Revision is the VCS commit the binary was built from ("" when Go
	// recorded none: go run, go test, a build outside a checkout).
	Revision string `json:"revision,omitempty"`
	// Modified: the checkout had uncommitted changes.
	Modified  bool   `json:"modified,omitempty"`
	GoVersion string `json:"go_version"`
}

// Get reads this binary's build information.
func Get() Info {
	return fromBuild(release, readBuildInfo())
}

func readBuildInfo() *debug.BuildInfo {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return nil
	}
	return bi
}

func fromBuild(stamp string, bi *debug.BuildInfo) Info {
	i := Info{Version: stamp}
	if i.Version == "" {
		i.Version = "devel"
	}
	if bi == nil {
		return i
	}
	i.GoVersion = bi.GoVersion
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			i.Revision = s.Value
		case "vcs.modified":
			i.Modified = s.Value == "true"
		}
	}
	return i
}

// String is the one line `--version` prints.
func (i Info) String() string {
	s := "keepbit " + i.Version
	if i.Revision != "" {
		rev := i.Revision
		if len(rev) > 12 {
			rev = rev[:12]
		}
		s += " (" + rev
		if i.Modified {
			s += ", modified"
		}
		s += ")"
	}
	if i.GoVersion != "" {
		s += fmt.Sprintf(" built with %s", i.GoVersion)
	}
	return s
}
