#!/usr/bin/env bash
# test-kernels: boot Debian kernels in qemu (downloaded and unpacked, never
# installed on this host) and run the loader's tests inside each one.
#
#   tools/test-kernels/run.sh [KERNEL...]   KERNEL: 5.10, 6.1, 6.12 (default: all)
#
# Each kernel is the newest amd64 image of its Debian suite; the packages
# are checked against the suite's Packages index and cached in
# $KERNEL_CACHE. The guest is a busybox initramfs with the loader's test
# binary (CGO_ENABLED=0 go test -c) and the modules the tests need (veth,
# xfrm_user and nfnetlink: netlink's handles open those families). A
# kernel older than the forwarder's minimum must refuse it with one
# sentence (TestCheckKernelHere, which the guest runs first); any other
# must pass every loader test but the churn runs. Before 5.15 BPF_PROG_RUN
# takes no xdp_md, so the tests whose frames name their ingress port skip
# there and TestForwardWithoutContext tests forwarding (the compatible
# build: 5.10 to 5.16).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
GO=${GO:-go}
MIRROR=${MIRROR:-http://deb.debian.org}
KERNEL_CACHE=${KERNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/keepbit-kernels}
QEMU=${QEMU:-qemu-system-x86_64}
GUEST_MEM=${GUEST_MEM:-1536}
GUEST_CPUS=${GUEST_CPUS:-2}
GUEST_TIMEOUT=${GUEST_TIMEOUT:-900}
# Tests left out in the guest, which `make test` runs natively: the churn
# run and its regressions (each crash and adoption reloads the program:
# about a minute per case under TCG) and TestReviewFailedCreateLeaksNothing
# (loader bookkeeping, not kernel-dependent; 734 s under TCG on 6.1).
SKIP=${SKIP:-'^TestChurn|^TestReviewFailedCreateLeaksNothing$'}
# RUN: the tests to run (go test -run). By default the packet path: the
# kernel check, the verifier's work, every packet table, attach modes,
# flow cache counts, SYN handling, flow sharing, the kernel memory report
# (Linux before 6.4 reports no figure for a ring buffer) and the fuzz seeds, which
# take a few minutes per kernel under TCG. RUN=. runs the whole loader
# suite but SKIP (over 15 minutes per kernel).
RUN=${RUN-'^(TestCheckKernelHere|TestVerifierComplexity|TestForwardWithoutContext|TestRequirementsMatchProgram|TestPacketVerdicts|TestAttachModes|TestFlowTableCounts|TestSynRetransmits|TestSynReusedTuple|TestForgetFlows|TestSharedFlows|TestFlowReportMoved|TestFlowReportLongLived|TestKernelMemory|FuzzXDP)$'}
MODULES=(veth xfrm_user nfnetlink)

# kernel -> "suite-index-url package-regex"
declare -A SOURCES=(
	[5.10]="$MIRROR/debian/dists/bullseye/main/binary-amd64/Packages.xz ^linux-image-5\.10\.0-[0-9]+-amd64-unsigned$"
	[6.1]="$MIRROR/debian/dists/bookworm/main/binary-amd64/Packages.xz ^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$"
	[6.12]="$MIRROR/debian-security/dists/bookworm-security/main/binary-amd64/Packages.xz ^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$"
)

die() { echo "test-kernels: $*" >&2; exit 1; }
for cmd in "$QEMU" busybox cpio xz dpkg-deb curl gzip sha256sum; do
	command -v "$cmd" >/dev/null || die "$cmd is missing (make test-kernels installs it)"
done
bb=$(command -v busybox)
grep -q "not a dynamic" <<<"$(ldd "$bb" 2>&1 || true)" ||
	die "$bb is not static (install busybox-static)"

kernels=("$@")
[ ${#kernels[@]} -gt 0 ] || kernels=(5.10 6.1 6.12)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$KERNEL_CACHE"

# fetch KERNEL: the newest matching package, verified, unpacked; prints its dir.
fetch() {
	local k=$1 url re idx stanza pkg file sum dir
	read -r url re <<<"${SOURCES[$k]:-}"
	[ -n "$url" ] || die "unknown kernel $k (known: ${!SOURCES[*]})"
	idx="$work/Packages.$k"
	curl -fsSL "$url" | xz -d >"$idx" || die "download $url"
	pkg=$(grep -E "^Package: " "$idx" | cut -d' ' -f2 | grep -E "$re" | sort -V | tail -1)
	[ -n "$pkg" ] || die "no package matching $re in $url"
	stanza=$(awk -v p="$pkg" '$0=="Package: "p{s=1} s&&/^$/{exit} s' "$idx")
	file=$(sed -n 's/^Filename: //p' <<<"$stanza")
	sum=$(sed -n 's/^SHA256: //p' <<<"$stanza")
	local deb="$KERNEL_CACHE/$(basename "$file")"
	if ! echo "$sum  $deb" | sha256sum -c --status 2>/dev/null; then
		echo "test-kernels: downloading $(basename "$file")" >&2
		curl -fsSL -o "$deb.part" "${url%%/dists/*}/$file" || die "download $file"
		echo "$sum  $deb.part" | sha256sum -c --status || die "$file: SHA256 differs from the Packages index"
		mv "$deb.part" "$deb"
	fi
	dir="$KERNEL_CACHE/${pkg}"
	if [ ! -f "$dir/.unpacked" ]; then
		rm -rf "$dir" && mkdir -p "$dir"
		dpkg-deb -x "$deb" "$dir"
		touch "$dir/.unpacked"
	fi
	echo "$dir"
}

# modules ROOT RELEASE DEST: the modules the tests need and their
# dependencies (read from each module's depends= tag: the package has no
# modules.dep, depmod runs at install), decompressed (busybox insmod reads
# plain .ko), with their load order in DEST/order.
modules() {
	local root=$1 rel=$2 dest=$3 moddir
	moddir="$root/lib/modules/$rel"
	[ -d "$moddir" ] || moddir="$root/usr/lib/modules/$rel"
	[ -f "$moddir/modules.order" ] || die "$moddir/modules.order missing"
	mkdir -p "$dest"
	: >"$dest/order"
	local -A seen=()
	add() { # module name, - or _
		local m=${1//-/_} path file dep
		[ -n "${seen[$m]:-}" ] && return
		seen[$m]=1
		path=$(awk -v m="$m" '{n=$0; sub(/.*\//,"",n); sub(/\.ko(\.(xz|zst|gz))?$/,"",n); gsub("-","_",n); if (n==m) {print; exit}}' "$moddir/modules.order")
		if [ -z "$path" ]; then
			grep -q "/${m}\.ko" "$moddir/modules.builtin" 2>/dev/null || grep -q "/${1}\.ko" "$moddir/modules.builtin" 2>/dev/null ||
				die "module $1 is neither built into $rel nor shipped with it"
			return
		fi
		path=${path#kernel/}
		file="$dest/$m.ko"
		case $(ls "$moddir/kernel/$path"*) in
		*.ko.xz) xz -dc "$moddir/kernel/${path%.xz}.xz" >"$file" ;;
		*.ko.zst) zstd -dcq "$moddir/kernel/${path%.zst}.zst" >"$file" ;;
		*) cp "$moddir/kernel/$path" "$file" ;;
		esac
		for dep in $(tr '\0' '\n' <"$file" | sed -n 's/^depends=//p' | tr ',' ' '); do add "$dep"; done
		echo "$m.ko" >>"$dest/order"
	}
	local m
	for m in "${MODULES[@]}"; do add "$m"; done
}

echo "test-kernels: building the loader's test binary (static)" >&2
(cd "$repo" && CGO_ENABLED=0 $GO test -c -o "$work/loader.test" ./loader/)

results=()
status=0
for k in "${kernels[@]}"; do
	root=$(fetch "$k")
	vmlinuz=$(ls "$root"/boot/vmlinuz-* | head -1)
	rel=${vmlinuz##*/vmlinuz-}
	g="$work/guest-$k"
	mkdir -p "$g"/{bin,proc,sys,dev,tmp,run,work,modules}
	cp "$bb" "$g/bin/busybox"
	cp "$here/init" "$g/init" && chmod +x "$g/init"
	cp "$work/loader.test" "$g/work/"
	cp -r "$repo/loader/testdata" "$g/work/"
	modules "$root" "$rel" "$g/modules"
	printf '%s\n' -test.v -test.count=1 -test.timeout=20m -test.skip "$SKIP" ${RUN:+-test.run "$RUN"} >"$g/work/args"
	(cd "$g" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initrd-$k.gz"
	log="$work/console-$k.log"
	echo "test-kernels: $rel: booting" >&2
	start=$(date +%s)
	timeout "$GUEST_TIMEOUT" "$QEMU" -machine q35 -accel tcg -cpu max -smp "$GUEST_CPUS" -m "$GUEST_MEM" \
		-nographic -no-reboot -kernel "$vmlinuz" -initrd "$work/initrd-$k.gz" \
		-append "console=ttyS0 panic=-1 quiet loglevel=3" >"$log" 2>&1 || true
	secs=$(($(date +%s) - start))
	code=$(sed -n 's/.*keepbit-guest: exit \([0-9]*\).*/\1/p' "$log" | tail -1)
	insns=$(sed -n 's/.*keepbit_xdp (\([a-z]*\) build): \([0-9]*\) instructions processed by the verifier.*/\1 \2/p' "$log" | tr -d '\r' | paste -sd, - | sed 's/,/, /g')
	tests=$(grep -c -- '^--- PASS' "$log" || true)
	fails=$(grep -- '^--- FAIL' "$log" | cut -d' ' -f3 | tr '\n' ' ' || true)
	line="$rel: "
	if [ "$code" = 0 ]; then
		if grep -q "keepbit-guest: refused" "$log"; then
			line+="refused, as a kernel below the minimum must be: $(grep -o 'lacks [^,]*' "$log" | head -1 | tr -d '\r')"
		else
			line+="$tests tests passed, verifier insns: ${insns:-?}"
		fi
	else
		status=1
		line+="FAILED (exit ${code:-none}${fails:+: $fails}); console log:"
		tail -60 "$log" >&2
	fi
	results+=("$line, ${secs}s")
	echo "test-kernels: $line" >&2
done
echo
echo "test-kernels results (qemu TCG, $GUEST_CPUS CPUs, $(git -C "$repo" rev-parse --short HEAD)):"
printf '  %s\n' "${results[@]}"
exit $status
