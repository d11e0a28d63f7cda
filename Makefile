# Keepbit build, test and benchmark entry points. `make help` lists them.

SHELL := /bin/bash
GO ?= go
# One pinned clang generates the committed BPF objects (Debian bookworm's clang-16).
BPF_CLANG ?= clang-16
BPF_STRIP ?= llvm-strip-16
BPF_PACKAGES := clang-16 llvm-16 libbpf-dev
BPF_CFLAGS := -O2 -g -Wall -Werror -I/usr/include/$(shell uname -m)-linux-gnu
GENERATED := loader/keepbit_bpfel.go loader/keepbit_bpfel.o loader/keepbitcompat_bpfel.go loader/keepbitcompat_bpfel.o loader/baseline_bpfel.go loader/baseline_bpfel.o \
  internal/loadgen/sender_bpfel.go internal/loadgen/sender_bpfel.o internal/loadgen/sink_bpfel.go internal/loadgen/sink_bpfel.o \
  internal/lab/responder_bpfel.go internal/lab/responder_bpfel.o
# -race: every package runs under the race detector (the loader, control and
# VIP tests interleave writers and readers on purpose).
TEST_FLAGS ?= -count=1 -timeout 45m -race
BENCH_FLAGS ?= -run '^$$' -bench . -benchtime 2s -count 1

# Release binaries: static (no cgo, so they run on any glibc or none),
# stamped with `git describe` (keepbitd --version, keepbit_build_info).
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
RELEASE_LDFLAGS := -s -w -X github.com/keepbit/keepbit/internal/version.release=$(VERSION)
RELEASE_BUILD = CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(RELEASE_LDFLAGS)'
# make install DESTDIR=/tmp/root PREFIX=/usr
PREFIX ?= /usr
DESTDIR ?=
UNITDIR ?= /lib/systemd/system
# make package: a .deb built by nfpm (pinned; fetched and built by the Go
# toolchain on first use) into PACKAGE_DIR.
NFPM ?= $(GO) run github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.43.0
DEB_VERSION ?= 0.1.0+git$(shell git rev-parse --short HEAD 2>/dev/null || echo 0)
DEB_ARCH ?= $(shell $(GO) env GOARCH)
PACKAGE_DIR ?= bin

.PHONY: help generate check-generated build install package failover-report bench-compare test test-deps test-kernels bench lint clang demo demo-bgp churn

# Peers the tests run against: keepalived (VRRP interop), HAProxy (comparison), BIRD 2 (BGP and BFD
# interop, the upstream router of the BGP lab), nftables (the kernel path bench-compare measures).
TEST_PACKAGES := keepalived bird2 haproxy nftables
TEST_COMMANDS := keepalived bird haproxy nft

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

clang: ## install the pinned clang and BPF headers with apt-get when missing
	@command -v $(BPF_CLANG) >/dev/null && command -v $(BPF_STRIP) >/dev/null && [ -f /usr/include/bpf/bpf_helpers.h ] || \
	  { echo "installing $(BPF_PACKAGES)"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(BPF_PACKAGES); }

generate: clang ## regenerate the bpf2go output (loader/*_bpfel.*, internal/loadgen/*_bpfel.*, internal/lab/*_bpfel.*) from bpf/*.c
	BPF_CLANG=$(BPF_CLANG) BPF_STRIP=$(BPF_STRIP) BPF_CFLAGS="$(BPF_CFLAGS)" $(GO) generate ./loader ./internal/loadgen ./internal/lab

check-generated: ## fail when the committed bpf2go output does not match bpf/*.c (needs clang)
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && cp $(GENERATED) $$tmp/ && \
	  $(MAKE) --no-print-directory generate >/dev/null && \
	  for f in $(GENERATED); do cmp -s $$f $$tmp/$$(basename $$f) || { echo "stale generated file: $$f (run make generate and commit)"; cp $$tmp/$$(basename $$f) $$f; exit 1; }; done && \
	  echo "generated BPF objects match bpf/*.c"

build: ## build every package, and static, version-stamped binaries into bin/
	$(GO) build ./...
	$(RELEASE_BUILD) -o bin/ ./cmd/keepbitd ./cmd/keepbitctl ./cmd/keepbit-demo

install: ## install keepbitd, keepbitctl, the systemd unit and (when absent) /etc/keepbit/keepbit.yaml under DESTDIR
	$(RELEASE_BUILD) -o bin/ ./cmd/keepbitd ./cmd/keepbitctl
	install -D -m 0755 bin/keepbitd $(DESTDIR)$(PREFIX)/sbin/keepbitd
	install -D -m 0755 bin/keepbitctl $(DESTDIR)$(PREFIX)/bin/keepbitctl
	install -D -m 0644 dist/systemd/keepbitd.service $(DESTDIR)$(UNITDIR)/keepbitd.service
	@# An operator's config is never overwritten.
	[ -e $(DESTDIR)/etc/keepbit/keepbit.yaml ] || install -D -m 0600 dist/keepbit.yaml $(DESTDIR)/etc/keepbit/keepbit.yaml
	@echo "installed; edit /etc/keepbit/keepbit.yaml, then: systemctl daemon-reload && systemctl enable --now keepbitd"

package: ## build the .deb (static binaries, systemd unit, example config) into PACKAGE_DIR with nfpm
	$(RELEASE_BUILD) -o bin/ ./cmd/keepbitd ./cmd/keepbitctl
	mkdir -p $(PACKAGE_DIR)
	DEB_VERSION=$(DEB_VERSION) DEB_ARCH=$(DEB_ARCH) $(NFPM) package --config dist/nfpm.yaml --packager deb --target $(PACKAGE_DIR)/

demo: ## (root) two-node failover lab in namespaces: kill a backend, freeze the master, print the timeline
	$(GO) build -o bin/ ./cmd/keepbitd ./cmd/keepbit-demo
	./bin/keepbit-demo -keepbitd ./bin/keepbitd

demo-bgp: test-deps ## (root) three active-active nodes behind a BIRD 2 router (BGP ECMP, BFD): lose, restore and drain a node, flow sharing; every connection kept
	$(GO) build -o bin/ ./cmd/keepbitd ./cmd/keepbitctl ./cmd/keepbit-demo
	./bin/keepbit-demo -bgp -keepbitd ./bin/keepbitd -keepbitctl ./bin/keepbitctl

test-deps: ## as root, install what the privileged tests run against (keepalived, bird2, haproxy, nftables) when missing
	@missing=0; for c in $(TEST_COMMANDS); do command -v $$c >/dev/null || missing=1; done; \
	if [ "$$(id -u)" = 0 ] && [ $$missing = 1 ]; then \
	  echo "installing $(TEST_PACKAGES)"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(TEST_PACKAGES); fi

# make test-kernels: Debian's kernel packages booted in qemu (TCG; downloaded
# into KERNEL_CACHE, never installed on the host), the loader's tests inside.
KERNELS ?= 5.10 6.1 6.12
KERNEL_TEST_PACKAGES := qemu-system-x86 busybox-static cpio xz-utils curl
test-kernels: ## boot Debian's KERNELS (5.10 6.1 6.12) in qemu and run the loader's packet tests in each (RUN=. for all; 5.10 runs the compatible build)
	@command -v qemu-system-x86_64 >/dev/null && command -v cpio >/dev/null && command -v curl >/dev/null && ldd $$(command -v busybox || echo /nonexistent) 2>&1 | grep -q "not a dynamic" || \
	  { [ "$$(id -u)" = 0 ] || { echo "test-kernels: as root, or install $(KERNEL_TEST_PACKAGES)"; exit 1; }; \
	    echo "installing $(KERNEL_TEST_PACKAGES)"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(KERNEL_TEST_PACKAGES); }
	GO=$(GO) tools/test-kernels/run.sh $(KERNELS)

# The end-to-end lab tests (netns-tests) run after the rest, alone: their
# BFD timers (10-100 ms) and client gaps are timing measurements that the
# loader's CPU-heavy tests running beside them on a 2-core machine would
# distort (a starved daemon misses BFD packets and its routes flap).
UNIT_PACKAGES = $$($(GO) list ./... | grep -v /netns-tests)
# The loader's tests again on the compatible build of the forwarder (the one
# kernels 5.10-5.16 load), but for the churn runs, which test the loader's
# bookkeeping rather than the program.
COMPAT_SKIP := ^TestChurn|^TestReviewFailedCreateLeaksNothing$$
test: test-deps ## run every test under the race detector; as root this includes BPF and network-namespace tests (netns-tests last, alone), the loader's tests on the compatible build, and test-kernels
	$(GO) test $(TEST_FLAGS) $(UNIT_PACKAGES)
	KEEPBIT_TEST_PROGRAM=compat $(GO) test $(TEST_FLAGS) -skip '$(COMPAT_SKIP)' ./loader/
	$(GO) test $(TEST_FLAGS) ./netns-tests/
	@if [ "$$(id -u)" = 0 ] || command -v qemu-system-x86_64 >/dev/null; then $(MAKE) --no-print-directory test-kernels; \
	  else echo "test-kernels skipped: not root and no qemu-system-x86_64 (make test-kernels installs it as root)"; fi

# Runs per scenario of the failover report.
RUNS ?= 20
failover-report: ## (root) every failure scenario RUNS times in the namespace lab with real keepbitd: docs/failover-report.md, .json, charts
	$(GO) build -o bin/ ./cmd/keepbitd ./cmd/failover-report
	./bin/failover-report -runs $(RUNS) -keepbitd bin/keepbitd -out docs

bench-compare: test-deps ## (root) Keepbit's forwarding rate next to the machine's ceiling, and its CPU per packet next to nftables, one run: BENCHMARKS.md, docs/benchmarks/
	$(GO) build -o bin/ ./cmd/bench-compare
	./bin/bench-compare $(BENCH_COMPARE_FLAGS)

bench: ## run the benchmarks (packet cost vs baseline, state change, table switch, maglev)
	$(GO) test $(BENCH_FLAGS) ./...

# The long run of the loader's model-based churn test (the CI run is 4 seeds).
CHURN_SEED ?= 1000
CHURN_SEEDS ?= 20
CHURN_STEPS ?= 5000
churn: ## (root) long randomized churn test of the loader: CHURN_SEEDS seeds from CHURN_SEED, CHURN_STEPS steps each
	$(GO) test -count=1 -timeout 180m -v -run '^TestChurn$$' ./loader/ -args -churn.seed=$(CHURN_SEED) -churn.seeds=$(CHURN_SEEDS) -churn.steps=$(CHURN_STEPS)

lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); [ -z "$$out" ] || { echo "gofmt needed: $$out"; exit 1; }
	$(GO) vet ./...
