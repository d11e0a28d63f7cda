package apiclient

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"

	"github.com/keepbit/keepbit/internal/api"
	"github.com/keepbit/keepbit/internal/config"
)

// Diff is POST /v1/diff: what a reload of the config text body (named
// name in error messages) would change in the running daemon.
func (c *Client) Diff(ctx context.Context, name string, body []byte) ([]config.Change, error) {
	resp, err := c.sendBody(ctx, http.MethodPost, "/v1/diff?name="+url.QueryEscape(name), bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var d api.Diff
	if err := json.NewDecoder(resp.Body).Decode(&d); err != nil {
		return nil, fmt.Errorf("keepbitd: diff: answer: %w", err)
	}
	return d.Changes, nil
}
