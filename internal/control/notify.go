package control

import (
	"context"
	"fmt"
	"strings"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/internal/procexec"
	"github.com/keepbit/keepbit/internal/recorder"
)

// report records, logs and hands to the notify hook what settleLocked did.
func (c *Controller) report(moves []move) {
	for _, m := range moves {
		switch {
		case m.err != nil:
			c.log.Error("apply backend state", "service", m.svc, "backend", m.addr, "error", m.err)
		case m.applied.IsZero():
			c.rec.Add(recorder.Event{Kind: m.kind, Service: m.svc, Backend: m.addr.String(), Reason: m.reason, Detect: m.detect, Decide: m.decide})
		default:
			e := c.rec.Add(recorder.Event{Kind: "backend-" + m.want.String(), Service: m.svc, Backend: m.addr.String(),
				Reason: m.reason, Detect: m.detect, Decide: m.decide, Apply: m.applied})
			c.log.Info("backend "+m.want.String(), "service", m.svc, "backend", m.addr, "reason", m.reason,
				"detect_to_decide", e.DetectToDecide, "decide_to_apply", e.DecideToApply)
			if m.notify.Command != "" {
				go c.RunNotify(m.notify, e)
			}
		}
	}
}

// RunNotify runs a notify hook with the event in its environment. It
// returns by the hook's timeout (plus procexec.WaitDelay): the hook's
// whole process group is killed then, so a hook that forks cannot leave
// work behind or hold the goroutine on its output pipe.
func (c *Controller) RunNotify(n config.Notify, e recorder.Event) {
	ctx, cancel := context.WithTimeout(context.Background(), n.Timeout)
	defer cancel()
	// backend-down -> down, vrrp-master -> master.
	state := e.Kind
	if _, s, ok := strings.Cut(e.Kind, "-"); ok {
		state = s
	}
	out, err := procexec.Run(ctx, procexec.Command{Path: n.Command, Args: n.Args, Stdout: true, Env: []string{
		"KEEPBIT_EVENT=" + e.Kind, "KEEPBIT_SERVICE=" + e.Service, "KEEPBIT_BACKEND=" + e.Backend,
		"KEEPBIT_STATE=" + state, "KEEPBIT_REASON=" + e.Reason,
		fmt.Sprintf("KEEPBIT_SEQ=%d", e.Seq)}})
	if err != nil {
		c.log.Warn("notify hook failed", "command", n.Command, "error", err, "output", strings.TrimSpace(string(out)))
	}
}
