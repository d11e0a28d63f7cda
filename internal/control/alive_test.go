package control

import (
	"context"
	"testing"
	"time"
)

// TestAlive: the watchdog's liveness check is answered only while Run's
// loop turns: not before it starts, not after it ends.
func TestAlive(t *testing.T) {
	l := newCtlLab(t)
	c := l.start(l.config(`  - name: web
    vip: 10.99.0.1
    port: 80
    backends:
      - {address: 10.0.0.1, mac: "02:00:00:00:00:01"}
`))
	alive := func(within time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), within)
		defer cancel()
		return c.Alive(ctx)
	}
	if err := alive(50 * time.Millisecond); err == nil {
		t.Fatal("Alive answered before Run started")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	for i := 0; i < 3; i++ {
		if err := alive(10 * time.Second); err != nil {
			t.Fatalf("Alive while Run turns: %v", err)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := alive(50 * time.Millisecond); err == nil {
		t.Fatal("Alive answered after Run ended")
	}
}
