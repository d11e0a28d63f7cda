// Package apiclient talks to keepbitd's control API (internal/api) over
// its Unix socket: one method per route, typed results, a context on every
// call, and errors that name the HTTP status and the daemon's message.
// keepbitctl and keepbit-demo use it.
package apiclient

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/keepbit/keepbit/internal/api"
	"github.com/keepbit/keepbit/internal/control"
	"github.com/keepbit/keepbit/internal/recorder"
)

// Client is a connection to one keepbitd.
type Client struct {
	socket string
	http   *http.Client
}

// New returns a client of the daemon listening on socket. Nothing is
// dialled until a call.
func New(socket string) *Client {
	return &Client{socket: socket, http: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		}}}}
}

// WithTimeout bounds every call, reading the answer included, to d: for
// callers that must not wait on a daemon that accepts connections but
// does not run (stopped with SIGSTOP, or wedged). Not for following
// events, which stream for as long as the caller wants.
func (c *Client) WithTimeout(d time.Duration) *Client {
	c.http.Timeout = d
	return c
}

// Error is an answer other than 200 OK.
type Error struct {
	Code    int    // HTTP status code
	Status  string // "404 Not Found"
	Message string // the daemon's {"error": ...}, empty when it sent none
}

func (e *Error) Error() string {
	if e.Message == "" {
		return "keepbitd answered " + e.Status
	}
	return fmt.Sprintf("keepbitd answered %s: %s", e.Status, e.Message)
}

// Status is GET /v1/status.
func (c *Client) Status(ctx context.Context) (api.Status, error) {
	var st api.Status
	return st, c.do(ctx, http.MethodGet, "/v1/status", &st)
}

// Services is GET /v1/services: status and counters of every service.
func (c *Client) Services(ctx context.Context) ([]api.Service, error) {
	var out []api.Service
	return out, c.do(ctx, http.MethodGet, "/v1/services", &out)
}

// Flows is GET /v1/flows: the limit flows with the most packets.
func (c *Client) Flows(ctx context.Context, limit int) ([]api.Flow, error) {
	var out []api.Flow
	return out, c.do(ctx, http.MethodGet, fmt.Sprintf("/v1/flows?limit=%d", limit), &out)
}

// VIPs is GET /v1/vip: the VRRP instances.
func (c *Client) VIPs(ctx context.Context) ([]api.VIP, error) {
	var out []api.VIP
	return out, c.do(ctx, http.MethodGet, "/v1/vip", &out)
}

// Reload is POST /v1/reload; it returns the generation now in force.
func (c *Client) Reload(ctx context.Context) (int, error) {
	var out struct {
		Generation int `json:"generation"`
	}
	return out.Generation, c.do(ctx, http.MethodPost, "/v1/reload", &out)
}

// actions are the API's words for the operator's overrides.
var actions = map[control.Admin]string{control.Draining: "drain", control.Enabled: "enable", control.Disabled: "disable"}

// SetAdmin drains, enables or disables a backend. backend is sent as
// given: the daemon checks it and names it in its error.
func (c *Client) SetAdmin(ctx context.Context, service, backend string, a control.Admin) error {
	action, ok := actions[a]
	if !ok {
		return fmt.Errorf("admin %q: want draining, disabled or enabled", a)
	}
	var out map[string]string
	return c.do(ctx, http.MethodPost, fmt.Sprintf("/v1/services/%s/backends/%s/%s", url.PathEscape(service), url.PathEscape(backend), action), &out)
}

// Live is GET .../live: the backend's flows seen within idle, and its
// packet counter.
func (c *Client) Live(ctx context.Context, service, backend string, idle time.Duration) (api.Live, error) {
	var out api.Live
	path := fmt.Sprintf("/v1/services/%s/backends/%s/live?idle=%s", url.PathEscape(service), url.PathEscape(backend), url.QueryEscape(idle.String()))
	return out, c.do(ctx, http.MethodGet, path, &out)
}

// Events is GET /v1/events: fn gets every event after the given number
// (its JSON line and the event), and with follow every new one until ctx
// ends (then Events returns nil) or fn fails (its error is returned).
func (c *Client) Events(ctx context.Context, after uint64, follow bool, fn func(line []byte, e recorder.Event) error) error {
	path := fmt.Sprintf("/v1/events?after=%d", after)
	if follow {
		path += "&follow=1"
	}
	resp, err := c.send(ctx, http.MethodGet, path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var e recorder.Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return fmt.Errorf("event: %w", err)
		}
		if err := fn(sc.Bytes(), e); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("keepbitd: events: %w", err)
	}
	return nil
}

// do sends a request without a body and decodes the 200 answer into v.
func (c *Client) do(ctx context.Context, method, path string, v any) error {
	resp, err := c.send(ctx, method, path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("keepbitd: %s %s: answer: %w", method, path, err)
	}
	return nil
}

// send returns a 200 answer, or the error the daemon gave.
func (c *Client) send(ctx context.Context, method, path string) (*http.Response, error) {
	return c.sendBody(ctx, method, path, http.NoBody)
}

// sendBody is send with a request body.
func (c *Client) sendBody(ctx context.Context, method, path string, reqBody io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://keepbitd"+path, reqBody)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("keepbitd at %s: %w", c.socket, err)
	}
	if resp.StatusCode == http.StatusOK {
		return resp, nil
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	e := &Error{Code: resp.StatusCode, Status: resp.Status}
	var msg struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(body, &msg) == nil {
		e.Message = msg.Error
	} else {
		e.Message = string(bytes.TrimSpace(body))
	}
	return nil, e
}
