package connload

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Config describes the load.
type Config struct {
	// Target is the service's "VIP:port".
	Target string
	// Dial opens connections; nil uses a net.Dialer. To dial from a lab
	// namespace use lab.DialContext(ns, timeout).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Conns is the number of long-lived connections.
	Conns int
	// Interval between sequence numbers on each long-lived connection
	// (default 10ms).
	Interval time.Duration
	// Rate is new (one request) connections per second; 0: none.
	Rate float64
	// Stall: a long-lived connection whose echoes stop for this long is
	// broken (default 5s). TCP would retransmit for minutes; a client
	// that waited as long has failed long before.
	Stall time.Duration
	// Timeout bounds each dial and a new connection's whole exchange
	// (default 2s).
	Timeout time.Duration
	// OnNew, when set, is told of every new connection as it ends: when
	// it was opened, when it ended, the backend that answered ("" when
	// it failed). It is called from the stream's goroutines, concurrently.
	OnNew func(start, end time.Time, backend string)
}

// Cause is why a connection broke.
type Cause string

const (
	Reset    Cause = "reset"           // RST: a node or backend without the connection answered it
	Stalled  Cause = "stalled"         // no echo for Config.Stall: the path blackholes it
	Moved    Cause = "backend changed" // another backend answered mid-connection
	Closed   Cause = "closed"          // the backend closed it (EOF)
	BadReply Cause = "bad reply"       // an answer out of sequence or unreadable
	Refused  Cause = "refused"         // dial refused (new connections)
	Timeout  Cause = "timeout"         // dial or answer too late (new connections)
	Failed   Cause = "error"           // any other error
)

// Conn is what happened to one long-lived connection.
type Conn struct {
	Local    string        // client address:port (the flow, as the nodes see it)
	Backends []string      // backends that answered, in order; more than one means it moved
	Echoes   uint64        // answers received
	MaxGap   time.Duration // longest time between consecutive answers (since the last ResetGaps)
	Broken   Cause         // "" while it works (or when Stop closed it)
	Err      string        // the error that broke it
	BrokenAt time.Time
}

// Backend is the backend that answered first ("" before any answer).
func (c Conn) Backend() string {
	if len(c.Backends) == 0 {
		return ""
	}
	return c.Backends[0]
}

// Load runs the long-lived connections and the new-connection stream.
type Load struct {
	cfg    Config
	cancel context.CancelFunc
	wg     sync.WaitGroup
	start  time.Time

	mu    sync.Mutex
	conns []*conn
	news  NewConns
}

// NewConns sums up the new-connection stream.
type NewConns struct {
	Attempts  int
	OK        int
	Failed    map[Cause]int
	ByBackend map[string]int
	// Errors holds the first error of each cause, for failure messages.
	Errors map[Cause]string
}

type conn struct {
	c net.Conn

	mu       sync.Mutex // guards st, lastEcho
	st       Conn
	lastEcho time.Time
	done     bool // broken or stopped: later errors are consequences
}

// Start dials cfg.Conns long-lived connections (all must connect and get
// a first answer within cfg.Timeout, or Start fails) and then starts the
// sequence numbers and the new-connection stream. They run until Stop or
// until ctx ends.
func Start(ctx context.Context, cfg Config) (*Load, error) {
	if cfg.Interval <= 0 {
		cfg.Interval = 10 * time.Millisecond
	}
	if cfg.Stall <= 0 {
		cfg.Stall = 5 * time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	if cfg.Dial == nil {
		d := &net.Dialer{Timeout: cfg.Timeout}
		cfg.Dial = d.DialContext
	}
	ctx, cancel := context.WithCancel(ctx)
	l := &Load{cfg: cfg, cancel: cancel, start: time.Now(),
		news: NewConns{Failed: map[Cause]int{}, ByBackend: map[string]int{}, Errors: map[Cause]string{}}}
	for i := range cfg.Conns {
		c, err := l.open(ctx)
		if err != nil {
			l.Stop()
			return nil, fmt.Errorf("long-lived connection %d of %d: %w", i+1, cfg.Conns, err)
		}
		l.conns = append(l.conns, c)
	}
	// Gaps count from now: the first connections waited for the others.
	now := time.Now()
	for _, c := range l.conns {
		c.lastEcho = now
		l.wg.Add(2)
		go l.send(ctx, c)
		go l.receive(c)
	}
	if cfg.Rate > 0 {
		l.wg.Add(1)
		go l.stream(ctx)
	}
	context.AfterFunc(ctx, func() { l.closeAll() })
	return l, nil
}

// open dials a long-lived connection and waits for its first answer.
func (l *Load) open(ctx context.Context) (*conn, error) {
	dctx, cancel := context.WithTimeout(ctx, l.cfg.Timeout)
	defer cancel()
	nc, err := l.cfg.Dial(dctx, "tcp", l.cfg.Target)
	if err != nil {
		return nil, err
	}
	_ = nc.SetDeadline(time.Now().Add(l.cfg.Timeout))
	id, err := exchange(nc, bufio.NewReader(nc), 0)
	if err != nil {
		nc.Close()
		return nil, err
	}
	_ = nc.SetDeadline(time.Time{})
	c := &conn{c: nc, lastEcho: time.Now()}
	c.st = Conn{Local: nc.LocalAddr().String(), Backends: []string{id}, Echoes: 1}
	return c, nil
}

// exchange sends seq and reads its answer on a fresh connection.
func exchange(nc net.Conn, r *bufio.Reader, seq uint64) (string, error) {
	if _, err := fmt.Fprintf(nc, "%d\n", seq); err != nil {
		return "", err
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	got, id, err := parseAnswer(line)
	if err != nil {
		return "", err
	}
	if got != seq {
		return "", fmt.Errorf("answer for %d, want %d", got, seq)
	}
	return id, nil
}

// parseAnswer reads "<seq> <identity>\n".
func parseAnswer(line string) (uint64, string, error) {
	s, id, ok := strings.Cut(strings.TrimSuffix(line, "\n"), " ")
	if !ok || id == "" {
		return 0, "", fmt.Errorf("answer %q: want \"<seq> <identity>\"", line)
	}
	seq, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, "", fmt.Errorf("answer %q: sequence number: %w", line, err)
	}
	return seq, id, nil
}

// send writes the next sequence number every Interval.
func (l *Load) send(ctx context.Context, c *conn) {
	defer l.wg.Done()
	t := time.NewTicker(l.cfg.Interval)
	defer t.Stop()
	buf := make([]byte, 0, 24)
	for seq := uint64(1); ; seq++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		buf = strconv.AppendUint(buf[:0], seq, 10)
		buf = append(buf, '\n')
		if _, err := c.c.Write(buf); err != nil {
			c.fail(classify(err), err)
			return
		}
		c.mu.Lock()
		done := c.done
		c.mu.Unlock()
		if done {
			return
		}
	}
}

// receive checks every answer: in sequence, same backend, never later
// than Stall after the previous one.
func (l *Load) receive(c *conn) {
	defer l.wg.Done()
	r := bufio.NewReader(c.c)
	want := uint64(1)
	for {
		_ = c.c.SetReadDeadline(time.Now().Add(l.cfg.Stall))
		line, err := r.ReadString('\n')
		now := time.Now()
		if err != nil {
			cause := classify(err)
			if cause == Timeout {
				cause = Stalled
			}
			c.fail(cause, err)
			return
		}
		seq, id, err := parseAnswer(line)
		if err == nil && seq != want {
			err = fmt.Errorf("answer for %d, want %d", seq, want)
		}
		if err != nil {
			c.fail(BadReply, err)
			return
		}
		want++
		c.mu.Lock()
		if gap := now.Sub(c.lastEcho); gap > c.st.MaxGap {
			c.st.MaxGap = gap
		}
		c.lastEcho = now
		c.st.Echoes++
		moved := id != c.st.Backends[len(c.st.Backends)-1]
		if moved {
			c.st.Backends = append(c.st.Backends, id)
		}
		c.mu.Unlock()
		if moved {
			c.fail(Moved, fmt.Errorf("backend %s answered, was %s", id, c.st.Backends[len(c.st.Backends)-2]))
			return
		}
	}
}

// fail records the first reason c broke and closes it.
func (c *conn) fail(cause Cause, err error) {
	c.mu.Lock()
	if c.done {
		c.mu.Unlock()
		return
	}
	c.done = true
	now := time.Now()
	c.st.Broken, c.st.Err, c.st.BrokenAt = cause, err.Error(), now
	// The client went without answers from the last one to the break.
	if gap := now.Sub(c.lastEcho); gap > c.st.MaxGap {
		c.st.MaxGap = gap
	}
	c.mu.Unlock()
	c.c.Close()
}

// classify names the cause of a socket error.
func classify(err error) Cause {
	switch {
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return Reset
	case errors.Is(err, syscall.ECONNREFUSED):
		return Refused
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return Timeout
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return Closed
	}
	return Failed
}

// stream opens Rate new connections per second, one exchange each.
func (l *Load) stream(ctx context.Context) {
	defer l.wg.Done()
	t := time.NewTicker(time.Duration(float64(time.Second) / l.cfg.Rate))
	defer t.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			id, err := l.once(ctx)
			if ctx.Err() != nil {
				return // cut short by Stop: not the network's doing
			}
			if l.cfg.OnNew != nil {
				if err != nil {
					id = ""
				}
				l.cfg.OnNew(start, time.Now(), id)
			}
			l.mu.Lock()
			defer l.mu.Unlock()
			l.news.Attempts++
			if err != nil {
				cause := classify(err)
				l.news.Failed[cause]++
				if _, ok := l.news.Errors[cause]; !ok {
					l.news.Errors[cause] = err.Error()
				}
				return
			}
			l.news.OK++
			l.news.ByBackend[id]++
		}()
	}
}

func (l *Load) once(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, l.cfg.Timeout)
	defer cancel()
	nc, err := l.cfg.Dial(ctx, "tcp", l.cfg.Target)
	if err != nil {
		return "", err
	}
	defer nc.Close()
	deadline, _ := ctx.Deadline()
	_ = nc.SetDeadline(deadline)
	return exchange(nc, bufio.NewReader(nc), 0)
}

// ResetGaps forgets the longest gaps so far: the next Report measures
// from now (e.g. from a failure injected after a warm-up).
func (l *Load) ResetGaps() {
	now := time.Now()
	for _, c := range l.conns {
		c.mu.Lock()
		c.st.MaxGap = 0
		if !c.done {
			// The gap in progress counts from now, not from before.
			c.lastEcho = now
		}
		c.mu.Unlock()
	}
}

// Report is a summary of the load so far.
func (l *Load) Report() Report {
	r := Report{Elapsed: time.Since(l.start), Broken: map[Cause]int{}, ByBackend: map[string]int{}}
	for _, c := range l.conns {
		c.mu.Lock()
		st := c.st
		st.Backends = append([]string(nil), st.Backends...)
		if !c.done {
			// A stall in progress is a gap already.
			if g := time.Since(c.lastEcho); g > st.MaxGap {
				st.MaxGap = g
			}
		}
		c.mu.Unlock()
		r.Conns = append(r.Conns, st)
	}
	l.mu.Lock()
	r.New = NewConns{Attempts: l.news.Attempts, OK: l.news.OK,
		Failed: maps.Clone(l.news.Failed), ByBackend: maps.Clone(l.news.ByBackend), Errors: maps.Clone(l.news.Errors)}
	l.mu.Unlock()
	r.summarize()
	return r
}

// Stop ends the load, closes every connection (not counted as broken) and
// returns the final report.
func (l *Load) Stop() Report {
	l.cancel()
	l.closeAll()
	l.wg.Wait()
	return l.Report()
}

func (l *Load) closeAll() {
	for _, c := range l.conns {
		c.mu.Lock()
		already := c.done
		c.done = true
		c.mu.Unlock()
		if !already {
			c.c.Close()
		}
	}
}
