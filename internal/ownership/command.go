package ownership

import (
	"context"
	"fmt"
	"strings"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/internal/procexec"
)

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
