// Package api serves keepbitd's control API: JSON over HTTP on a Unix
// socket that only root can open. keepbitctl is its client.
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"path/filepath"
	"strconv"
	"time"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/internal/control"
	"github.com/keepbit/keepbit/internal/ownership"
	"github.com/keepbit/keepbit/internal/recorder"
	"github.com/keepbit/keepbit/loader"
	"github.com/keepbit/keepbit/vip/vrrp"
)

// Controller is what the API asks of the controller (*control.Controller):
// never the dataplane itself.
type Controller interface {
	Generation() int
	Interfaces() []string
	Status() []control.ServiceStatus
	// Counters reads every dataplane's counters once.
	Counters() control.Counters
	// Flows returns the limit flows with the most packets, most first.
	Flows(limit int) ([]loader.Flow, error)
	SetAdmin(service string, addr netip.Addr, a control.Admin) error
	Live(service string, addr netip.Addr, idle time.Duration) (flows int, packets uint64, err error)
}

// Daemon is what the API needs from keepbitd.
type Daemon struct {
	Control Controller
	// VRRP is the status of the VRRP instances (nil: none run).
	VRRP VRRPStatus
	// BGP is the BGP owner (nil: none; see bgp.go).
	BGP BGPOwner
	// FlowShare is flow sharing (nil: none; see flowshare.go).
	FlowShare FlowShareOwner
	// Drills runs drills and keeps their results (nil: none; drill.go).
	Drills DrillRunner
	Events *recorder.Recorder
	// Reload re-reads the config file and applies it; a bad file changes
	// nothing and its error is returned.
	Reload func(ctx context.Context) error
	// Diff parses a candidate config (name for its error messages, with
	// the daemon's command-line overrides) and lists what a reload of it
	// would change; nil answers 501.
	Diff    func(name string, body []byte) ([]config.Change, error)
	Started time.Time
	Log     *slog.Logger
}

// Status is GET /v1/status.
type Status struct {
	Generation int       `json:"generation"`
	Interfaces []string  `json:"interfaces"`
	Services   int       `json:"services"`
	Started    time.Time `json:"started"`
}

// Counter is a packet and byte count.
type Counter struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// Backend is one backend in GET /v1/services: the controller's status
// printed (states as words).
type Backend struct {
	Address string    `json:"address"`
	MAC     string    `json:"mac"`
	Weight  uint32    `json:"weight"`
	Group   uint8     `json:"group"`
	Health  string    `json:"health"` // unknown, up, down
	State   string    `json:"state"`  // down, up, draining
	Admin   string    `json:"admin,omitempty"`
	Reason  string    `json:"reason"`
	Since   time.Time `json:"since"`
	// Predict: predictive detection (predict.go); absent when the service
	// has no predictive section.
	Predict *Prediction `json:"predict,omitempty"`
	// Passive: passive detection (passive.go); absent when the service
	// has no passive section.
	Passive *Passivity `json:"passive,omitempty"`
}

// ServiceStatus is a service and its backends in GET /v1/services.
type ServiceStatus struct {
	Name      string    `json:"name"`
	Key       string    `json:"key"`
	Interface string    `json:"interface"`
	Backends  []Backend `json:"backends"`
}

// Service is GET /v1/services: status plus dataplane counters.
type Service struct {
	ServiceStatus
	Counters Counter            `json:"counters"`
	Backends map[string]Counter `json:"backend_counters"`
}

func serviceStatus(ss control.ServiceStatus) ServiceStatus {
	out := ServiceStatus{Name: ss.Name, Key: ss.Key.String(), Interface: ss.Interface}
	for _, b := range ss.Backends {
		mac := ""
		if b.MAC != nil {
			mac = b.MAC.String()
		}
		out.Backends = append(out.Backends, Backend{Address: b.Address.String(), MAC: mac, Weight: b.Weight, Group: b.Group,
			Health: b.Health.String(), State: b.State.String(), Admin: string(b.Admin), Reason: b.Reason, Since: b.Since, Predict: prediction(b.Predict), Passive: passivity(b.Passive)})
	}
	return out
}

// Flow is GET /v1/flows.
type Flow struct {
	Client   string        `json:"client"`
	VIP      string        `json:"vip"`
	Proto    string        `json:"proto"`
	Backend  string        `json:"backend"`
	Packets  uint64        `json:"packets"`
	Bytes    uint64        `json:"bytes"`
	LastSeen time.Duration `json:"last_seen"`
}

// VRRPStatus is the VRRP owner's status (*ownership.VRRP).
type VRRPStatus interface {
	Status() []ownership.VRRPStatus
}

// VIP is one VRRP instance in GET /v1/vip.
type VIP struct {
	Name         string    `json:"name"`
	VRID         uint8     `json:"vrid"`
	Interface    string    `json:"interface"`
	VIPs         []string  `json:"vips"`
	State        string    `json:"state"`
	Priority     uint8     `json:"priority"`
	BasePriority uint8     `json:"base_priority"`
	Master       string    `json:"master,omitempty"`
	Since        time.Time `json:"since,omitzero"`
	Reason       string    `json:"reason,omitempty"`
	Tracking     string    `json:"tracking,omitempty"`
	// Received advertisements by what happened to them.
	Received vrrp.Counters `json:"received"`
}

// vips prints the VRRP instances' typed status for the wire.
func vips(src VRRPStatus) []VIP {
	if src == nil {
		return nil
	}
	var out []VIP
	for _, v := range src.Status() {
		w := VIP{Name: v.Name, VRID: v.VRID, Interface: v.Interface, State: v.State.String(), Priority: v.Priority,
			BasePriority: v.BasePriority, Since: v.Since, Reason: v.Reason, Tracking: v.Tracking, Received: v.Received}
		for _, a := range v.VIPs {
			w.VIPs = append(w.VIPs, a.String())
		}
		if v.Master.IsValid() {
			w.Master = v.Master.String()
		}
		out = append(out, w)
	}
	return out
}

// Live is GET /v1/services/{service}/backends/{addr}/live.
type Live struct {
	Flows   int    `json:"flows"`
	Packets uint64 `json:"packets"`
}

// server answers the routes for a Daemon through ctl.
type server struct {
	d   *Daemon
	ctl Controller
}

// Handler returns the API's routes.
func (d *Daemon) Handler() http.Handler {
	return (&server{d: d, ctl: d.Control}).routes()
}

func (s *server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", s.status)
	mux.HandleFunc("GET /v1/services", s.services)
	mux.HandleFunc("GET /v1/events", s.events)
	mux.HandleFunc("GET /v1/flows", s.flows)
	mux.HandleFunc("GET /v1/vip", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, vips(s.d.VRRP)) })
	mux.HandleFunc("POST /v1/reload", s.reload)
	mux.HandleFunc("POST /v1/check-config", s.checkConfig)
	mux.HandleFunc("POST /v1/diff", s.diff)
	mux.HandleFunc("POST /v1/services/{service}/backends/{addr}/{action}", s.admin)
	mux.HandleFunc("GET /v1/services/{service}/backends/{addr}/live", s.live)
	s.bgpRoutes(mux)
	s.flowShareRoutes(mux)
	s.drillRoutes(mux)
	return mux
}

// Serve listens on socket until ctx ends. The socket is 0600 from the
// moment its name exists and its directory 0700 (see listenSocket).
func (d *Daemon) Serve(ctx context.Context, socket string) error {
	ln, narrowed, err := listenSocket(socket)
	if err != nil {
		return err
	}
	if narrowed && d.Log != nil {
		d.Log.Warn("api socket directory was open to others; narrowed it to 0700", "directory", filepath.Dir(socket))
	}
	defer ln.Close()
	srv := &http.Server{Handler: d.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func fail(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, map[string]string{"error": err.Error()})
}

func (s *server) status(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, Status{Generation: s.ctl.Generation(), Interfaces: s.ctl.Interfaces(),
		Services: len(s.ctl.Status()), Started: s.d.Started})
}

// services answers each service's status and counters; the counters of
// every dataplane are read once for the whole answer.
func (s *server) services(w http.ResponseWriter, r *http.Request) {
	counters := s.ctl.Counters()
	out := []Service{}
	for _, ss := range s.ctl.Status() {
		svc := Service{ServiceStatus: serviceStatus(ss), Backends: map[string]Counter{}}
		if sc, ok := counters.Services[ss.Name]; ok {
			svc.Counters = Counter(sc.Service)
			for addr, c := range sc.Backends {
				svc.Backends[addr.String()] = Counter(c)
			}
		}
		out = append(out, svc)
	}
	writeJSON(w, http.StatusOK, out)
}

// events streams JSON lines; with follow=1 it waits for new events until
// the client goes away.
func (s *server) events(w http.ResponseWriter, r *http.Request) {
	after, err := strconv.ParseUint(r.URL.Query().Get("after"), 10, 64)
	if r.URL.Query().Get("after") != "" && err != nil {
		fail(w, http.StatusBadRequest, fmt.Errorf("after: %q is not an event number", r.URL.Query().Get("after")))
		return
	}
	follow := r.URL.Query().Get("follow") == "1"
	w.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(w)
	flusher, _ := w.(http.Flusher)
	evs := s.d.Events.Since(after)
	for {
		for _, e := range evs {
			if err := enc.Encode(e); err != nil {
				return
			}
			after = e.Seq
		}
		if flusher != nil {
			flusher.Flush()
		}
		if !follow {
			return
		}
		if evs, err = s.d.Events.Wait(r.Context(), after); err != nil {
			return
		}
	}
}

// flows returns the top limit flows over all dataplanes, most packets
// first.
func (s *server) flows(w http.ResponseWriter, r *http.Request) {
	limit := 20
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			fail(w, http.StatusBadRequest, fmt.Errorf("limit: %q is not a positive number", v))
			return
		}
		limit = n
	}
	top, err := s.ctl.Flows(limit)
	if err != nil {
		fail(w, http.StatusInternalServerError, err)
		return
	}
	out := []Flow{}
	for _, f := range top {
		backend := ""
		if f.Backend.IsValid() {
			backend = f.Backend.String()
		}
		out = append(out, Flow{Client: f.Client.String(), VIP: f.VIP.String(), Proto: f.Proto.String(), Backend: backend,
			Packets: f.Packets, Bytes: f.Bytes, LastSeen: f.LastSeen})
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *server) reload(w http.ResponseWriter, r *http.Request) {
	if err := s.d.Reload(r.Context()); err != nil {
		fail(w, http.StatusUnprocessableEntity, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]int{"generation": s.ctl.Generation()})
}

func (s *server) checkConfig(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 16<<20))
	if err != nil {
		fail(w, http.StatusBadRequest, err)
		return
	}
	name := r.URL.Query().Get("name")
	if name == "" {
		name = "<request>"
	}
	cfg, err := config.Parse(name, body)
	if err != nil {
		fail(w, http.StatusUnprocessableEntity, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]int{"interfaces": len(cfg.Interfaces), "services": len(cfg.Services)})
}

// Diff is POST /v1/diff: what a reload of the posted config would change.
type Diff struct {
	Changes []config.Change `json:"changes"`
}

func (s *server) diff(w http.ResponseWriter, r *http.Request) {
	if s.d.Diff == nil {
		fail(w, http.StatusNotImplemented, errors.New("this daemon cannot diff configs"))
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 16<<20))
	if err != nil {
		fail(w, http.StatusBadRequest, err)
		return
	}
	name := r.URL.Query().Get("name")
	if name == "" {
		name = "<request>"
	}
	changes, err := s.d.Diff(name, body)
	if err != nil {
		fail(w, http.StatusUnprocessableEntity, err)
		return
	}
	if changes == nil {
		changes = []config.Change{}
	}
	writeJSON(w, http.StatusOK, Diff{Changes: changes})
}

func backendOf(w http.ResponseWriter, r *http.Request) (string, netip.Addr, bool) {
	addr, err := netip.ParseAddr(r.PathValue("addr"))
	if err != nil {
		fail(w, http.StatusBadRequest, fmt.Errorf("backend: %q is not an address", r.PathValue("addr")))
		return "", netip.Addr{}, false
	}
	return r.PathValue("service"), addr, true
}

// statusOf answers 404 for a service or backend the config does not have,
// and 500 when the call was understood but could not be carried out (an
// override applied but not saved, a failed dataplane write or read).
func statusOf(err error) int {
	if errors.Is(err, control.ErrNotConfigured) {
		return http.StatusNotFound
	}
	return http.StatusInternalServerError
}

func (s *server) admin(w http.ResponseWriter, r *http.Request) {
	svc, addr, ok := backendOf(w, r)
	if !ok {
		return
	}
	a, known := map[string]control.Admin{"drain": control.Draining, "enable": control.Enabled, "disable": control.Disabled}[r.PathValue("action")]
	if !known {
		fail(w, http.StatusNotFound, fmt.Errorf("action %q: want drain, enable or disable", r.PathValue("action")))
		return
	}
	if err := s.ctl.SetAdmin(svc, addr, a); err != nil {
		fail(w, statusOf(err), err)
		return
	}
	s.d.Log.Info("operator action", "action", r.PathValue("action"), "service", svc, "backend", addr)
	writeJSON(w, http.StatusOK, map[string]string{"service": svc, "backend": addr.String(), "action": r.PathValue("action")})
}

func (s *server) live(w http.ResponseWriter, r *http.Request) {
	svc, addr, ok := backendOf(w, r)
	if !ok {
		return
	}
	idle := 10 * time.Second
	if v := r.URL.Query().Get("idle"); v != "" {
		dur, err := time.ParseDuration(v)
		if err != nil || dur <= 0 {
			fail(w, http.StatusBadRequest, fmt.Errorf("idle: %q is not a positive duration", v))
			return
		}
		idle = dur
	}
	flows, packets, err := s.ctl.Live(svc, addr, idle)
	if err != nil {
		fail(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, Live{Flows: flows, Packets: packets})
}
