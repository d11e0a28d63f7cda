package throughput

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/machine"
	"github.com/keepbit/keepbit/internal/privtest"
)

func TestMain(m *testing.M) { os.Exit(privtest.Main(m)) }

func sample(received uint64) Sample {
	return Sample{Sent: 2 * received, Received: received, Elapsed: time.Second, Backends: 16}
}

func TestVerdictAndReport(t *testing.T) {
	met := Result{Case: Case{Name: "fast", Established: true, FrameBytes: 60},
		Ceiling: []Sample{sample(4e6), sample(5e6), sample(4e6)}, Keepbit: []Sample{sample(3.8e6), sample(4.6e6), sample(3.6e6)}}
	missed := Result{Case: Case{Name: "slow", Established: true, FrameBytes: 60},
		Ceiling: []Sample{sample(4e6)}, Keepbit: []Sample{sample(2e6)}}
	newFlows := Result{Case: Case{Name: "new", FrameBytes: 60}, Ceiling: []Sample{sample(4e6)}, Keepbit: []Sample{sample(1e6)}}
	cases := []struct {
		r    Result
		want string
	}{
		{met, "0.92 >= 0.90: met"}, // ratios 0.95, 0.92 and 0.90
		{missed, "0.50 < 0.90: MISSED"},
		{newFlows, ""},
	}
	for _, c := range cases {
		if got := c.r.Verdict(); got != c.want {
			t.Errorf("%s: verdict %q, want %q", c.r.Name, got, c.want)
		}
	}
	root := t.TempDir()
	rep := Report{Machine: machine.This("bench-compare -repeats 2"), Settings: "test", Results: []Result{met, missed, newFlows}}
	if err := Write(root, rep); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(filepath.Join(root, MarkdownPath))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"Command: `bench-compare -repeats 2`",
		"| fast | 60 B | 4.00 [4.00-5.00] | 3.80 [3.60-4.60] | 0.92 [0.90-0.95] | 0.92 >= 0.90: met | 13 ns | 50 [50-50]% | 16 of 16 |",
		"| new | 60 B | 4.00 [4.00-4.00] | 1.00 [1.00-1.00] | 0.25 [0.25-0.25] | - | 750 ns |",
	} {
		if !strings.Contains(string(md), want) {
			t.Errorf("BENCHMARKS.md lacks %q:\n%s", want, md)
		}
	}
	for _, p := range []string{JSONPath, ChartPath} {
		if st, err := os.Stat(filepath.Join(root, p)); err != nil || st.Size() == 0 {
			t.Errorf("%s: %v", p, err)
		}
	}
}

// TestRun measures every case briefly in the real lab: each side must
// forward, Keepbit must spread flows over the backends, and the lab must
// leave nothing behind.
func TestRun(t *testing.T) {
	privtest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var lines []string
	rs, err := Run(ctx, Options{Duration: 50 * time.Millisecond, Repeats: 1, PerRun: 4096, Services: 50,
		Progress: func(s string) { lines = append(lines, s) }})
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != len(Cases(50)) || len(lines) != len(rs) {
		t.Fatalf("%d results, %d progress lines for %d cases", len(rs), len(lines), len(Cases(50)))
	}
	for _, r := range rs {
		t.Log(lines[0])
		lines = lines[1:]
		c, k := r.Ceiling[0], r.Keepbit[0]
		if c.Received == 0 || k.Received == 0 || c.Received > c.Sent || k.Received > k.Sent {
			t.Errorf("%s: ceiling %d of %d, keepbit %d of %d frames came back", r.Name, c.Received, c.Sent, k.Received, k.Sent)
		}
		want := 1
		if r.Flows >= 1000 {
			want = Backends
		}
		if k.Backends < want || (r.Flows == 1 && k.Backends != 1) {
			t.Errorf("%s: %d backends reached, want %d", r.Name, k.Backends, want)
		}
	}
	if m, err := os.ReadFile("/proc/self/mountinfo"); err == nil && strings.Contains(string(m), "keepbit-throughput") {
		t.Error("the lab's bpffs is still mounted")
	}
}

func TestThousands(t *testing.T) {
	for n, want := range map[int]string{0: "0", 999: "999", 1000: "1,000", 16000: "16,000", 1234567: "1,234,567"} {
		if got := thousands(n); got != want {
			t.Errorf("thousands(%d) = %q, want %q", n, got, want)
		}
	}
}
