package kernelpath

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/keepbit/keepbit/internal/privtest"
)

func TestMain(m *testing.M) { os.Exit(privtest.Main(m)) }

// TestFrames: one UDP frame per flow to the VIP's port 80, from ports
// 10000 up, valid checksums, 60 bytes.
func TestFrames(t *testing.T) {
	frames, err := Frames(3)
	if err != nil {
		t.Fatal(err)
	}
	for i, f := range frames {
		if len(f) != 60 {
			t.Errorf("frame %d: %d bytes, want 60", i, len(f))
		}
		p := gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.Default)
		ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		udp, _ := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
		if ip == nil || udp == nil {
			t.Fatalf("frame %d: not IPv4/UDP: %v", i, p)
		}
		if ip.DstIP.String() != vip.String() || udp.DstPort != 80 || int(udp.SrcPort) != 10000+i {
			t.Errorf("frame %d: %s:%d -> %s:%d", i, ip.SrcIP, udp.SrcPort, ip.DstIP, udp.DstPort)
		}
	}
}

// TestRun: every path forwards the frames (the floor to its sink; Keepbit
// and nftables each spread 16 flows over more than one backend), paced
// and unpaced, and the cost per packet is measured.
func TestRun(t *testing.T) {
	privtest.Require(t)
	if _, err := exec.LookPath("nft"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("nft not installed: make test-deps installs nftables")
		}
		t.Skip("needs nft (nftables); make test-deps installs it")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := Run(ctx, Options{Rate: 20_000, Duration: 300 * time.Millisecond, Repeats: 1, Progress: func(s string) { t.Log(s) }})
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 4 {
		t.Fatalf("%d paths, want 4", len(res))
	}
	for _, r := range res {
		if len(r.Paced) != 1 || len(r.Max) != 1 {
			t.Fatalf("%s: %d paced and %d unpaced samples, want 1 each", r.Path, len(r.Paced), len(r.Max))
		}
		p := r.Paced[0]
		// Generous: a loaded machine may fall behind the offered rate.
		if p.Sent < 1000 || p.Received < p.Sent*9/10 {
			t.Errorf("%s paced: %d of %d frames came through", r.Path, p.Received, p.Sent)
		}
		if p.Busy <= 0 {
			t.Errorf("%s paced: no CPU time measured", r.Path)
		}
		if (r.Path == Keepbit || r.Path == NFT) && p.Backends < 2 {
			t.Errorf("%s: 16 flows reached %d backends", r.Path, p.Backends)
		}
	}
}
