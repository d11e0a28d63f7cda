module github.com/keepbit/keepbit

go 1.26.0

require (
	github.com/cilium/ebpf v0.22.0
	github.com/google/gopacket v1.1.19
	github.com/vishvananda/netlink v1.3.1
	golang.org/x/sys v0.49.0
)

require github.com/vishvananda/netns v0.0.5

require golang.org/x/net v0.48.0

require go.yaml.in/yaml/v3 v3.0.6
