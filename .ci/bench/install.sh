#!/bin/bash
# The install of a disk image over the network, the installer's copy
# against `curl | dd`, side by side in the same setup (issue 17):
#
#   install    the installer's copy path (firstboot/fetch.Copy, through
#              .ci/bench/install_copy.go): the ESP's and root-a's extents of
#              disk.raw from serve's /image/MAC/disk, SHA-256 checked as they
#              come, O_DIRECT onto the target, fsynced
#   curl|dd    the same extents, each `curl -s -r RANGE URL | dd of=TARGET
#              bs=1M iflag=fullblock oflag=direct,seek_bytes seek=OFFSET
#              conv=fsync` (fullblock: O_DIRECT takes only whole blocks, and a
#              pipe hands out what it has)
#
#   .ci/bench/install.sh [RUNS]    (default 5; needs root)
#
# Topology (namespaces made here, random names, deleted on exit):
#   SRV: s0 198.51.100.1/24 — `bellbuild serve` (HTTP only) of OUT
#   CLI: c0 198.51.100.2/24 — both contenders, writing to a loop device
# The image is a bake (outputs: [raw]) of a profile whose stage is a root
# directory: $BELLBUILD_BENCH_ROOT, else /var/cache/bellbuild-bench/root,
# else the debootstrap root the issue names (debootstrap --variant=minbase
# --include=systemd,systemd-sysv,openssh-server bookworm) as the bake's
# debootstrap stage caches it under CACHE/debootstrap/KEY/root (CACHE:
# $BELLBUILD_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/bellbuild); with none
# of them, a root of 300 MB of random bytes (incompressible: its disk's
# root extent is about as big). $KERNEL (default /vmlinuz) is the kernel,
# $BELLBUILD_BIN the binary (default bin/bellbuild, built when missing).
#
# The target is a loop device (losetup --direct-io=on) over a sparse file
# of disk.raw's size under /var/tmp, detached on exit; where loop devices
# cannot be made, the file itself (both contenders open it O_DIRECT;
# said in the output). Each run times the two one after the other, the
# order alternating from run to run, after an untimed round (serve's page
# cache, the target's blocks allocated); `sync` before each, outside the
# clock. MB/s is extent bytes (10^6) over wall time, process start to
# fsync; the ratio is install's MB/s over curl|dd's (issue 17's goal:
# 0.9 or more). The load average is printed at the start and at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-5}
BIN=${BELLBUILD_BIN:-$PWD/bin/bellbuild}
KERNEL=${KERNEL:-/vmlinuz}
[ "$(id -u)" = 0 ] || { echo "install.sh: needs root (network namespaces, loop devices)" >&2; exit 1; }
for t in ip curl dd go; do command -v $t >/dev/null || { echo "install.sh: $t missing" >&2; exit 1; }; done
[ -e "$KERNEL" ] || { echo "install.sh: no kernel at $KERNEL (apt-get install linux-image-amd64, or set KERNEL)" >&2; exit 1; }
[ -x "$BIN" ] || make build >/dev/null

TMP=$(mktemp -d /var/tmp/bellbuild-install-bench.XXXXXX)
id=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
SRV=bbisrv-$id CLI=bbicli-$id
PID= LOOP=
cleanup() {
	[ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
	[ -n "$LOOP" ] && losetup -d "$LOOP" 2>/dev/null || true
	ip netns del $SRV 2>/dev/null || true
	ip netns del $CLI 2>/dev/null || true
	rm -rf "$TMP"
}
trap cleanup EXIT

# 1. The root, and the bake.
ROOT=${BELLBUILD_BENCH_ROOT:-} ROOTNOTE=
[ -z "$ROOT" ] && [ -d /var/cache/bellbuild-bench/root ] && ROOT=/var/cache/bellbuild-bench/root
if [ -z "$ROOT" ]; then
	recipe='--variant=minbase --include=openssh-server,systemd,systemd-sysv bookworm '
	cache=${BELLBUILD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bellbuild}
	for d in "$cache"/debootstrap/*/; do
		if [ -f "$d/done" ] && grep -q -- "^$recipe" "$d/done"; then
			ROOT=${d%/}/root
			break
		fi
	done
fi
if [ -z "$ROOT" ]; then
	echo "install.sh: no debootstrap root cached: a root of 300 MB of random bytes instead" >&2
	ROOT=$TMP/root ROOTNOTE="300 MB of random bytes"
	mkdir -p "$ROOT/etc" "$ROOT/var/lib/bench"
	head -c 300M /dev/urandom >"$ROOT/var/lib/bench/data"
fi
[ -d "$ROOT" ] || { echo "install.sh: $ROOT is not a directory" >&2; exit 1; }
ROOT=$(cd "$ROOT" && pwd -P)
MAC=52:54:00:00:00:01
mkdir -p "$TMP/site/profiles"
cat >"$TMP/site/profiles/bench.yaml" <<EOF
stage: {dir: "$ROOT"}
kernel: {path: $KERNEL}
cmdline: [console=ttyS0]
outputs: [raw]
EOF
printf 'nodes:\n- {name: bench-1, mac: "%s", profile: bench}\n' $MAC >"$TMP/site/nodes.yaml"
BELLBUILD_CACHE="$TMP/cache" "$BIN" image bench -C "$TMP/site" -o "$TMP/out" >"$TMP/bake.log" 2>&1 ||
	{ cat "$TMP/bake.log" >&2; exit 1; }
rm -rf "$TMP/cache" "$TMP/root"
DISK=$TMP/out/bench/disk.raw
go build -o "$TMP/install-copy" .ci/bench/install_copy.go

# 2. The namespaces, and serve.
ip netns add $SRV
ip netns add $CLI
ip -n $SRV link set lo up
ip -n $CLI link set lo up
ip -n $SRV link add s0 type veth peer name c0 netns $CLI
ip -n $SRV addr add 198.51.100.1/24 dev s0
ip -n $CLI addr add 198.51.100.2/24 dev c0
ip -n $SRV link set s0 up
ip -n $CLI link set c0 up
ip netns exec $SRV "$BIN" serve -C "$TMP/site" --interface s0 --dhcp off --tftp-addr off --https-addr off \
	--http-addr 198.51.100.1:8080 --artifacts "$TMP/out" --state "$TMP/state" >"$TMP/serve.log" 2>&1 &
PID=$!
for _ in $(seq 100); do
	grep -q 'msg=serving' "$TMP/serve.log" && break
	kill -0 $PID 2>/dev/null || { cat "$TMP/serve.log" >&2; exit 1; }
	sleep 0.1
done
URL=http://198.51.100.1:8080/image/$MAC
ip netns exec $CLI "$TMP/install-copy" ranges "$URL" >"$TMP/ranges"
BYTES=$(awk '{s += $3} END {print s}' "$TMP/ranges")

# 3. The target.
truncate -s "$(stat -c %s "$DISK")" "$TMP/target.img"
if LOOP=$(losetup --find --show --direct-io=on "$TMP/target.img" 2>"$TMP/losetup.err"); then
	TARGET=$LOOP
	tnote="loop device $LOOP (direct I/O to its file)"
else
	LOOP=
	TARGET=$TMP/target.img
	tnote="a file, O_DIRECT (no loop device: $(head -1 "$TMP/losetup.err"))"
fi

# timed NAME: one run of NAME; prints its wall seconds.
timed() {
	sync
	local t0 t1 off size name
	t0=$(date +%s.%N)
	case $1 in
	install)
		ip netns exec $CLI "$TMP/install-copy" "$URL" "$TARGET" >"$TMP/install.out"
		;;
	curl)
		while read -r name off size; do
			ip netns exec $CLI sh -c "curl -sf -r $off-$((off + size - 1)) '$URL/disk' |
				dd of='$TARGET' bs=1M iflag=fullblock oflag=direct,seek_bytes seek=$off conv=fsync,notrunc status=none" </dev/null
		done <"$TMP/ranges"
		;;
	esac
	t1=$(date +%s.%N)
	awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f\n", b - a}'
}

timed install >/dev/null
timed curl >/dev/null
read -r _ _ direct <"$TMP/install.out"
echo "# install.sh $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+dirty') bellbuild=$BIN"
echo "# image: ${ROOTNOTE:-$ROOT} baked with outputs [raw]; disk.raw $(stat -c %s "$DISK") bytes, extents $(awk '{printf "%s%s %d", (NR > 1 ? ", " : ""), $1, $3}' "$TMP/ranges") = $BYTES bytes a run"
echo "# target: $tnote; install's O_DIRECT: $direct"
echo "# machine: $(nproc) CPUs, $(uname -r); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| run | order | install s / MB/s | curl\|dd s / MB/s | install / curl\|dd |"
echo "|---|---|---|---|---|"
rate() { awk -v b="$BYTES" -v t="$1" 'BEGIN {printf "%.1f", b / 1e6 / t}'; }
declare -A s
for ((r = 1; r <= RUNS; r++)); do
	if ((r % 2)); then order=(install curl); else order=(curl install); fi
	for n in "${order[@]}"; do s[$n]=$(timed $n); done
	ri=$(rate "${s[install]}") rc=$(rate "${s[curl]}")
	ratio=$(awk -v a="$ri" -v b="$rc" 'BEGIN {printf "%.3f", a / b}')
	echo "$ratio" >>"$TMP/ratios"
	echo "| $r | ${order[*]} | ${s[install]} / $ri | ${s[curl]} / $rc | $ratio |"
done
stats() { sort -g | awk '{v[NR]=$1} END{m=(NR%2)?v[(NR+1)/2]:(v[NR/2]+v[NR/2+1])/2; printf "%.3f / %.3f / %.3f", v[1], m, v[NR]}'; }
echo
echo "install / curl|dd over the $RUNS runs (min / median / max): $(stats <"$TMP/ratios")"
echo "# load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
