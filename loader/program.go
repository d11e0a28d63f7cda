package loader

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// Program is a build of the XDP forwarder. Both come from bpf/keepbit_xdp.c
// and have the same maps and records; they differ in what they ask of the
// kernel (bpf/maps.h, KEEPBIT_COMPAT).
type Program string

const (
	// ProgramAuto picks the current build when the kernel runs it, else
	// the compatible one.
	ProgramAuto Program = ""
	// ProgramCurrent needs Linux 5.17 (bpf_loop, the coarse clock,
	// pointer arguments of global functions).
	ProgramCurrent Program = "current"
	// ProgramCompat runs on Linux 5.10 and later. It costs more per packet:
	// the fine clock on every established packet, and on a cache miss a
	// copy of the parsed packet into a per-CPU slot.
	ProgramCompat Program = "compat"
)

// ParseProgram reads a Program from its name ("" or "auto" is ProgramAuto).
func ParseProgram(s string) (Program, error) {
	switch Program(s) {
	case ProgramAuto, "auto":
		return ProgramAuto, nil
	case ProgramCurrent, ProgramCompat:
		return Program(s), nil
	}
	return "", fmt.Errorf("program %q: want auto, current or compat", s)
}

// ChooseProgram resolves want for the running kernel: ProgramAuto becomes
// the current build when the kernel has everything it needs, else the
// compatible one; ProgramCurrent on a kernel without its needs is an error
// naming the first one missing.
func ChooseProgram(want Program) (Program, error) {
	return chooseProgram(want, Requirements(), kernelRelease())
}

func chooseProgram(want Program, reqs []Requirement, release string) (Program, error) {
	if want == ProgramCompat {
		return ProgramCompat, nil
	}
	for _, r := range reqs {
		if r.Program != ProgramCurrent {
			continue
		}
		err := r.probe()
		switch {
		case err == nil:
			continue
		case !errors.Is(err, ebpf.ErrNotSupported):
			return "", fmt.Errorf("probe the kernel for %s: %w", r.Feature, err)
		case want == ProgramCurrent:
			return "", fmt.Errorf("%w: kernel %s lacks %s, which the current build of the forwarder needs (Linux %s or later; the compatible build runs here)",
				ErrKernelFeature, release, r.Feature, r.Kernel)
		}
		return ProgramCompat, nil
	}
	return ProgramCurrent, nil
}

// programSpec is the object of build p (not ProgramAuto).
func programSpec(p Program) (*ebpf.CollectionSpec, error) {
	switch p {
	case ProgramCurrent:
		return loadKeepbit()
	case ProgramCompat:
		return loadKeepbitcompat()
	}
	return nil, fmt.Errorf("program %q: not a build", p)
}
