package control

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"

	"github.com/keepbit/keepbit/loader"
)

// The flow-sharing side of the controller (internal/ownership.FlowShare
// uses it): every dataplane's reports, other nodes' flows written into
// every dataplane, a snapshot for a joining node, the program's settings.
// A flow whose VIP a dataplane does not serve is skipped by that
// dataplane, so handing every flow to every dataplane is correct.

// SetFlowSharing turns flow sharing on or off in every dataplane.
func (c *Controller) SetFlowSharing(f loader.FlowSharing) error {
	var errs []error
	for name, dp := range c.dataplanes() {
		if err := dp.SetFlowSharing(f); err != nil {
			errs = append(errs, fmt.Errorf("interface %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// ReadFlowReports hands every dataplane's flow reports to fn (called from
// one goroutine per dataplane) until ctx ends.
func (c *Controller) ReadFlowReports(ctx context.Context, fn func([]loader.FlowReport)) error {
	dps := c.dataplanes()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for name, dp := range dps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := dp.ReadFlowReports(ctx, fn); err != nil && ctx.Err() == nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("interface %s: %w", name, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// ShareFlows writes other nodes' flows into every dataplane; applied
// counts the flows some dataplane took.
func (c *Controller) ShareFlows(fs []loader.SharedFlow) (int, error) {
	applied := 0
	var errs []error
	for name, dp := range c.dataplanes() {
		n, err := dp.ShareFlows(fs)
		applied += n
		if err != nil {
			errs = append(errs, fmt.Errorf("interface %s: %w", name, err))
		}
	}
	return applied, errors.Join(errs...)
}

// ShareableFlows hands fn every dataplane's flows worth sharing.
func (c *Controller) ShareableFlows(fn func([]loader.FlowReport)) error {
	var errs []error
	for name, dp := range c.dataplanes() {
		if err := dp.ShareableFlows(fn); err != nil {
			errs = append(errs, fmt.Errorf("interface %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// FlowShareCounters sums the programs' flow sharing counters per
// interface, sorted by interface.
func (c *Controller) FlowShareCounters() ([]InterfaceShareCounters, error) {
	var (
		out  []InterfaceShareCounters
		errs []error
	)
	for name, dp := range c.dataplanes() {
		s, err := dp.FlowShareStats()
		if err != nil {
			errs = append(errs, fmt.Errorf("interface %s: %w", name, err))
			continue
		}
		out = append(out, InterfaceShareCounters{Interface: name, Counters: s})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Interface < out[j].Interface })
	return out, errors.Join(errs...)
}

// InterfaceShareCounters is one dataplane's flow sharing counters.
type InterfaceShareCounters struct {
	Interface string
	Counters  loader.FlowShareCounters
}
