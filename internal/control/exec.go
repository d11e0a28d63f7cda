package control

import (
	"context"
	"fmt"
	"strings"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/internal/procexec"
	"github.com/keepbit/keepbit/internal/recorder"
)

// runNotify runs a notify hook with the event in its environment. It
// returns by the hook's timeout (plus procexec.WaitDelay): the hook's
// whole process group is killed then, so a hook that forks cannot leave
// work behind or hold the goroutine on its output pipe.
func (c *Controller) runNotify(n config.Notify, e recorder.Event) {
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

// trackCommandOnce runs a VRRP track command once; nil means it passed.
// Like a hook, it is killed with its whole process group at its timeout.
func trackCommandOnce(ctx context.Context, tc config.TrackCommand) error {
	ctx, cancel := context.WithTimeout(ctx, tc.Timeout)
	defer cancel()
	out, err := procexec.Run(ctx, procexec.Command{Path: tc.Command, Args: tc.Args})
	if err != nil {
		if msg := strings.TrimSpace(string(out)); msg != "" {
			return fmt.Errorf("%w: %s", err, msg)
		}
		return err
	}
	return nil
}
