// Package bfd is Bidirectional Forwarding Detection (RFC 5880) over UDP,
// single hop (RFC 5881), asynchronous mode: it tells the BGP speaker within
// tens of milliseconds that a router next to us (or we, to it) stopped
// forwarding, where BGP's own hold timer takes seconds.
//
// The package has three layers: the control packet codec (this file), the
// per-session state machine on an explicit clock (machine.go), and the UDP
// transport with its session manager (manager.go, socket.go). Demand mode,
// the Echo function and authentication are not implemented: the packets we
// send never set D or A, and packets with A set are refused.
package bfd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Version is the protocol version of RFC 5880.
const Version = 1

// PacketLen is the length of a control packet without an authentication
// section: the only kind we send or accept.
const PacketLen = 24

// State of a session as carried in the Sta field (RFC 5880 section 4.1).
type State uint8

const (
	AdminDown State = iota
	Down
	Init
	Up
)

func (s State) String() string {
	switch s {
	case AdminDown:
		return "admin-down"
	case Down:
		return "down"
	case Init:
		return "init"
	case Up:
		return "up"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// Diag is the diagnostic code: why the sender's session last changed
// state (RFC 5880 section 4.1). Five bits on the wire; 9-31 are reserved
// and passed through as numbers.
type Diag uint8

const (
	DiagNone                  Diag = 0
	DiagDetectionTimeExpired  Diag = 1
	DiagEchoFailed            Diag = 2
	DiagNeighborDown          Diag = 3 // the neighbour signalled session down
	DiagForwardingPlaneReset  Diag = 4
	DiagPathDown              Diag = 5
	DiagConcatenatedPathDown  Diag = 6
	DiagAdminDown             Diag = 7
	DiagReverseConcatPathDown Diag = 8
)

func (d Diag) String() string {
	names := [...]string{"none", "detection-time-expired", "echo-failed", "neighbor-down",
		"forwarding-plane-reset", "path-down", "concatenated-path-down", "admin-down",
		"reverse-concatenated-path-down"}
	if int(d) < len(names) {
		return names[d]
	}
	return fmt.Sprintf("diag(%d)", uint8(d))
}

// Packet is a BFD control packet. Intervals travel in microseconds; they
// are kept as durations here (whole microseconds on the wire: Marshal
// truncates anything finer).
type Packet struct {
	Diag          Diag
	State         State
	Poll          bool // P: the sender asks for a Final (a timer change or a connectivity check)
	Final         bool // F: the sender answers a Poll
	CPIndependent bool // C: the sender's BFD does not share fate with its control plane
	Demand        bool // D: the sender runs Demand mode (we never set it)
	DetectMult    uint8
	MyDiscr       uint32
	YourDiscr     uint32
	DesiredMinTx  time.Duration
	RequiredMinRx time.Duration
	// RequiredMinEchoRx is 0 from us: we do not take Echo packets.
	RequiredMinEchoRx time.Duration
}

// Errors of Unmarshal and Marshal; the returned errors wrap one of these
// and name the field.
var (
	ErrMalformed = errors.New("malformed bfd control packet")
	// ErrAuth: the A bit is set. We run no authentication, and RFC 5880
	// section 6.8.6 discards authenticated packets on such a session.
	ErrAuth = errors.New("bfd authentication is not supported")
)

const (
	bitPoll   = 0x20
	bitFinal  = 0x10
	bitCPI    = 0x08
	bitAuth   = 0x04
	bitDemand = 0x02
	bitMulti  = 0x01

	maxInterval = time.Duration(1<<32-1) * time.Microsecond
)

func malformed(field, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrMalformed, field, fmt.Sprintf(format, args...))
}

// check applies the rules of RFC 5880 section 6.8.6 that a packet must
// pass before any session looks at it, plus the ones this implementation
// adds (no authentication). Marshal checks the same, so everything we
// send is something a receiver like us accepts.
func (p *Packet) check() error {
	switch {
	case p.Diag > 31:
		return malformed("diag", "%d does not fit in 5 bits", p.Diag)
	case p.State > Up:
		return malformed("state", "%d is not a state (0-3)", p.State)
	case p.DetectMult == 0:
		return malformed("detect mult", "zero")
	case p.MyDiscr == 0:
		return malformed("my discriminator", "zero")
	case p.YourDiscr == 0 && p.State != Down && p.State != AdminDown:
		// A sender in Init or Up has heard us and must echo our
		// discriminator.
		return malformed("your discriminator", "zero in state %s", p.State)
	}
	for _, f := range []struct {
		name string
		d    time.Duration
	}{{"desired min tx interval", p.DesiredMinTx}, {"required min rx interval", p.RequiredMinRx}, {"required min echo rx interval", p.RequiredMinEchoRx}} {
		if f.d < 0 || f.d > maxInterval {
			return malformed(f.name, "%v out of 0-%v", f.d, maxInterval)
		}
	}
	return nil
}

// Marshal returns the 24-byte wire form of p, or an error naming the field
// that a receiver would refuse.
func (p *Packet) Marshal() ([]byte, error) {
	return p.AppendMarshal(make([]byte, 0, PacketLen))
}

// AppendMarshal is Marshal appending to b (no allocation when b has room).
func (p *Packet) AppendMarshal(b []byte) ([]byte, error) {
	if err := p.check(); err != nil {
		return b, err
	}
	flags := byte(p.State) << 6
	for _, f := range []struct {
		on  bool
		bit byte
	}{{p.Poll, bitPoll}, {p.Final, bitFinal}, {p.CPIndependent, bitCPI}, {p.Demand, bitDemand}} {
		if f.on {
			flags |= f.bit
		}
	}
	b = append(b, Version<<5|byte(p.Diag), flags, p.DetectMult, PacketLen)
	b = binary.BigEndian.AppendUint32(b, p.MyDiscr)
	b = binary.BigEndian.AppendUint32(b, p.YourDiscr)
	b = binary.BigEndian.AppendUint32(b, uint32(p.DesiredMinTx/time.Microsecond))
	b = binary.BigEndian.AppendUint32(b, uint32(p.RequiredMinRx/time.Microsecond))
	b = binary.BigEndian.AppendUint32(b, uint32(p.RequiredMinEchoRx/time.Microsecond))
	return b, nil
}

// Unmarshal parses the UDP payload b as RFC 5880 section 6.8.6 asks of a
// receiver before session selection: version 1, a Length that covers the
// mandatory section and fits in b, a non-zero Detect Mult and My
// Discriminator, no Multipoint bit, Your Discriminator zero only in Down or
// AdminDown, and no authentication (we use none, so the A bit is refused
// with ErrAuth). Bytes after Length are ignored.
func Unmarshal(b []byte) (Packet, error) {
	if len(b) < PacketLen {
		return Packet{}, malformed("length", "%d bytes, want at least %d", len(b), PacketLen)
	}
	if v := b[0] >> 5; v != Version {
		return Packet{}, malformed("version", "%d, want %d", v, Version)
	}
	flags := b[1]
	length := int(b[3])
	switch {
	case flags&bitAuth != 0:
		// Checked first so that the counter says why, whatever the
		// rest of an authenticated packet looks like.
		return Packet{}, fmt.Errorf("%w: the A bit is set", ErrAuth)
	case length < PacketLen:
		return Packet{}, malformed("length", "field says %d, want at least %d", length, PacketLen)
	case length > len(b):
		return Packet{}, malformed("length", "field says %d, the datagram holds %d", length, len(b))
	case flags&bitMulti != 0:
		return Packet{}, malformed("multipoint", "M bit set")
	}
	us := func(off int) time.Duration {
		return time.Duration(binary.BigEndian.Uint32(b[off:])) * time.Microsecond
	}
	p := Packet{
		Diag:              Diag(b[0] & 0x1f),
		State:             State(flags >> 6),
		Poll:              flags&bitPoll != 0,
		Final:             flags&bitFinal != 0,
		CPIndependent:     flags&bitCPI != 0,
		Demand:            flags&bitDemand != 0,
		DetectMult:        b[2],
		MyDiscr:           binary.BigEndian.Uint32(b[4:]),
		YourDiscr:         binary.BigEndian.Uint32(b[8:]),
		DesiredMinTx:      us(12),
		RequiredMinRx:     us(16),
		RequiredMinEchoRx: us(20),
	}
	if err := p.check(); err != nil {
		return Packet{}, err
	}
	return p, nil
}

// String is a one-line summary for logs and test failures.
func (p Packet) String() string {
	flags := ""
	for _, f := range []struct {
		on   bool
		name string
	}{{p.Poll, "P"}, {p.Final, "F"}, {p.CPIndependent, "C"}, {p.Demand, "D"}} {
		if f.on {
			flags += f.name
		}
	}
	if flags == "" {
		flags = "-"
	}
	return fmt.Sprintf("%s diag=%s %s mult=%d my=%#x your=%#x tx=%v rx=%v echo=%v",
		p.State, p.Diag, flags, p.DetectMult, p.MyDiscr, p.YourDiscr, p.DesiredMinTx, p.RequiredMinRx, p.RequiredMinEchoRx)
}
