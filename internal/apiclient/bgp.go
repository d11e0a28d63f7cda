package apiclient

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/keepbit/keepbit/internal/api"
)

// BGP is GET /v1/bgp: sessions, their BFD sessions, and the VIP routes.
func (c *Client) BGP(ctx context.Context) (api.BGP, error) {
	var out api.BGP
	return out, c.do(ctx, http.MethodGet, "/v1/bgp", &out)
}

// DrainNode is POST /v1/bgp/drain: every route withdrawn, the sessions
// closed after hold (0: kept; negative: the daemon's bgp.drain_hold).
func (c *Client) DrainNode(ctx context.Context, hold time.Duration) (api.Drain, error) {
	path := "/v1/bgp/drain"
	if hold >= 0 {
		path += "?hold=" + url.QueryEscape(hold.String())
	}
	var out api.Drain
	if err := c.do(ctx, http.MethodPost, path, &out); err != nil {
		return out, fmt.Errorf("drain-node: %w", err)
	}
	return out, nil
}

// Undrain is POST /v1/bgp/undrain: routes are announced again as their
// health allows.
func (c *Client) Undrain(ctx context.Context) error {
	var out map[string]bool
	return c.do(ctx, http.MethodPost, "/v1/bgp/undrain", &out)
}

// FlowShare is GET /v1/flowshare: the flow-sharing warm-up, transport and
// program counters.
func (c *Client) FlowShare(ctx context.Context) (api.FlowShare, error) {
	var out api.FlowShare
	return out, c.do(ctx, http.MethodGet, "/v1/flowshare", &out)
}
