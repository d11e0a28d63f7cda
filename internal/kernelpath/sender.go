package kernelpath

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"time"
	"unsafe"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/keepbit/keepbit/internal/lab"
)

// sender writes whole frames to one device through an AF_PACKET socket,
// past the qdisc: the frames enter the peer of a veth as any host's
// packets would, through the stack's receive path or the peer's XDP.
type sender struct {
	fd int
}

func newSender(ns netns.NsHandle, ifindex int) (*sender, error) {
	s := &sender{fd: -1}
	err := lab.InNS(ns, func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0) // protocol 0: send only
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		s.fd = fd
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: ifindex}); err != nil {
			return fmt.Errorf("bind to ifindex %d: %w", ifindex, err)
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1); err != nil {
			return fmt.Errorf("qdisc bypass: %w", err)
		}
		return nil
	})
	if err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func (s *sender) Close() error {
	if s.fd < 0 {
		return nil
	}
	err := unix.Close(s.fd)
	s.fd = -1
	return err
}

// batch is how many frames one sendmmsg call writes.
const batch = 64

// batchOf prepares one sendmmsg vector of batch frames, cycling frames.
func batchOf(frames [][]byte) ([]unix.Mmsghdr, []unix.Iovec) {
	msgs := make([]unix.Mmsghdr, batch)
	iovs := make([]unix.Iovec, batch)
	for i := range batch {
		f := frames[i%len(frames)]
		iovs[i].Base = &f[0]
		iovs[i].SetLen(len(f))
		msgs[i].Hdr.Iov = &iovs[i]
		msgs[i].Hdr.SetIovlen(1)
	}
	return msgs, iovs
}

// send writes frames round robin for d, at rate frames/s (0: as fast as
// one thread can), 64 to a system call, and returns how many went out and
// how long it took. Pacing sleeps between batches rather than spinning, so
// the machine's CPU time during a paced run is the frames' cost, not a
// busy wait's.
func (s *sender) send(ctx context.Context, frames [][]byte, rate int, d time.Duration) (uint64, time.Duration, error) {
	if len(frames) == 0 {
		return 0, 0, errors.New("no frames")
	}
	msgs, iovs := batchOf(frames)
	var sent, refused uint64
	start := time.Now()
	end := start.Add(d)
	for {
		n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(s.fd), uintptr(unsafe.Pointer(&msgs[0])), batch, 0, 0, 0)
		switch {
		case errno == unix.ENOBUFS || errno == unix.EAGAIN:
			refused += batch
		case errno != 0:
			return sent, time.Since(start), fmt.Errorf("sendmmsg: %w", errno)
		default:
			sent += uint64(n)
			refused += batch - uint64(n)
		}
		now := time.Now()
		if !now.Before(end) {
			break
		}
		if ctx.Err() != nil {
			return sent, now.Sub(start), ctx.Err()
		}
		if rate > 0 {
			due := start.Add(time.Duration(float64(sent) / float64(rate) * float64(time.Second)))
			if wait := due.Sub(now); wait > 0 {
				time.Sleep(wait)
			}
		}
	}
	runtime.KeepAlive(iovs)
	runtime.KeepAlive(frames)
	if refused > sent/100 {
		return sent, time.Since(start), fmt.Errorf("%d of %d frames refused (no buffer)", refused, sent+refused)
	}
	return sent, time.Since(start), nil
}
