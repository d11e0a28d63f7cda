package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/keepbit/keepbit/internal/ownership"
)

// BGPOwner is what the API asks of the BGP owner (*ownership.BGP).
type BGPOwner interface {
	Status() ownership.BGPStatus
	// Drain withdraws every route and closes the sessions after hold (0:
	// never; negative: bgp.drain_hold).
	Drain(ctx context.Context, why string, hold time.Duration) (ownership.DrainInfo, error)
	Undrain(ctx context.Context) error
}

// BGP is GET /v1/bgp.
type BGP struct {
	Configured      bool         `json:"configured"`
	ASN             uint32       `json:"asn,omitempty"`
	RouterID        string       `json:"router_id,omitempty"`
	Draining        bool         `json:"draining"`
	DrainReason     string       `json:"drain_reason,omitempty"`
	DrainSince      time.Time    `json:"drain_since,omitzero"`
	SessionsCloseAt time.Time    `json:"sessions_close_at,omitzero"`
	SessionsClosed  bool         `json:"sessions_closed,omitempty"`
	Sessions        []BGPSession `json:"sessions"`
	Routes          []BGPRoute   `json:"routes"`
}

// BGPSession is one BGP session (and its BFD session) in GET /v1/bgp.
type BGPSession struct {
	Peer        string        `json:"peer"`
	ASN         uint32        `json:"asn"`
	State       string        `json:"state"`
	Since       time.Time     `json:"since,omitzero"`
	Uptime      time.Duration `json:"uptime"`
	AdminDown   bool          `json:"admin_down,omitempty"`
	Reason      string        `json:"reason,omitempty"`
	RoutesSent  int           `json:"routes_sent"`
	Transitions uint64        `json:"transitions"`
	Established uint64        `json:"established"`
	BFD         *BFDSession   `json:"bfd,omitempty"`
}

// BFDSession is a peer's BFD session in GET /v1/bgp.
type BFDSession struct {
	State       string        `json:"state"`
	RemoteState string        `json:"remote_state"`
	Diag        string        `json:"diag"`
	Local       string        `json:"local,omitempty"`
	Interface   string        `json:"interface,omitempty"`
	Since       time.Time     `json:"since,omitzero"`
	Changes     uint64        `json:"changes"`
	DetectTime  time.Duration `json:"detect_time"`
	Error       string        `json:"error,omitempty"`
}

// BGPRoute is one VIP's route in GET /v1/bgp.
type BGPRoute struct {
	Prefix    string    `json:"prefix"`
	Announced bool      `json:"announced"`
	Reason    string    `json:"reason,omitempty"`
	Since     time.Time `json:"since,omitzero"`
	Until     time.Time `json:"until,omitzero"`
	Services  []string  `json:"services"`
}

// Drain is POST /v1/bgp/drain.
type Drain struct {
	Withdrawn       int       `json:"withdrawn"`
	SessionsCloseAt time.Time `json:"sessions_close_at,omitzero"`
}

// bgpStatus prints the owner's typed status for the wire.
func bgpStatus(src BGPOwner) BGP {
	out := BGP{Sessions: []BGPSession{}, Routes: []BGPRoute{}}
	if src == nil {
		return out
	}
	st := src.Status()
	if !st.Configured {
		return out
	}
	out.Configured, out.ASN, out.RouterID = true, st.ASN, st.RouterID.String()
	out.Draining, out.DrainReason, out.DrainSince, out.SessionsCloseAt, out.SessionsClosed =
		st.Draining, st.DrainReason, st.DrainSince, st.SessionsCloseAt, st.SessionsClosed
	for _, s := range st.Sessions {
		w := BGPSession{Peer: s.Address.String(), ASN: s.ASN, State: string(s.State), Since: s.Since, Uptime: s.Uptime,
			AdminDown: s.AdminDown, Reason: s.Reason, RoutesSent: s.RoutesSent, Transitions: s.Transitions, Established: s.Established}
		if b := s.BFD; b != nil {
			w.BFD = &BFDSession{State: b.State.String(), RemoteState: b.RemoteState.String(), Diag: b.Diag.String(),
				Interface: b.Interface, Since: b.Since, Changes: b.Changes, DetectTime: b.DetectTime, Error: b.Error}
			if b.Local.IsValid() {
				w.BFD.Local = b.Local.String()
			}
		}
		out.Sessions = append(out.Sessions, w)
	}
	for _, r := range st.Routes {
		out.Routes = append(out.Routes, BGPRoute{Prefix: r.Prefix.String(), Announced: r.Announced, Reason: r.Reason,
			Since: r.Since, Until: r.Until, Services: r.Services})
	}
	return out
}

// bgpRoutes adds the BGP routes to mux.
func (s *server) bgpRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/bgp", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, bgpStatus(s.d.BGP)) })
	mux.HandleFunc("POST /v1/bgp/drain", s.drainNode)
	mux.HandleFunc("POST /v1/bgp/undrain", s.undrainNode)
}

// bgpError: 409 when there is no BGP to drain.
func bgpError(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	if errors.Is(err, ownership.ErrNotConfigured) {
		code = http.StatusConflict
	}
	fail(w, code, err)
}

// maxDrainHold bounds drain-node's hold.
const maxDrainHold = 24 * time.Hour

func (s *server) drainNode(w http.ResponseWriter, r *http.Request) {
	if s.d.BGP == nil {
		bgpError(w, ownership.ErrNotConfigured)
		return
	}
	hold := time.Duration(-1) // bgp.drain_hold
	if v := r.URL.Query().Get("hold"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			fail(w, http.StatusBadRequest, fmt.Errorf("hold: %q is not a duration of 0 or more", v))
			return
		}
		// A longer hold is a typo more likely than a plan; 0 keeps the
		// sessions for good.
		if d > maxDrainHold {
			fail(w, http.StatusBadRequest, fmt.Errorf("hold: %s is more than %s (0 keeps the sessions until undrain)", d, maxDrainHold))
			return
		}
		hold = d
	}
	info, err := s.d.BGP.Drain(r.Context(), "drain-node", hold)
	if err != nil {
		bgpError(w, err)
		return
	}
	if s.d.Log != nil {
		s.d.Log.Info("operator action", "action", "drain-node", "withdrawn", info.Withdrawn, "sessions_close_at", info.CloseAt)
	}
	writeJSON(w, http.StatusOK, Drain{Withdrawn: info.Withdrawn, SessionsCloseAt: info.CloseAt})
}

func (s *server) undrainNode(w http.ResponseWriter, r *http.Request) {
	if s.d.BGP == nil {
		bgpError(w, ownership.ErrNotConfigured)
		return
	}
	if err := s.d.BGP.Undrain(r.Context()); err != nil {
		bgpError(w, err)
		return
	}
	if s.d.Log != nil {
		s.d.Log.Info("operator action", "action", "undrain")
	}
	writeJSON(w, http.StatusOK, map[string]bool{"draining": false})
}
