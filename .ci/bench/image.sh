#!/bin/bash
# The whole `bellbuild image` command, cold, as a process, against the shell
# way to make the same initramfs and against the compressor alone:
#
#   bellbuild  bin/bellbuild image bench -C SITE -o OUT, the site's one
#              profile a {dir: ROOT} stage with the host's kernel; an empty
#              segment cache (BELLBUILD_CACHE) and an empty OUT each run
#   pipeline   cd ROOT && find . | sort | cpio -o -H newc | zstd -3 -T2
#   zstd       zstd -3 -T2 of that pipeline's cpio bytes (made once before the
#              runs, read from the page cache): the compressor's limit
#   writer     bellbuild's own compressor (compress.ZstdWriter, built from
#              .ci/bench/zstd_writer.go) on the same cpio bytes, as zstd
#              takes them: the bake's stage segment without the walk, the
#              8,000 reads, the hashing and the second copy, so that
#              bellbuild / writer is what the bake adds and writer / zstd
#              what our encoder costs against C zstd's
#   own        zstd -3 -T2 of the bytes bellbuild compresses: its initramfs
#              decompressed (the stage with the kernel's modules, the
#              applier, the configuration), made once after the warm-up
#              round. own / zstd is the least the goal's ratio can be: C
#              zstd doing only the command's compression, nothing else
#
#   .ci/bench/image.sh [RUNS]    (default 5; needs root only to make the root)
#
# ROOT is $BELLBUILD_BENCH_ROOT, else the Debian root the issue names
# (debootstrap --variant=minbase --include=systemd,systemd-sysv,openssh-server
# bookworm) as the bake's own debootstrap stage caches it under
# CACHE/debootstrap/KEY/root (CACHE: $BELLBUILD_CACHE, else
# ${XDG_CACHE_HOME:-~/.cache}/bellbuild, as for the bake); when there is
# none, it is made there once through that stage (root, debootstrap, a
# Debian mirror). $KERNEL (default /vmlinuz) is the kernel; $BELLBUILD_BIN
# the binary (default bin/bellbuild, built when missing). $BELLBUILD_BASE,
# when set, is another bellbuild binary (an older version, say) timed the
# same way in the same rotation, with its ratios and bellbuild's to it;
# $APPLIER, when set, is the static binary both embed as the applier
# (default: each itself): pin it and the two must make the same bytes.
#
# Each run times the contenders one after the other, the order rotating
# from run to run; before each, the previous outputs are deleted and `sync` writes
# back what is dirty, outside the clock. Everything reads a warm page cache
# (one untimed round first). Wall and CPU (user + system, of the process
# and its children: bash's `time`) per run, then the ratios of bellbuild
# to each, per run and as min/median/max. bellbuild's output is fsynced
# (it must be: it replaces OUT/PROFILE atomically); the other two are not.
# On a shared machine compare the CPU columns; the load average is printed
# at the start and at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
# One sort order for find | sort, whatever the caller's locale.
export LC_ALL=C
RUNS=${1:-5}
BIN=${BELLBUILD_BIN:-$PWD/bin/bellbuild}
KERNEL=${KERNEL:-/vmlinuz}
for t in find sort cpio zstd; do command -v $t >/dev/null || { echo "image.sh: $t missing (make deps)" >&2; exit 1; }; done
[ -e "$KERNEL" ] || { echo "image.sh: no kernel at $KERNEL (apt-get install linux-image-amd64, or set KERNEL)" >&2; exit 1; }
[ -x "$BIN" ] || make build >/dev/null

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
go build -o "$TMP/zstd-writer" .ci/bench/zstd_writer.go

# The root.
ROOT=${BELLBUILD_BENCH_ROOT:-}
if [ -z "$ROOT" ]; then
	# The recipe as the bake writes it into its cache entry's done file.
	recipe='--variant=minbase --include=openssh-server,systemd,systemd-sysv bookworm '
	cache=${BELLBUILD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bellbuild}
	find_root() {
		local d
		for d in "$cache"/debootstrap/*/; do
			if [ -f "$d/done" ] && grep -q -- "^$recipe" "$d/done"; then
				echo "${d%/}/root"
				return
			fi
		done
	}
	ROOT=$(find_root)
	if [ -z "$ROOT" ]; then
		echo "image.sh: making the debootstrap root once in $cache (a few minutes)" >&2
		mkdir -p "$TMP/dbsite/profiles"
		cat >"$TMP/dbsite/profiles/root.yaml" <<EOF
stage:
  debootstrap: {suite: bookworm, variant: minbase, include: [systemd, systemd-sysv, openssh-server]}
kernel: {path: $KERNEL}
EOF
		echo 'nodes: []' >"$TMP/dbsite/nodes.yaml"
		BELLBUILD_CACHE=$cache "$BIN" image root -C "$TMP/dbsite" -o "$TMP/dbout" >/dev/null
		rm -rf "$TMP/dbsite" "$TMP/dbout"
		ROOT=$(find_root)
		[ -n "$ROOT" ] || { echo "image.sh: debootstrap left no root in $cache/debootstrap" >&2; exit 1; }
	fi
fi
[ -d "$ROOT" ] || { echo "image.sh: $ROOT is not a directory" >&2; exit 1; }
ROOT=$(cd "$ROOT" && pwd -P)

# The site: one profile, the root as a dir stage.
mkdir -p "$TMP/site/profiles"
cat >"$TMP/site/profiles/bench.yaml" <<EOF
stage: {dir: "$ROOT"}
kernel: {path: $KERNEL}
cmdline: [console=ttyS0]
conf:
  sysctl: {vm.swappiness: 10}
EOF
echo 'nodes: []' >"$TMP/site/nodes.yaml"

# The cpio bytes for bare zstd, made once (this also reads the whole root
# into the page cache).
(cd "$ROOT" && find . | sort | cpio -o -H newc --quiet) >"$TMP/root.cpio"
entries=$(cd "$ROOT" && find . | wc -l)

TIMEFORMAT='%3R %3U %3S'
# timed NAME: runs the contender NAME once, cold, and prints "wall cpu size"
# (seconds, seconds, bytes of output).
timed() {
	rm -rf "$TMP/out" "$TMP/cache" "$TMP/pipe.zst" "$TMP/bare.zst" "$TMP/writer.zst" "$TMP/own.zst"
	mkdir "$TMP/out" "$TMP/cache"
	sync
	local t size bin=$BIN
	case $1 in
	bellbuild | base)
		[ "$1" = base ] && bin=$BELLBUILD_BASE
		t=$({ time BELLBUILD_CACHE="$TMP/cache" "$bin" image bench -C "$TMP/site" -o "$TMP/out" ${APPLIER:+--applier "$APPLIER"} >"$TMP/$1.out" 2>"$TMP/$1.err"; } 2>&1) || {
			cat "$TMP/$1.err" >&2
			return 1
		}
		size=$(awk '/initramfs.cpio.zst/ {print $2}' "$TMP/$1.out")
		awk '/initramfs.cpio.zst/ {print $3}' "$TMP/$1.out" >>"$TMP/$1.sums"
		;;
	pipeline)
		t=$({ time (cd "$ROOT" && set -o pipefail && find . | sort | cpio -o -H newc --quiet | zstd -3 -T2 -q -f -o "$TMP/pipe.zst"); } 2>&1)
		size=$(stat -c %s "$TMP/pipe.zst")
		;;
	zstd)
		t=$({ time zstd -3 -T2 -q -f "$TMP/root.cpio" -o "$TMP/bare.zst"; } 2>&1)
		size=$(stat -c %s "$TMP/bare.zst")
		;;
	writer)
		t=$({ time "$TMP/zstd-writer" "$TMP/root.cpio" "$TMP/writer.zst" >/dev/null; } 2>&1)
		size=$(stat -c %s "$TMP/writer.zst")
		;;
	own)
		t=$({ time zstd -3 -T2 -q -f "$TMP/own.cpio" -o "$TMP/own.zst"; } 2>&1)
		size=$(stat -c %s "$TMP/own.zst")
		;;
	esac
	echo "$t" | awk -v size="$size" '{printf "%.3f %.3f %s\n", $1, $2 + $3, size}'
}

names=(bellbuild pipeline zstd writer own)
[ -n "${BELLBUILD_BASE:-}" ] && names=(bellbuild base pipeline zstd writer own)
# Warm-up round, untimed: page cache, the binaries, the cpio tool; own's
# bytes are bellbuild's initramfs, decompressed.
timed bellbuild >/dev/null
zstd -dc "$TMP/out/bench/initramfs.cpio.zst" >"$TMP/own.cpio"
for n in "${names[@]}"; do timed $n >/dev/null; done
rm -f "$TMP"/*.sums
echo "# image.sh $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+dirty') bellbuild=$BIN${BELLBUILD_BASE:+ base=$BELLBUILD_BASE}"
echo "# root: $ROOT ($entries entries, $(stat -c %s "$TMP/root.cpio") bytes of newc)"
echo "# machine: $(nproc) CPUs, $(uname -r); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
# The ratios reported: bellbuild (and base) to pipeline and to zstd,
# bellbuild to base, the goal's ratio split in two: bellbuild to writer
# (what the bake adds) and writer to zstd (the encoders), and own to zstd
# (C zstd on the command's bytes: the floor of the goal's ratio).
pairs=("bellbuild pipeline" "bellbuild zstd" "bellbuild writer" "writer zstd" "own zstd")
[ -n "${BELLBUILD_BASE:-}" ] && pairs+=("base pipeline" "base zstd" "bellbuild base")
header="| run | order |"
for n in "${names[@]}"; do header+=" $n wall / CPU s |"; done
for p in "${pairs[@]}"; do header+=" ${p/ / \/ } wall, CPU |"; done
echo "$header"
echo "$header" | sed 's/[^|]//g; s/|/|---/g; s/---$//'
declare -A w c size
for ((r = 1; r <= RUNS; r++)); do
	order=()
	for ((k = 0; k < ${#names[@]}; k++)); do order+=("${names[(r - 1 + k) % ${#names[@]}]}"); done
	for n in "${order[@]}"; do
		read -r w[$n] c[$n] size[$n] < <(timed $n)
		[ -n "${size[$n]}" ] || exit 1
	done
	row="| $r | ${order[*]} |"
	for n in "${names[@]}"; do row+=" ${w[$n]} / ${c[$n]} |"; done
	for p in "${pairs[@]}"; do
		set -- $p
		ratio=$(awk -v a="${w[$1]}" -v b="${w[$2]}" -v x="${c[$1]}" -v y="${c[$2]}" 'BEGIN{printf "%.3f %.3f", a/b, x/y}')
		echo "$ratio" >>"$TMP/ratio.${p/ /.}"
		row+=" ${ratio/ /, } |"
	done
	echo "$row"
done
# min / median / max of a column of numbers.
stats() { sort -g | awk '{v[NR]=$1} END{m=(NR%2)?v[(NR+1)/2]:(v[NR/2]+v[NR/2+1])/2; printf "%.3f / %.3f / %.3f", v[1], m, v[NR]}'; }
echo
echo "ratios over the $RUNS runs (min / median / max):"
for p in "${pairs[@]}"; do
	f=$TMP/ratio.${p/ /.}
	printf '  %-22s wall %s   CPU %s\n' "${p/ / / }" "$(cut -d' ' -f1 "$f" | stats)" "$(cut -d' ' -f2 "$f" | stats)"
done
echo "bytes out: bellbuild ${size[bellbuild]} (initramfs: stage with modules, applier, configuration)${BELLBUILD_BASE:+, base ${size[base]}}, pipeline ${size[pipeline]}, zstd ${size[zstd]}, writer ${size[writer]} (the stage's cpio alone), own ${size[own]} (of $(stat -c %s "$TMP/own.cpio") bytes)"
for n in bellbuild base; do
	[ -f "$TMP/$n.sums" ] && echo "$n initramfs sha256 over the runs: $(sort -u "$TMP/$n.sums" | tr '\n' ' ')"
done
echo "bellbuild's steps, last run:"
sed -n 's/^time=[^ ]* level=INFO msg="bake: \(.*\)" step=\([^ ]*\) took=\([^ ]*\).*/  \2 \1: \3/p' "$TMP/bellbuild.err"
echo "# load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
