package flowshare

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"net/netip"
)

// Wire format, version 1. All integers big-endian.
//
//	header (32 bytes)
//	   0  magic 'K' 'F'
//	   2  version (1)
//	   3  type: 1 flows, 2 sync request, 3 sync end
//	   4  flags: 0x01 snapshot (flows answering a sync request)
//	   5  reserved, 0
//	   6  count: flows in this datagram (0 for sync messages)
//	   8  sender node ID (random per run unless configured)
//	  16  sequence, per sender, starting at 1
//	  24  timestamp, Unix nanoseconds
//	body
//	  flows:        [nonce u64 if snapshot] then count flows
//	  sync request: nonce u64
//	  sync end:     nonce u64, datagrams u32, flows u32 (what the answer held)
//	tag: the first 16 bytes of HMAC-SHA256 over header and body
//
// A flow starts with a tag byte:
//
//	0x01 VIP is IPv6      0x08 same service (proto, port, VIP) as the previous flow: omitted
//	0x02 client is IPv6   0x10 same backend as the previous flow: omitted
//	0x04 backend is IPv6  0xe0 reserved, 0
//
// then [proto u8, port u16, VIP 4|16], client port u16, client 4|16,
// [backend 4|16]. The sender sorts a batch by service and backend, so an
// IPv4 flow usually costs 7 bytes (tag, client port, client) and a
// datagram holds ~190 of them; the worst case (IPv6, nothing shared) is
// 54 bytes, 25 a datagram.
//
// A datagram is at most MaxDatagram bytes so that it crosses a 1500-byte
// MTU without IP fragmentation (a lost fragment loses the datagram, and
// fragments are what firewalls drop first), with room for IPv6 and
// tunnel headers.

const (
	// MaxDatagram is the largest UDP payload sent, tag included.
	MaxDatagram = 1400
	// Version is the wire format version this package speaks.
	Version = 1

	headerLen = 32
	tagLen    = 16
	// minLen is the shortest datagram that can be valid.
	minLen = headerLen + tagLen

	magic0, magic1 = 'K', 'F'
)

// Type is a message type.
type Type uint8

const (
	TypeFlows       Type = 1
	TypeSyncRequest Type = 2
	TypeSyncEnd     Type = 3
)

func (t Type) String() string {
	switch t {
	case TypeFlows:
		return "flows"
	case TypeSyncRequest:
		return "sync-request"
	case TypeSyncEnd:
		return "sync-end"
	}
	return fmt.Sprintf("type-%d", uint8(t))
}

// FlagSnapshot marks flows sent in answer to a sync request (the body
// then starts with the request's nonce).
const FlagSnapshot uint8 = 0x01

// Message is one datagram, decoded.
type Message struct {
	Type  Type
	Flags uint8
	Node  uint64 // sender node ID
	Seq   uint64
	Time  int64 // Unix nanoseconds at the sender
	// Nonce: the sync request's; echoed in its answer (snapshot flows and
	// sync end).
	Nonce uint64
	// Datagrams and FlowCount: a sync end's account of the answer it closes.
	Datagrams uint32
	FlowCount uint32
	Flows     []Flow
}

// Reason is why a datagram was rejected.
type Reason uint8

const (
	ReasonTruncated Reason = iota + 1 // shorter than its header, tag or the flows it announces
	ReasonMalformed                   // bad magic, type, flags or flow encoding
	ReasonVersion                     // a version this node does not speak
	ReasonMAC                         // tag does not match: not from a holder of the key, or altered
	ReasonClock                       // timestamp outside the allowed skew
	ReasonReplay                      // sequence already seen or older than the window
)

func (r Reason) String() string {
	switch r {
	case ReasonTruncated:
		return "truncated"
	case ReasonMalformed:
		return "malformed"
	case ReasonVersion:
		return "version"
	case ReasonMAC:
		return "mac"
	case ReasonClock:
		return "clock"
	case ReasonReplay:
		return "replay"
	}
	return fmt.Sprintf("reason-%d", uint8(r))
}

// RejectError says why a datagram was refused.
type RejectError struct {
	Reason Reason
	Detail string
}

func (e *RejectError) Error() string { return e.Reason.String() + ": " + e.Detail }

func reject(r Reason, format string, args ...any) error {
	return &RejectError{Reason: r, Detail: fmt.Sprintf(format, args...)}
}

// ReasonOf returns the reason of a RejectError in err's chain, or 0.
func ReasonOf(err error) Reason {
	var re *RejectError
	if errors.As(err, &re) {
		return re.Reason
	}
	return 0
}

// MinKeyLen is the shortest shared secret accepted: 256 bits, as long as
// the MAC's hash.
const MinKeyLen = 32

// Codec encodes and authenticates datagrams with one shared key. It keeps
// hash state between calls: one Codec per goroutine (Clone makes another).
type Codec struct {
	key []byte
	mac hash.Hash
	sum []byte
}

// NewCodec derives the MAC key from the shared secret (so the secret is
// never used raw, and a later format version can derive another).
func NewCodec(secret []byte) (*Codec, error) {
	if len(secret) < MinKeyLen {
		return nil, fmt.Errorf("key of %d bytes: at least %d are required", len(secret), MinKeyLen)
	}
	d := hmac.New(sha256.New, secret)
	d.Write([]byte("keepbit flow sharing v1"))
	return newCodec(d.Sum(nil)), nil
}

func newCodec(key []byte) *Codec {
	return &Codec{key: key, mac: hmac.New(sha256.New, key), sum: make([]byte, 0, sha256.Size)}
}

// Clone returns a Codec with the same key for another goroutine.
func (c *Codec) Clone() *Codec { return newCodec(c.key) }

func (c *Codec) tag(b []byte) []byte {
	c.mac.Reset()
	c.mac.Write(b)
	c.sum = c.mac.Sum(c.sum[:0])
	return c.sum[:tagLen]
}

// Encode appends one datagram for m to dst: for TypeFlows, as many of
// m.Flows, in order, as fit in MaxDatagram; it returns the datagram and
// how many flows it holds. m.Flows must be valid (every address set).
func (c *Codec) Encode(dst []byte, m *Message) ([]byte, int, error) {
	start := len(dst)
	dst, n, err := appendUnsigned(dst, m)
	if err != nil {
		return dst[:start], 0, err
	}
	return append(dst, c.tag(dst[start:])...), n, nil
}

// appendUnsigned writes header and body, without the tag.
func appendUnsigned(dst []byte, m *Message) ([]byte, int, error) {
	start := len(dst)
	dst = append(dst, magic0, magic1, Version, byte(m.Type), m.Flags, 0, 0, 0)
	dst = binary.BigEndian.AppendUint64(dst, m.Node)
	dst = binary.BigEndian.AppendUint64(dst, m.Seq)
	dst = binary.BigEndian.AppendUint64(dst, uint64(m.Time))
	switch m.Type {
	case TypeSyncRequest:
		if m.Flags != 0 {
			return dst, 0, fmt.Errorf("flags %#x on a %s", m.Flags, m.Type)
		}
		return binary.BigEndian.AppendUint64(dst, m.Nonce), 0, nil
	case TypeSyncEnd:
		if m.Flags != 0 {
			return dst, 0, fmt.Errorf("flags %#x on a %s", m.Flags, m.Type)
		}
		dst = binary.BigEndian.AppendUint64(dst, m.Nonce)
		dst = binary.BigEndian.AppendUint32(dst, m.Datagrams)
		return binary.BigEndian.AppendUint32(dst, m.FlowCount), 0, nil
	case TypeFlows:
	default:
		return dst, 0, fmt.Errorf("message type %d", m.Type)
	}
	if m.Flags&^FlagSnapshot != 0 {
		return dst, 0, fmt.Errorf("flags %#x", m.Flags)
	}
	if m.Flags&FlagSnapshot != 0 {
		dst = binary.BigEndian.AppendUint64(dst, m.Nonce)
	}
	limit := start + MaxDatagram - tagLen
	n := 0
	var prev Flow
	for i, f := range m.Flows {
		if n == 0xffff {
			break
		}
		if !f.valid() {
			return dst, 0, fmt.Errorf("flows[%d] (%v): every address must be set, without a zone", i, f)
		}
		mark := len(dst)
		dst = appendFlow(dst, f, prev, n > 0)
		if len(dst) > limit {
			dst = dst[:mark]
			break
		}
		prev = f
		n++
	}
	binary.BigEndian.PutUint16(dst[start+6:], uint16(n))
	return dst, n, nil
}

const (
	flowVIP6        = 0x01
	flowClient6     = 0x02
	flowBackend6    = 0x04
	flowSameService = 0x08
	flowSameBackend = 0x10
	flowReserved    = 0xe0
)

func appendAddr(dst []byte, a netip.Addr) []byte {
	if a.Is4() {
		b := a.As4()
		return append(dst, b[:]...)
	}
	b := a.As16()
	return append(dst, b[:]...)
}

func appendFlow(dst []byte, f, prev Flow, havePrev bool) []byte {
	var tag byte
	sameService := havePrev && f.VIP == prev.VIP && f.Port == prev.Port && f.Proto == prev.Proto
	sameBackend := havePrev && f.Backend == prev.Backend
	if sameService {
		tag |= flowSameService
	} else if !f.VIP.Is4() {
		tag |= flowVIP6
	}
	if !f.Client.Addr().Is4() {
		tag |= flowClient6
	}
	if sameBackend {
		tag |= flowSameBackend
	} else if !f.Backend.Is4() {
		tag |= flowBackend6
	}
	dst = append(dst, tag)
	if !sameService {
		dst = append(dst, f.Proto)
		dst = binary.BigEndian.AppendUint16(dst, f.Port)
		dst = appendAddr(dst, f.VIP)
	}
	dst = binary.BigEndian.AppendUint16(dst, f.Client.Port())
	dst = appendAddr(dst, f.Client.Addr())
	if !sameBackend {
		dst = appendAddr(dst, f.Backend)
	}
	return dst
}

// Decode checks b's framing, version and tag, then decodes it into m
// (reusing m.Flows' storage). Errors are *RejectError. The sender's clock
// and sequence are the receiver's to judge (they need its state).
func (c *Codec) Decode(b []byte, m *Message) error {
	if len(b) < minLen {
		return reject(ReasonTruncated, "%d bytes, a datagram has at least %d", len(b), minLen)
	}
	if b[0] != magic0 || b[1] != magic1 {
		return reject(ReasonMalformed, "magic %#02x%02x", b[0], b[1])
	}
	if b[2] != Version {
		return reject(ReasonVersion, "version %d, this node speaks %d", b[2], Version)
	}
	body, tag := b[:len(b)-tagLen], b[len(b)-tagLen:]
	if !hmac.Equal(c.tag(body), tag) {
		return reject(ReasonMAC, "tag does not match")
	}
	return parse(body, m)
}

// parse decodes header and body (the tag already removed and checked).
func parse(b []byte, m *Message) error {
	if len(b) < headerLen {
		return reject(ReasonTruncated, "%d bytes, the header has %d", len(b), headerLen)
	}
	if b[0] != magic0 || b[1] != magic1 {
		return reject(ReasonMalformed, "magic %#02x%02x", b[0], b[1])
	}
	if b[2] != Version {
		return reject(ReasonVersion, "version %d, this node speaks %d", b[2], Version)
	}
	*m = Message{
		Type:  Type(b[3]),
		Flags: b[4],
		Node:  binary.BigEndian.Uint64(b[8:]),
		Seq:   binary.BigEndian.Uint64(b[16:]),
		Time:  int64(binary.BigEndian.Uint64(b[24:])),
		Flows: m.Flows[:0],
	}
	if b[5] != 0 {
		return reject(ReasonMalformed, "reserved byte %#x", b[5])
	}
	count := int(binary.BigEndian.Uint16(b[6:]))
	body := b[headerLen:]
	fixed := func(n int) error {
		if m.Flags != 0 {
			return reject(ReasonMalformed, "flags %#x on a %s", m.Flags, m.Type)
		}
		if count != 0 {
			return reject(ReasonMalformed, "count %d on a %s", count, m.Type)
		}
		if len(body) < n {
			return reject(ReasonTruncated, "%s body of %d bytes, want %d", m.Type, len(body), n)
		}
		if len(body) > n {
			return reject(ReasonMalformed, "%s body of %d bytes, want %d", m.Type, len(body), n)
		}
		return nil
	}
	switch m.Type {
	case TypeSyncRequest:
		if err := fixed(8); err != nil {
			return err
		}
		m.Nonce = binary.BigEndian.Uint64(body)
		return nil
	case TypeSyncEnd:
		if err := fixed(16); err != nil {
			return err
		}
		m.Nonce = binary.BigEndian.Uint64(body)
		m.Datagrams = binary.BigEndian.Uint32(body[8:])
		m.FlowCount = binary.BigEndian.Uint32(body[12:])
		return nil
	case TypeFlows:
	default:
		return reject(ReasonMalformed, "message type %d", m.Type)
	}
	if m.Flags&^FlagSnapshot != 0 {
		return reject(ReasonMalformed, "flags %#x", m.Flags)
	}
	if m.Flags&FlagSnapshot != 0 {
		if len(body) < 8 {
			return reject(ReasonTruncated, "snapshot without its nonce")
		}
		m.Nonce = binary.BigEndian.Uint64(body)
		body = body[8:]
	}
	var prev Flow
	for i := range count {
		f, rest, bad, why := parseFlow(body, prev, i > 0)
		if bad != 0 {
			return reject(bad, "flows[%d] of %d: %s", i, count, why)
		}
		m.Flows = append(m.Flows, f)
		prev, body = f, rest
	}
	if len(body) != 0 {
		return reject(ReasonMalformed, "%d bytes after the %d flows", len(body), count)
	}
	return nil
}

func takeAddr(b []byte, v6 bool) (netip.Addr, []byte, bool) {
	if v6 {
		if len(b) < 16 {
			return netip.Addr{}, b, false
		}
		return netip.AddrFrom16([16]byte(b[:16])), b[16:], true
	}
	if len(b) < 4 {
		return netip.Addr{}, b, false
	}
	return netip.AddrFrom4([4]byte(b[:4])), b[4:], true
}

// parseFlow decodes one flow; on failure it returns a reason and what is
// wrong (no error value: this runs once per flow received).
func parseFlow(b []byte, prev Flow, havePrev bool) (Flow, []byte, Reason, string) {
	const short = "ends inside the flow"
	if len(b) < 1 {
		return Flow{}, b, ReasonTruncated, short
	}
	tag := b[0]
	b = b[1:]
	switch {
	case tag&flowReserved != 0:
		return Flow{}, b, ReasonMalformed, fmt.Sprintf("reserved flag bits in %#x", tag)
	case tag&(flowSameService|flowVIP6) == flowSameService|flowVIP6,
		tag&(flowSameBackend|flowBackend6) == flowSameBackend|flowBackend6:
		return Flow{}, b, ReasonMalformed, fmt.Sprintf("a repeated field with its family flag in %#x", tag)
	case !havePrev && tag&(flowSameService|flowSameBackend) != 0:
		return Flow{}, b, ReasonMalformed, fmt.Sprintf("the first flow repeats a previous one (%#x)", tag)
	}
	var f Flow
	var ok bool
	if tag&flowSameService != 0 {
		f.VIP, f.Port, f.Proto = prev.VIP, prev.Port, prev.Proto
	} else {
		if len(b) < 3 {
			return Flow{}, b, ReasonTruncated, short
		}
		f.Proto, f.Port = b[0], binary.BigEndian.Uint16(b[1:])
		if f.VIP, b, ok = takeAddr(b[3:], tag&flowVIP6 != 0); !ok {
			return Flow{}, b, ReasonTruncated, short
		}
	}
	if len(b) < 2 {
		return Flow{}, b, ReasonTruncated, short
	}
	port := binary.BigEndian.Uint16(b)
	var client netip.Addr
	if client, b, ok = takeAddr(b[2:], tag&flowClient6 != 0); !ok {
		return Flow{}, b, ReasonTruncated, short
	}
	f.Client = netip.AddrPortFrom(client, port)
	if tag&flowSameBackend != 0 {
		f.Backend = prev.Backend
	} else if f.Backend, b, ok = takeAddr(b, tag&flowBackend6 != 0); !ok {
		return Flow{}, b, ReasonTruncated, short
	}
	return f, b, 0, ""
}

// reseal sets a datagram's sender, sequence and timestamp and tags it
// anew: the sender encodes first (to learn how many flows fit) and stamps
// once the rate limit lets the datagram go.
func (c *Codec) reseal(b []byte, node, seq uint64, unixNano int64) []byte {
	binary.BigEndian.PutUint64(b[8:], node)
	binary.BigEndian.PutUint64(b[16:], seq)
	binary.BigEndian.PutUint64(b[24:], uint64(unixNano))
	end := len(b) - tagLen
	copy(b[end:], c.tag(b[:end]))
	return b
}
