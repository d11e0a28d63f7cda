package apiclient

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/keepbit/keepbit/internal/api"
	"github.com/keepbit/keepbit/internal/drill"
)

// DrillBackend is POST /v1/drills/backend/...: the daemon takes the
// backend out as a failure would for hold (0: the daemon's default),
// gives it back to its checks, and answers with the report once it is
// back (the call lasts the hold and more). backend is sent as given.
func (c *Client) DrillBackend(ctx context.Context, service, backend string, hold time.Duration, force bool) (drill.Result, error) {
	path := fmt.Sprintf("/v1/drills/backend/%s/%s", url.PathEscape(service), url.PathEscape(backend))
	return c.drill(ctx, path, hold, force)
}

// DrillNode is POST /v1/drills/node: a planned handoff of this node's
// VIPs to its peers for hold, and back.
func (c *Client) DrillNode(ctx context.Context, hold time.Duration, force bool) (drill.Result, error) {
	return c.drill(ctx, "/v1/drills/node", hold, force)
}

func (c *Client) drill(ctx context.Context, path string, hold time.Duration, force bool) (drill.Result, error) {
	q := url.Values{}
	if hold != 0 {
		q.Set("for", hold.String())
	}
	if force {
		q.Set("force", "true")
	}
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var out drill.Result
	if err := c.do(ctx, http.MethodPost, path, &out); err != nil {
		return out, fmt.Errorf("drill: %w", err)
	}
	return out, nil
}

// Drills is GET /v1/drills: the last drill results and the drills running.
func (c *Client) Drills(ctx context.Context) (api.Drills, error) {
	var out api.Drills
	return out, c.do(ctx, http.MethodGet, "/v1/drills", &out)
}
