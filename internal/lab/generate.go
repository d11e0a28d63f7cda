package lab

// The BPF object is generated from ../../bpf and committed, so building
// and testing need no clang. `make generate` runs this with the pinned clang.
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc ${BPF_CLANG} -strip ${BPF_STRIP} -cflags ${BPF_CFLAGS} -target bpfel responder ../../bpf/synack_responder.c
