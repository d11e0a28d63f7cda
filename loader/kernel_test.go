package loader

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/keepbit/keepbit/internal/privtest"
)

func TestCheckKernelMessage(t *testing.T) {
	have := func() error { return nil }
	lack := func() error { return fmt.Errorf("probe: %w", ebpf.ErrNotSupported) }
	broken := func() error { return syscall.EPERM }
	for _, c := range []struct {
		name string
		reqs []Requirement
		want string // "" = no error
		is   error
	}{
		{"all present", []Requirement{{Feature: "a", Kernel: "4.8", probe: have}, {Feature: "b", Kernel: "5.17", probe: have}}, "", nil},
		{"one missing", []Requirement{{Feature: "a", Kernel: "4.8", probe: have}, {Feature: "the Loop helper", Kernel: "5.17", probe: lack}},
			"kernel feature missing: kernel 5.10.0-30-amd64 lacks the Loop helper, which the XDP forwarder needs (Linux 5.17 or later; run a kernel of at least " + MinimumKernel() + ")",
			ErrKernelFeature},
		{"first missing named", []Requirement{{Feature: "x", Kernel: "5.17", probe: lack}, {Feature: "y", Kernel: "5.11", probe: lack}},
			"lacks x,", ErrKernelFeature},
		{"probe fails otherwise", []Requirement{{Feature: "XDP programs", Kernel: "4.8", probe: broken}},
			"probe the kernel for XDP programs: operation not permitted", syscall.EPERM},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := checkKernel(c.reqs, "5.10.0-30-amd64")
			if c.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) || !errors.Is(err, c.is) {
				t.Fatalf("err = %v\nwant it to contain %q and wrap %v", err, c.want, c.is)
			}
		})
	}
}

func TestKernelLess(t *testing.T) {
	for _, c := range []struct {
		a, b string
		less bool
	}{
		{"5.10", "5.17", true}, {"5.17", "5.10", false}, {"5.9", "5.10", true},
		{"4.8", "4.8", false}, {"5", "5.1", true}, {"6.1", "5.17", false}, {"0", "3.19", true},
	} {
		if got := kernelLess(c.a, c.b); got != c.less {
			t.Errorf("kernelLess(%s, %s) = %v, want %v", c.a, c.b, got, c.less)
		}
	}
	if got := MinimumKernel(); got != "5.10" {
		t.Errorf("MinimumKernel = %s; README states 5.10", got)
	}
}

// TestRequirementsMatchProgram: every helper each committed build calls
// and every map type it declares is in Requirements, and Requirements
// names nothing the object no longer uses, so the start-up check and the
// README's minimum kernel follow the program.
func TestRequirementsMatchProgram(t *testing.T) {
	for _, prog := range []Program{ProgramCurrent, ProgramCompat} {
		t.Run(string(prog), func(t *testing.T) { requirementsMatch(t, prog) })
	}
}

func requirementsMatch(t *testing.T, prog Program) {
	spec, err := programSpec(prog)
	if err != nil {
		t.Fatal(err)
	}
	usedHelpers := map[asm.BuiltinFunc]bool{}
	for _, p := range spec.Programs {
		for _, ins := range p.Instructions {
			if ins.IsBuiltinCall() {
				usedHelpers[asm.BuiltinFunc(ins.Constant)] = true
			}
		}
	}
	usedMaps := map[ebpf.MapType]bool{}
	for _, m := range spec.Maps {
		usedMaps[m.Type] = true
		if m.InnerMap != nil {
			usedMaps[m.InnerMap.Type] = true
		}
	}
	listedHelpers, listedMaps := map[asm.BuiltinFunc]bool{}, map[ebpf.MapType]bool{}
	for _, r := range Requirements() {
		if r.Program != "" && r.Program != prog {
			continue
		}
		if r.helper != 0 {
			listedHelpers[r.helper] = true
		}
		if r.mapType != ebpf.UnspecifiedMap {
			listedMaps[r.mapType] = true
		}
	}
	if !maps.Equal(usedHelpers, listedHelpers) {
		t.Errorf("helpers: the program calls %v, Requirements lists %v", slices.Sorted(maps.Keys(usedHelpers)), slices.Sorted(maps.Keys(listedHelpers)))
	}
	if !maps.Equal(usedMaps, listedMaps) {
		t.Errorf("map types: the program declares %v, Requirements lists %v", slices.Sorted(maps.Keys(usedMaps)), slices.Sorted(maps.Keys(listedMaps)))
	}
}

// TestCheckKernelHere: a kernel at or above the minimum must pass the
// check (make test-kernels boots 5.10, the oldest); an older one must be refused with
// ErrKernelFeature and one sentence naming what is missing.
func TestCheckKernelHere(t *testing.T) {
	privtest.Require(t)
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	release := unix.ByteSliceToString(u.Release[:])
	err := CheckKernel()
	if !kernelLess(release, MinimumKernel()) {
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("kernel %s: supported (minimum %s)", release, MinimumKernel())
		return
	}
	if !errors.Is(err, ErrKernelFeature) || !strings.Contains(err.Error(), "run a kernel of at least "+MinimumKernel()) {
		t.Fatalf("kernel %s is below the minimum %s: CheckKernel = %v, want ErrKernelFeature naming the minimum", release, MinimumKernel(), err)
	}
	t.Logf("kernel %s is below the minimum %s: refused: %v", release, MinimumKernel(), err)
}
