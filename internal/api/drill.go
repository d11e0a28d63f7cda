package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/keepbit/keepbit/internal/control"
	"github.com/keepbit/keepbit/internal/drill"
)

// DrillRunner is what the API asks of the drills (*drill.Drills).
type DrillRunner interface {
	Run(ctx context.Context, req drill.Request) (drill.Result, error)
	History() []drill.Result
	Running() []string
}

// Drills is GET /v1/drills: the kept results, oldest first, and the
// targets being drilled now.
type Drills struct {
	Running []string       `json:"running"`
	Results []drill.Result `json:"results"`
}

// drillRoutes adds the drill routes to mux. A drill answers when it has
// ended (its hold, the return and the watch after it): the report is the
// answer.
func (s *server) drillRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/drills", func(w http.ResponseWriter, r *http.Request) {
		out := Drills{Running: []string{}, Results: []drill.Result{}}
		if s.d.Drills != nil {
			out.Running = append(out.Running, s.d.Drills.Running()...)
			out.Results = append(out.Results, s.d.Drills.History()...)
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("POST /v1/drills/backend/{service}/{addr}", func(w http.ResponseWriter, r *http.Request) {
		svc, addr, ok := backendOf(w, r)
		if !ok {
			return
		}
		s.runDrill(w, r, drill.Request{Kind: drill.Backend, Service: svc, Backend: addr})
	})
	mux.HandleFunc("POST /v1/drills/node", func(w http.ResponseWriter, r *http.Request) {
		s.runDrill(w, r, drill.Request{Kind: drill.Node})
	})
}

func (s *server) runDrill(w http.ResponseWriter, r *http.Request, req drill.Request) {
	if s.d.Drills == nil {
		fail(w, http.StatusConflict, errors.New("drills are not available in this daemon"))
		return
	}
	q := r.URL.Query()
	if v := q.Get("for"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			fail(w, http.StatusBadRequest, fmt.Errorf("for: %q is not a duration like 10s", v))
			return
		}
		if d <= 0 {
			fail(w, http.StatusBadRequest, fmt.Errorf("for: %v: want more than 0", d))
			return
		}
		req.For = d
	}
	if v := q.Get("force"); v != "" {
		f, err := strconv.ParseBool(v)
		if err != nil {
			fail(w, http.StatusBadRequest, fmt.Errorf("force: %q is not true or false", v))
			return
		}
		req.Force = f
	}
	req.Source = "operator"
	if s.d.Log != nil {
		s.d.Log.Info("operator action", "action", "drill", "kind", req.Kind, "service", req.Service, "backend", req.Backend, "for", req.For, "force", req.Force)
	}
	res, err := s.d.Drills.Run(r.Context(), req)
	if err != nil {
		code := http.StatusInternalServerError
		switch {
		case errors.Is(err, drill.ErrInvalid):
			code = http.StatusBadRequest
		case errors.Is(err, drill.ErrRefused):
			code = http.StatusConflict
		case errors.Is(err, control.ErrNotConfigured):
			code = http.StatusNotFound
		}
		fail(w, code, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}
