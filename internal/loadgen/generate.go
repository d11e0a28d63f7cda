package loadgen

// The BPF objects are generated from ../../bpf and committed, so building
// and testing need no clang. `make generate` runs this with the pinned clang.
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc ${BPF_CLANG} -strip ${BPF_STRIP} -cflags ${BPF_CFLAGS} -target bpfel -type gen_config -type gen_state sender ../../bpf/loadgen_tx.c
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc ${BPF_CLANG} -strip ${BPF_STRIP} -cflags ${BPF_CFLAGS} -target bpfel sink ../../bpf/loadgen_sink.c
