package loader

// The BPF objects are generated from ../bpf and committed, so building and
// testing need no clang. `make generate` runs this with the pinned clang.
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc ${BPF_CLANG} -strip ${BPF_STRIP} -cflags ${BPF_CFLAGS} -target bpfel -type service_key -type service_value -type vip_key -type vip_value -type flow_cache_entry -type backend_info -type flow_key -type flow_value -type counter -type settings_value -type flow_report -type shared_flow_value -type share_settings_value -type limits -type table_layout -type state_word -type backend_state_value -type service_flags -type vip_flags -type backend_flags -type flow_report_reason -type share_stat -type share_flags -type share_limits keepbit ../bpf/keepbit_xdp.c
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc ${BPF_CLANG} -strip ${BPF_STRIP} -cflags ${BPF_CFLAGS} -target bpfel baseline ../bpf/baseline_xdp.c
// The same program for kernels 5.10 to 5.16 (bpf/maps.h: KEEPBIT_COMPAT); the loader picks it there.
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc ${BPF_CLANG} -strip ${BPF_STRIP} -cflags "${BPF_CFLAGS} -DKEEPBIT_COMPAT" -target bpfel keepbitcompat ../bpf/keepbit_xdp.c
