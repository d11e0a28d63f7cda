package control

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/internal/neigh"
)

func (c *Controller) queueResolve(service string, addr netip.Addr) {
	c.mu.Lock()
	if c.unresolved[service] == nil {
		c.unresolved[service] = map[netip.Addr]bool{}
	}
	c.unresolved[service][addr] = true
	c.mu.Unlock()
	select {
	case c.kickResolve <- struct{}{}:
	default:
	}
}

// resolveLoop asks the network for the MACs of backends the neighbour table
// did not know (16 at a time), and re-applies a service when one answers;
// what stays silent is asked again every 2 s.
func (c *Controller) resolveLoop(ctx context.Context) {
	retry := time.NewTicker(2 * time.Second)
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.kickResolve:
		case <-retry.C:
		}
		type job struct {
			service, iface string
			addr           netip.Addr
		}
		var jobs []job
		c.mu.Lock()
		for name, addrs := range c.unresolved {
			s := c.svcs[name]
			for addr := range addrs {
				if s == nil || s.backends[addr] == nil || s.backends[addr].mac != nil {
					delete(addrs, addr)
					continue
				}
				jobs = append(jobs, job{name, egress(s.cfg, s.backends[addr].cfg), addr})
			}
		}
		c.mu.Unlock()
		found := map[string]bool{}
		var fmu sync.Mutex
		sem := make(chan struct{}, 16)
		var wg sync.WaitGroup
		for _, j := range jobs {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				rctx, cancel := context.WithTimeout(ctx, time.Second)
				hw, err := neigh.Resolve(rctx, j.iface, j.addr)
				cancel()
				if err != nil {
					c.log.Debug("backend MAC unresolved", "service", j.service, "backend", j.addr, "error", err)
					return
				}
				c.mu.Lock()
				if s := c.svcs[j.service]; s != nil && s.backends[j.addr] != nil {
					s.backends[j.addr].mac = hw
					delete(c.unresolved[j.service], j.addr)
				}
				c.mu.Unlock()
				fmu.Lock()
				found[j.service] = true
				fmu.Unlock()
			})
		}
		wg.Wait()
		for name := range found {
			c.reapplyResolved(ctx, name)
		}
	}
}

// reapplyResolved re-applies service name once some of its backends' MACs
// are known.
func (c *Controller) reapplyResolved(ctx context.Context, name string) {
	c.reapply(ctx, name, "backend MACs resolved")
}

// reapply re-applies service name from its running config (why: what
// changed, for the log). The service is looked up under applyMu: a reload
// that ran meanwhile may have removed it or moved it to another key, and
// re-applying the config of before would put the old service back in the
// dataplane (and leave the new one unmanaged).
func (c *Controller) reapply(ctx context.Context, name, why string) {
	c.applyMu.Lock()
	defer c.applyMu.Unlock()
	c.mu.Lock()
	s := c.svcs[name]
	var sc config.Service
	if s != nil {
		sc = s.cfg
	}
	c.mu.Unlock()
	if s == nil || ctx.Err() != nil {
		return // removed by a reload meanwhile, or stopping
	}
	if err := c.applyService(ctx, sc, true); err != nil {
		c.log.Warn("re-apply service", "service", name, "why", why, "error", err)
		return
	}
	c.log.Info(why, "service", name)
}
