// Package vrrp implements VRRP version 3 (RFC 5798) for IPv4 and IPv6:
// the advertisement on the wire, the state machine, and the instance that
// runs it on an interface.
package vrrp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Protocol is VRRP's IP protocol / next-header number.
const Protocol = 112

// Wire constants of RFC 5798 section 5.
const (
	version3      = 3
	typeAdvert    = 1
	headerLen     = 8
	maxAdvertInt  = 0x0fff // centiseconds, 12 bits
	OwnerPriority = 255
	// TTL and hop limit of every VRRP packet, sent and accepted.
	TTL = 255
	// maxAdvertLen is the longest valid advertisement: 255 addresses
	// (the count is 8 bits) of 16 bytes after the header.
	maxAdvertLen = headerLen + 255*16
	// maxIPv4Header is the longest IPv4 header (with options).
	maxIPv4Header = 60
)

var (
	// MulticastV4 and MulticastV6 are the VRRP groups.
	MulticastV4 = netip.MustParseAddr("224.0.0.18")
	MulticastV6 = netip.MustParseAddr("ff02::12")
)

// Advertisement is a VRRPv3 ADVERTISEMENT.
type Advertisement struct {
	VRID     uint8
	Priority uint8
	// Interval is the Max Adver Int, a multiple of 10 ms up to 40.95 s.
	Interval time.Duration
	Addrs    []netip.Addr // all IPv4 or all IPv6
}

// Errors of Parse, one per check of RFC 5798 section 7.1 that it makes.
var (
	ErrShort    = errors.New("vrrp: shorter than its header or its address count says")
	ErrVersion  = errors.New("vrrp: not version 3")
	ErrType     = errors.New("vrrp: not an advertisement")
	ErrChecksum = errors.New("vrrp: bad checksum")
	ErrFamily   = errors.New("vrrp: addresses and IP version differ")
	ErrInterval = errors.New("vrrp: advertisement interval 0")
	ErrCount    = errors.New("vrrp: no address (count must be at least 1)")
)

// Marshal encodes a for sending from src to dst (which enter the
// checksum's pseudo-header and decide the address family).
func (a Advertisement) Marshal(src, dst netip.Addr) ([]byte, error) {
	v6 := src.Is6() && !src.Is4In6()
	alen := 4
	if v6 {
		alen = 16
	}
	if len(a.Addrs) == 0 || len(a.Addrs) > 255 {
		return nil, fmt.Errorf("vrrp: %d addresses, want 1-255", len(a.Addrs))
	}
	cs := a.Interval / (10 * time.Millisecond)
	if cs < 1 || cs > maxAdvertInt || a.Interval%(10*time.Millisecond) != 0 {
		return nil, fmt.Errorf("vrrp: interval %v: want a multiple of 10ms from 10ms to 40.95s", a.Interval)
	}
	b := make([]byte, headerLen+alen*len(a.Addrs))
	b[0] = version3<<4 | typeAdvert
	b[1] = a.VRID
	b[2] = a.Priority
	b[3] = uint8(len(a.Addrs))
	binary.BigEndian.PutUint16(b[4:], uint16(cs)) // rsvd (4 bits) = 0
	for i, addr := range a.Addrs {
		addr = addr.Unmap()
		if addr.Is6() != v6 {
			return nil, ErrFamily
		}
		copy(b[headerLen+i*alen:], addr.AsSlice())
	}
	binary.BigEndian.PutUint16(b[6:], checksum(b, src, dst))
	return b, nil
}

// Parse decodes a VRRP message received from src for dst and checks what
// RFC 5798 section 7.1 asks of the message itself: length, version, type,
// checksum. TTL / hop limit, VRID and owner checks belong to the receiver.
func Parse(b []byte, src, dst netip.Addr) (Advertisement, error) {
	if len(b) < headerLen {
		return Advertisement{}, ErrShort
	}
	if b[0]>>4 != version3 {
		return Advertisement{}, ErrVersion
	}
	if b[0]&0x0f != typeAdvert {
		return Advertisement{}, ErrType
	}
	v6 := src.Is6() && !src.Is4In6()
	alen := 4
	if v6 {
		alen = 16
	}
	n := int(b[3])
	if n == 0 {
		return Advertisement{}, ErrCount
	}
	if len(b) < headerLen+n*alen {
		return Advertisement{}, ErrShort
	}
	// The checksum covers the message as sent; extra trailing bytes (none
	// should exist) are excluded as the IP payload length would say.
	msg := b[:headerLen+n*alen]
	if checksum(msg, src, dst) != 0 {
		return Advertisement{}, ErrChecksum
	}
	cs := binary.BigEndian.Uint16(b[4:]) & maxAdvertInt
	if cs == 0 {
		return Advertisement{}, ErrInterval
	}
	a := Advertisement{VRID: b[1], Priority: b[2], Interval: time.Duration(cs) * 10 * time.Millisecond}
	for i := range n {
		raw := msg[headerLen+i*alen : headerLen+(i+1)*alen]
		addr, _ := netip.AddrFromSlice(raw)
		a.Addrs = append(a.Addrs, addr)
	}
	return a, nil
}

// checksum is the Internet checksum over the pseudo-header (src, dst,
// upper-layer length, next header 112: RFC 5798 section 5.2.8, for IPv4
// as for TCP/UDP, for IPv6 as in RFC 2460 section 8.1) and msg. Over a
// message that carries a correct checksum it returns 0.
func checksum(msg []byte, src, dst netip.Addr) uint16 {
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(src.Unmap().AsSlice())
	add(dst.Unmap().AsSlice())
	if src.Is6() && !src.Is4In6() {
		var l [8]byte
		binary.BigEndian.PutUint32(l[:4], uint32(len(msg)))
		l[7] = Protocol
		add(l[:])
	} else {
		add([]byte{0, Protocol})
		add([]byte{byte(len(msg) >> 8), byte(len(msg))})
	}
	add(msg)
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}
