package ownership

import (
	"context"
	"io"
	"log/slog"
	"sync"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/internal/recorder"
)

func testOwner(ctx context.Context, events int, runs map[string]*vrrpRun) *VRRP {
	o := NewVRRP(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), recorder.New(events), newFakeHealth(), &fakeNotifier{})
	for name, r := range runs {
		o.runs[name] = r
		o.order = append(o.order, name)
	}
	return o
}

// fakeHealth answers from a map and counts what it is asked.
type fakeHealth struct {
	mu      sync.Mutex
	up      map[string]bool
	rising  map[string]bool
	dpErr   error
	asked   map[string]int
	changed chan struct{}
}

func newFakeHealth() *fakeHealth {
	return &fakeHealth{up: map[string]bool{}, rising: map[string]bool{}, asked: map[string]int{}, changed: make(chan struct{})}
}

func (f *fakeHealth) ServiceUp(name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked[name]++
	return f.up[name]
}

func (f *fakeHealth) ServiceRising(name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rising[name]
}

func (f *fakeHealth) DataplaneUp(string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.dpErr
}

func (f *fakeHealth) Changed() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}

// set changes a service's health and signals it, as the controller does.
func (f *fakeHealth) set(name string, up bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.up[name] = up
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fakeHealth) askedOf(name string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.asked[name]
}

type fakeNotifier struct {
	mu  sync.Mutex
	ran []recorder.Event
}

func (f *fakeNotifier) RunNotify(_ config.Notify, e recorder.Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ran = append(f.ran, e)
}
