package control

import "github.com/keepbit/keepbit/internal/config"

// RunningConfig is the config the last successful reload applied (nil
// before the first). Callers must not modify it: a reload replaces it
// whole, never in place.
func (c *Controller) RunningConfig() *config.Config {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cfg
}
