package loader

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"
)

// Requirement is one kernel feature the forwarder cannot run without.
type Requirement struct {
	// Feature names it as an operator would search for it.
	Feature string
	// Kernel is the first Linux release that has it.
	Kernel string
	probe  func() error

	// Program is the build that needs it ("" both; see Program).
	Program Program

	// What the program uses that needs it (TestRequirementsMatchProgram
	// keeps the table and the objects in step).
	helper  asm.BuiltinFunc
	mapType ebpf.MapType
}

// Requirements is what the committed XDP programs need of the kernel,
// newest first within each kind. The compatible build's needs (Program ""
// or ProgramCompat) are the minimum: the newest of them is the minimum
// kernel. The current build's own (ProgramCurrent) decide which of the two
// runs (ChooseProgram).
func Requirements() []Requirement {
	helper := func(h asm.BuiltinFunc, kernel string) Requirement {
		return Requirement{Feature: "the " + strings.TrimPrefix(h.String(), "Fn") + " helper", Kernel: kernel, helper: h,
			probe: func() error { return features.HaveProgramHelper(ebpf.XDP, h) }}
	}
	only := func(p Program, r Requirement) Requirement {
		r.Program = p
		return r
	}
	mapType := func(mt ebpf.MapType, kernel string) Requirement {
		return Requirement{Feature: mt.String() + " maps", Kernel: kernel, mapType: mt,
			probe: func() error { return features.HaveMapType(mt) }}
	}
	return []Requirement{
		{Feature: "XDP programs", Kernel: "4.8", probe: func() error { return features.HaveProgramType(ebpf.XDP) }},
		{Feature: "programs of 1 million instructions", Kernel: "5.2", probe: features.HaveLargeInstructions},
		{Feature: "bounded loops", Kernel: "5.3", probe: features.HaveBoundedLoops},
		only(ProgramCurrent, helper(asm.FnLoop, "5.17")),
		only(ProgramCurrent, helper(asm.FnKtimeGetCoarseNs, "5.11")),
		only(ProgramCompat, helper(asm.FnKtimeGetNs, "4.1")),
		helper(asm.FnRingbufReserve, "5.8"),
		helper(asm.FnRingbufSubmit, "5.8"),
		helper(asm.FnRedirectMap, "4.14"),
		helper(asm.FnXdpAdjustHead, "4.10"),
		helper(asm.FnMapUpdateElem, "4.8"),
		helper(asm.FnMapLookupElem, "4.8"),
		{Feature: "inner maps of any size (BPF_F_INNER_MAP)", Kernel: "5.10", probe: func() error { return features.HaveMapFlag(features.BPF_F_INNER_MAP) }},
		mapType(ebpf.RingBuf, "5.8"),
		mapType(ebpf.DevMapHash, "5.4"),
		mapType(ebpf.ArrayOfMaps, "4.12"),
		mapType(ebpf.LRUHash, "4.10"),
		mapType(ebpf.PerCPUArray, "4.6"),
		mapType(ebpf.Hash, "4.8"),
		mapType(ebpf.Array, "4.8"),
	}
}

// ErrKernelFeature: the running kernel lacks something the forwarder
// needs.
var ErrKernelFeature = errors.New("kernel feature missing")

// CheckKernel probes the running kernel for every Requirement of the
// compatible build (the minimum) and names the first one missing, with the
// kernel that has it, in one sentence.
func CheckKernel() error {
	return checkKernel(Requirements(), kernelRelease())
}

func kernelRelease() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return "?"
	}
	return unix.ByteSliceToString(u.Release[:])
}

func checkKernel(reqs []Requirement, release string) error {
	for _, r := range reqs {
		if r.Program == ProgramCurrent {
			continue
		}
		err := r.probe()
		switch {
		case err == nil:
		case errors.Is(err, ebpf.ErrNotSupported):
			return fmt.Errorf("%w: kernel %s lacks %s, which the XDP forwarder needs (Linux %s or later; run a kernel of at least %s)",
				ErrKernelFeature, release, r.Feature, r.Kernel, MinimumKernel())
		default:
			return fmt.Errorf("probe the kernel for %s: %w", r.Feature, err)
		}
	}
	return nil
}

// MinimumKernel is the oldest Linux release that runs the forwarder (its
// compatible build).
func MinimumKernel() string {
	min := "0"
	for _, r := range Requirements() {
		if r.Program != ProgramCurrent && kernelLess(min, r.Kernel) {
			min = r.Kernel
		}
	}
	return min
}

// kernelLess compares dotted release numbers ("5.10" < "5.17").
func kernelLess(a, b string) bool {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(as) || i < len(bs); i++ {
		var x, y int
		if i < len(as) {
			fmt.Sscan(as[i], &x)
		}
		if i < len(bs) {
			fmt.Sscan(bs[i], &y)
		}
		if x != y {
			return x < y
		}
	}
	return false
}
