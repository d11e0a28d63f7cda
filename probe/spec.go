// Package probe asks backends whether they are alive. It knows nothing of
// services or the dataplane: checks go in, timestamped results and
// up/down events come out.
package probe

import (
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Kind is the type of a health check.
type Kind string

const (
	TCP Kind = "tcp" // connect succeeds
	// TCPHalfOpen: a SYN answered by a SYN-ACK, from a raw socket; the
	// backend's application never sees a connection (needs CAP_NET_RAW).
	TCPHalfOpen Kind = "tcp-half-open"
	HTTP        Kind = "http"  // request answered with an expected status (and body)
	HTTPS       Kind = "https" // same over TLS, certificate verified by default
	UDP         Kind = "udp"   // payload sent, reply containing the expected text
	ICMP        Kind = "icmp"  // echo request answered (ICMPv6 for IPv6 targets)
	Exec        Kind = "exec"  // command exits 0
)

// Spec describes one health check.
type Spec struct {
	Kind Kind
	// Target is the address probed; the port is unused for icmp and exec.
	Target netip.AddrPort
	// Interval between probes while the state is settled.
	Interval time.Duration
	// FastInterval is used while a change is pending (some but not enough
	// consecutive results against the current state). 0 = Interval.
	FastInterval time.Duration
	// Timeout bounds one probe; it must be shorter than the interval.
	Timeout time.Duration
	// Rise and Fall are the consecutive successes / failures that change
	// the state.
	Rise, Fall int
	// Jitter spreads probes by up to this fraction of the interval (0-0.5)
	// so that many checks do not fire in bursts.
	Jitter float64
	// Source and Interface pin the probe's source address / egress device.
	Source    netip.Addr
	Interface string

	// HTTP and HTTPS.
	Method       string // default GET
	Path         string // default /
	Host         string // Host header and TLS server name; default the target address
	ExpectStatus []int  // default 200-399
	ExpectBody   string // substring the body must contain
	CAFile       string // PEM bundle to verify the server with; default system roots
	TLSNoVerify  bool   // skip certificate verification (not the default)

	// UDP.
	Payload     []byte
	ExpectReply string

	// Exec: the command runs with the target in KEEPBIT_TARGET_ADDR and
	// KEEPBIT_TARGET_PORT in addition to Env.
	Command string
	Args    []string
	Env     []string
}

// Validate checks s; errors name the field.
func (s *Spec) Validate() error {
	switch s.Kind {
	case TCP, TCPHalfOpen, HTTP, HTTPS, UDP:
		if !s.Target.Addr().IsValid() || s.Target.Port() == 0 {
			return fmt.Errorf("target: %s needs address:port", s.Kind)
		}
	case ICMP:
		if !s.Target.Addr().IsValid() {
			return errors.New("target: icmp needs an address")
		}
	case Exec:
		if s.Command == "" {
			return errors.New("command: required for exec checks")
		}
	case "":
		return errors.New("type: required (tcp, tcp-half-open, http, https, udp, icmp, exec)")
	default:
		return fmt.Errorf("type: %q is not tcp, tcp-half-open, http, https, udp, icmp or exec", s.Kind)
	}
	switch {
	case s.Interval < time.Millisecond:
		return fmt.Errorf("interval: %v, must be at least 1ms", s.Interval)
	case s.FastInterval != 0 && s.FastInterval < time.Millisecond:
		return fmt.Errorf("fast_interval: %v, must be at least 1ms", s.FastInterval)
	case s.Timeout <= 0:
		return fmt.Errorf("timeout: %v, must be positive", s.Timeout)
	case s.Timeout > s.Interval:
		return fmt.Errorf("timeout: %v is longer than the interval %v", s.Timeout, s.Interval)
	case s.Rise < 1:
		return fmt.Errorf("rise: %d, must be at least 1", s.Rise)
	case s.Fall < 1:
		return fmt.Errorf("fall: %d, must be at least 1", s.Fall)
	case s.Jitter < 0 || s.Jitter > 0.5:
		return fmt.Errorf("jitter: %v, must be between 0 and 0.5", s.Jitter)
	}
	if s.Kind != Exec && s.Source.IsValid() && s.Target.Addr().IsValid() && s.Source.Unmap().Is4() != s.Target.Addr().Unmap().Is4() {
		return fmt.Errorf("source: %s and the target %s are of different address families", s.Source, s.Target.Addr())
	}
	for _, c := range s.ExpectStatus {
		if c < 100 || c > 599 {
			return fmt.Errorf("expect_status: %d is not an HTTP status", c)
		}
	}
	if (s.Kind == UDP) && len(s.Payload) == 0 {
		return errors.New("payload: required for udp checks")
	}
	return nil
}
