module github.com/keepbit/keepbit

go 1.26.8

require github.com/cilium/ebpf v0.22.0

require golang.org/x/sys v0.49.0 // indirect
