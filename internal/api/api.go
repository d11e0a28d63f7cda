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
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/internal/control"
	"github.com/keepbit/keepbit/internal/recorder"
)

// Daemon is what the API needs from keepbitd.
type Daemon struct {
	Control *control.Controller
	Events  *recorder.Recorder
	// Reload re-reads the config file and applies it; a bad file changes
	// nothing and its error is returned.
	Reload  func(ctx context.Context) error
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

// Service is GET /v1/services: status plus dataplane counters.
type Service struct {
	control.ServiceStatus
	Counters Counter            `json:"counters"`
	Backends map[string]Counter `json:"backend_counters"`
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

// Live is GET /v1/services/{service}/backends/{addr}/live.
type Live struct {
	Flows   int    `json:"flows"`
	Packets uint64 `json:"packets"`
}

// Handler returns the API's routes.
func (d *Daemon) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", d.status)
	mux.HandleFunc("GET /v1/services", d.services)
	mux.HandleFunc("GET /v1/events", d.events)
	mux.HandleFunc("GET /v1/flows", d.flows)
	mux.HandleFunc("GET /v1/vip", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, d.Control.VIPs()) })
	mux.HandleFunc("POST /v1/reload", d.reload)
	mux.HandleFunc("POST /v1/check-config", d.checkConfig)
	mux.HandleFunc("POST /v1/services/{service}/backends/{addr}/{action}", d.admin)
	mux.HandleFunc("GET /v1/services/{service}/backends/{addr}/live", d.live)
	return mux
}

// Serve listens on socket (mode 0600, directory 0700) until ctx ends.
func (d *Daemon) Serve(ctx context.Context, socket string) error {
	if err := os.MkdirAll(filepath.Dir(socket), 0o700); err != nil {
		return fmt.Errorf("api socket directory: %w", err)
	}
	_ = os.Remove(socket) // a stale socket from a killed daemon
	ln, err := net.Listen("unix", socket)
	if err != nil {
		return fmt.Errorf("api socket: %w", err)
	}
	if err := os.Chmod(socket, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("api socket permissions: %w", err)
	}
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

func (d *Daemon) status(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, Status{Generation: d.Control.Generation(), Interfaces: d.Control.Interfaces(),
		Services: len(d.Control.Status()), Started: d.Started})
}

func (d *Daemon) services(w http.ResponseWriter, r *http.Request) {
	var out []Service
	for _, s := range d.Control.Status() {
		svc := Service{ServiceStatus: s, Backends: map[string]Counter{}}
		if dp, key, ok := d.Control.Dataplane(s.Name); ok {
			if st, err := dp.Stats(); err == nil {
				svc.Counters = Counter(st.Services[key])
				for addr, c := range st.Backends[key] {
					svc.Backends[addr.String()] = Counter(c)
				}
			}
		}
		out = append(out, svc)
	}
	writeJSON(w, http.StatusOK, out)
}

// events streams JSON lines; with follow=1 it waits for new events until
// the client goes away.
func (d *Daemon) events(w http.ResponseWriter, r *http.Request) {
	after, err := strconv.ParseUint(r.URL.Query().Get("after"), 10, 64)
	if r.URL.Query().Get("after") != "" && err != nil {
		fail(w, http.StatusBadRequest, fmt.Errorf("after: %q is not an event number", r.URL.Query().Get("after")))
		return
	}
	follow := r.URL.Query().Get("follow") == "1"
	w.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(w)
	flusher, _ := w.(http.Flusher)
	evs := d.Events.Since(after)
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
		if evs, err = d.Events.Wait(r.Context(), after); err != nil {
			return
		}
	}
}

func (d *Daemon) flows(w http.ResponseWriter, r *http.Request) {
	limit := 20
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			fail(w, http.StatusBadRequest, fmt.Errorf("limit: %q is not a positive number", v))
			return
		}
		limit = n
	}
	var out []Flow
	seen := map[string]bool{}
	for _, s := range d.Control.Status() {
		dp, _, ok := d.Control.Dataplane(s.Name)
		if !ok || seen[s.Interface] {
			continue
		}
		seen[s.Interface] = true
		fl, err := dp.Flows(limit)
		if err != nil {
			fail(w, http.StatusInternalServerError, err)
			return
		}
		for _, f := range fl {
			backend := ""
			if f.Backend.IsValid() {
				backend = f.Backend.String()
			}
			out = append(out, Flow{Client: f.Client.String(), VIP: f.VIP.String(), Proto: f.Proto.String(), Backend: backend,
				Packets: f.Packets, Bytes: f.Bytes, LastSeen: f.LastSeen})
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func (d *Daemon) reload(w http.ResponseWriter, r *http.Request) {
	if err := d.Reload(r.Context()); err != nil {
		fail(w, http.StatusUnprocessableEntity, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]int{"generation": d.Control.Generation()})
}

func (d *Daemon) checkConfig(w http.ResponseWriter, r *http.Request) {
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

func backendOf(w http.ResponseWriter, r *http.Request) (string, netip.Addr, bool) {
	addr, err := netip.ParseAddr(r.PathValue("addr"))
	if err != nil {
		fail(w, http.StatusBadRequest, fmt.Errorf("backend: %q is not an address", r.PathValue("addr")))
		return "", netip.Addr{}, false
	}
	return r.PathValue("service"), addr, true
}

func (d *Daemon) admin(w http.ResponseWriter, r *http.Request) {
	svc, addr, ok := backendOf(w, r)
	if !ok {
		return
	}
	a, known := map[string]control.Admin{"drain": control.Draining, "enable": control.Enabled, "disable": control.Disabled}[r.PathValue("action")]
	if !known {
		fail(w, http.StatusNotFound, fmt.Errorf("action %q: want drain, enable or disable", r.PathValue("action")))
		return
	}
	if err := d.Control.SetAdmin(svc, addr, a); err != nil {
		fail(w, http.StatusNotFound, err)
		return
	}
	d.Log.Info("operator action", "action", r.PathValue("action"), "service", svc, "backend", addr)
	writeJSON(w, http.StatusOK, map[string]string{"service": svc, "backend": addr.String(), "action": r.PathValue("action")})
}

func (d *Daemon) live(w http.ResponseWriter, r *http.Request) {
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
	flows, packets, err := d.Control.Live(svc, addr, idle)
	if err != nil {
		fail(w, http.StatusNotFound, err)
		return
	}
	writeJSON(w, http.StatusOK, Live{Flows: flows, Packets: packets})
}
