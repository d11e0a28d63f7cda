package bgp

import (
	"context"
	"fmt"
	"log/slog"
	"sort"

	gobgplog "github.com/osrg/gobgp/v3/pkg/log"
)

// logger routes GoBGP's messages to slog. GoBGP logs every session step
// at info; those go to debug so that keepbitd stays quiet unless asked.
type logger struct{ l *slog.Logger }

func (g *logger) attrs(f gobgplog.Fields) []any {
	keys := make([]string, 0, len(f))
	for k := range f {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]any, 0, 2*len(keys)+2)
	out = append(out, "component", "gobgp")
	for _, k := range keys {
		out = append(out, k, f[k])
	}
	return out
}

// Panic keeps GoBGP's contract (it calls Panic on its own logic bugs and
// does not expect to return).
func (g *logger) Panic(msg string, f gobgplog.Fields) {
	g.l.Error("gobgp: "+msg, g.attrs(f)...)
	panic(fmt.Sprintf("gobgp: %s %v", msg, f))
}

// Fatal: GoBGP's default logger exits the process; here the caller's
// error path is left to report it.
func (g *logger) Fatal(msg string, f gobgplog.Fields) { g.l.Error("gobgp: "+msg, g.attrs(f)...) }
func (g *logger) Error(msg string, f gobgplog.Fields) { g.l.Error("gobgp: "+msg, g.attrs(f)...) }
func (g *logger) Warn(msg string, f gobgplog.Fields) {
	if adminRetryNoise(msg) {
		g.l.Debug("gobgp: "+msg, g.attrs(f)...)
		return
	}
	g.l.Warn("gobgp: "+msg, g.attrs(f)...)
}

// adminRetryNoise: GoBGP's warnings about an admin request it dropped or
// found already done, which the Speaker's admin loop expects and repairs
// (see adminLoop).
func adminRetryNoise(msg string) bool {
	switch msg {
	case "previous setting admin state request is still remaining", "cannot change to the same state":
		return true
	}
	return false
}
func (g *logger) Info(msg string, f gobgplog.Fields)  { g.l.Debug("gobgp: "+msg, g.attrs(f)...) }
func (g *logger) Debug(msg string, f gobgplog.Fields) { g.l.Debug("gobgp: "+msg, g.attrs(f)...) }

// SetLevel is ignored: slog's handler decides.
func (g *logger) SetLevel(gobgplog.LogLevel) {}

// GetLevel tells GoBGP whether building debug messages is worth it.
func (g *logger) GetLevel() gobgplog.LogLevel {
	if g.l.Enabled(context.Background(), slog.LevelDebug) {
		return gobgplog.DebugLevel
	}
	return gobgplog.WarnLevel
}
