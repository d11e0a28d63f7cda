package api

import (
	"net/http"
	"time"

	"github.com/keepbit/keepbit/internal/control"
	"github.com/keepbit/keepbit/internal/ownership"
)

// FlowShareOwner is what the API asks of flow sharing: the transport's
// status (*ownership.FlowShare) and the programs' counters
// (*control.Controller).
type FlowShareOwner interface {
	Status() ownership.FlowShareStatus
}

// FlowShareCounters reads the programs' flow-sharing counters.
type FlowShareCounters interface {
	FlowShareCounters() ([]control.InterfaceShareCounters, error)
}

// FlowShare is GET /v1/flowshare.
type FlowShare struct {
	Enabled bool `json:"enabled"`
	Warm    bool `json:"warm"`
	// Warm-up: how long it took, which peers answered with how many flows,
	// and which did not.
	WarmupTook time.Duration     `json:"warmup_took"`
	TimedOut   bool              `json:"warmup_timed_out,omitempty"`
	Peers      []FlowSharePeer   `json:"peers"`
	Missing    []string          `json:"missing,omitempty"`
	Counters   map[string]uint64 `json:"counters"`
	// Dataplane: per interface, the program's reported / report_dropped /
	// shared_hit / shared_stale counters.
	Dataplane map[string]map[string]uint64 `json:"dataplane"`
	Error     string                       `json:"error,omitempty"`
}

// FlowSharePeer is one peer's part in this node's warm-up.
type FlowSharePeer struct {
	Peer     string `json:"peer"`
	Answered bool   `json:"answered"`
	Flows    uint64 `json:"flows"`
}

func flowShareStatus(src FlowShareOwner, dp FlowShareCounters) FlowShare {
	out := FlowShare{Peers: []FlowSharePeer{}, Counters: map[string]uint64{}, Dataplane: map[string]map[string]uint64{}}
	if src == nil {
		return out
	}
	st := src.Status()
	out.Enabled, out.Warm, out.WarmupTook, out.TimedOut = st.Enabled, st.Warm, st.Warmup.Took, st.Warmup.TimedOut
	for _, p := range st.Warmup.Peers {
		out.Peers = append(out.Peers, FlowSharePeer{Peer: p.Peer.String(), Answered: p.Answered, Flows: uint64(p.Flows)})
	}
	for _, m := range st.Warmup.Missing {
		out.Missing = append(out.Missing, m.String())
	}
	n := st.Node
	for k, v := range map[string]uint64{
		"sent_datagrams": n.SentDatagrams, "sent_flows": n.SentFlows, "received_datagrams": n.Received,
		"received_flows": n.ReceivedFlows, "applied_flows": n.AppliedFlows, "skipped_flows": st.Skipped,
		"dropped_queue_full": n.Dropped.QueueFull, "dropped_invalid": n.Dropped.Invalid, "dropped_send_error": n.Dropped.SendError,
		"rejected_truncated": n.Rejected.Truncated, "rejected_malformed": n.Rejected.Malformed, "rejected_version": n.Rejected.Version,
		"rejected_mac": n.Rejected.MAC, "rejected_clock": n.Rejected.Clock, "rejected_replay": n.Rejected.Replay,
		"sync_requests_sent": n.SyncRequestsSent, "sync_requests_received": n.SyncRequestsReceived, "sync_answers": n.SyncAnswers,
	} {
		out.Counters[k] = v
	}
	if dp != nil {
		cs, err := dp.FlowShareCounters()
		if err != nil {
			out.Error = err.Error()
		}
		for _, c := range cs {
			out.Dataplane[c.Interface] = map[string]uint64{"reported": c.Counters.Reported, "report_dropped": c.Counters.ReportDropped,
				"shared_hit": c.Counters.SharedHit, "shared_stale": c.Counters.SharedStale}
		}
	}
	return out
}

// flowShareRoutes adds GET /v1/flowshare to mux.
func (s *server) flowShareRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/flowshare", func(w http.ResponseWriter, r *http.Request) {
		var dp FlowShareCounters
		if c, ok := s.d.Control.(FlowShareCounters); ok {
			dp = c
		}
		writeJSON(w, http.StatusOK, flowShareStatus(s.d.FlowShare, dp))
	})
}
