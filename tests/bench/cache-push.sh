#!/usr/bin/env bash
# Benchmark of issue #12 (publishing): `ksbuild cache push --compression xz` against
# `nix copy --to file://…?compression=xz` (Nix's defaults otherwise) of the same ~100 MB of
# store paths, in one run. Target: ksbuild ≤ 0.7× Nix's time.
# Usage: tests/bench/cache-push.sh [RUNS]   (default 3; prints medians, MB/s of NAR, ratio)
# The paths are built from this machine's own binaries and libraries (compressible as a
# kernel and its modules are): one ~60 MB file ("the kernel") and a ~40 MB tree of files
# ("the modules") split into 4 paths. Both stores hold the same paths (same hashes); each
# run starts from an empty cache. The page cache is warmed first.
set -euo pipefail
RUNS=${1:-3}
cd "$(dirname "$0")/../.."
cargo build --release --quiet
KS=${KS:-$PWD/target/release/ksbuild}
export NIX_CONFIG=$'experimental-features = nix-command flakes\nsubstituters =\nbuild-users-group ='
command -v nix >/dev/null || { echo "real Nix is needed: .ci/install-nix" >&2; exit 1; }

# A directory of its own under BENCH_DIR (default /var/tmp): never BENCH_DIR itself, which
# the EXIT trap would delete with everything else in it.
WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/ksbuild-bench.XXXXXX")
trap 'chmod -R u+w "$WORK" 2>/dev/null || true; rm -rf "$WORK"' EXIT
export XDG_CACHE_HOME=$WORK/xdg
mkdir -p "$WORK/src/kernel" "$WORK/src/modules"

# "The kernel": ~60 MB of shared libraries, concatenated into one file.
find /usr/lib /usr/bin -type f -size +100k 2>/dev/null | sort | head -n 2000 \
  | xargs cat 2>/dev/null | head -c 60000000 > "$WORK/src/kernel/vmlinux" || true
# "The modules": ~40 MB of smaller files, in 4 paths of ~10 MB.
i=0; total=0
while read -r f; do
  part=$((total / 10000000))
  [ "$part" -ge 4 ] && break
  mkdir -p "$WORK/src/modules/m$part/kernel"
  cp "$f" "$WORK/src/modules/m$part/kernel/$i.ko"
  total=$((total + $(stat -c %s "$f"))); i=$((i + 1))
done < <(find /usr/lib /usr/share -type f -size -200k -size +4k 2>/dev/null | sort)
cat "$WORK"/src/kernel/* "$WORK"/src/modules/*/kernel/* > /dev/null   # warm the page cache

KS_PATHS=(); NIX_PATHS=()
for src in "$WORK/src/kernel" "$WORK"/src/modules/m*; do
  KS_PATHS+=("$("$KS" --store "$WORK/ks" store add "$src")")
  NIX_PATHS+=("$(nix-store --store "$WORK/nixroot" --add "$src")")
done
[ "${KS_PATHS[*]}" = "${NIX_PATHS[*]}" ] || { echo "store paths differ!" >&2; exit 1; }
bytes=$("$KS" --store "$WORK/ks" store path-info --json "${KS_PATHS[@]}" \
  | python3 -c 'import json,sys; print(sum(p["narSize"] for p in json.load(sys.stdin)))')

now() { date +%s.%N; }
# median of RUNS timings of a command; $2 = setup run before each timing (untimed)
measure() {
  local cmd=$1 setup=${2:-true} times=()
  for _ in $(seq "$RUNS"); do
    eval "$setup"
    local t0 t1; t0=$(now); eval "$cmd" > /dev/null 2>&1; t1=$(now)
    times+=("$(echo "$t1 - $t0" | bc -l)")
  done
  printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}

echo "${#KS_PATHS[@]} paths, $bytes bytes of NAR; $RUNS runs each, median seconds; $(nproc) CPUs"
ks_xz=$(measure "$KS --store $WORK/ks cache push --compression xz --to file://$WORK/ks-cache ${KS_PATHS[*]}" "rm -rf $WORK/ks-cache")
nix_xz=$(measure "nix copy --store $WORK/nixroot --to 'file://$WORK/nix-cache?compression=xz' ${NIX_PATHS[*]}" "rm -rf $WORK/nix-cache")
ks_zstd=$(measure "$KS --store $WORK/ks cache push --compression zstd --to file://$WORK/ks-zstd ${KS_PATHS[*]}" "rm -rf $WORK/ks-zstd")
nix_zstd=$(measure "nix copy --store $WORK/nixroot --to 'file://$WORK/nix-zstd?compression=zstd' ${NIX_PATHS[*]}" "rm -rf $WORK/nix-zstd")
# Both caches describe the same NARs.
for p in "${KS_PATHS[@]}"; do
  h=$(basename "$p" | cut -c1-32)
  [ "$(grep '^NarHash' "$WORK/ks-cache/$h.narinfo")" = "$(grep '^NarHash' "$WORK/nix-cache/$h.narinfo")" ] \
    || { echo "NarHash of $p differs!" >&2; exit 1; }
done
size() { du -sb "$1/nar" | cut -f1; }

mbps() { echo "scale=1; $bytes / $1 / 1000000" | bc -l; }
printf '\n%-44s %10s %10s %14s\n' "operation" "seconds" "MB/s" "NARs (bytes)"
printf '%-44s %10.3f %10s %14s\n' "ksbuild cache push --compression xz" "$ks_xz" "$(mbps "$ks_xz")" "$(size "$WORK/ks-cache")"
printf '%-44s %10.3f %10s %14s\n' "nix copy --to file://…?compression=xz" "$nix_xz" "$(mbps "$nix_xz")" "$(size "$WORK/nix-cache")"
printf '%-44s %10.3f %10s %14s\n' "ksbuild cache push --compression zstd" "$ks_zstd" "$(mbps "$ks_zstd")" "$(size "$WORK/ks-zstd")"
printf '%-44s %10.3f %10s %14s\n' "nix copy --to file://…?compression=zstd" "$nix_zstd" "$(mbps "$nix_zstd")" "$(size "$WORK/nix-zstd")"
printf '\nxz push time, ksbuild/nix:   %.2fx   (target <= 0.7x)\n' "$(echo "$ks_xz / $nix_xz" | bc -l)"
printf 'zstd push time, ksbuild/nix: %.2fx\n' "$(echo "$ks_zstd / $nix_zstd" | bc -l)"
