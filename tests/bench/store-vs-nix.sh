#!/usr/bin/env bash
# Benchmark of issue #2: ksbuild against Nix 2.8 on the same ~500 MB tree, in one run.
#   NAR hashing:        `ksbuild hash path`  vs `nix hash path`       (target: ≥ 1.0× Nix's throughput)
#   adding to a store:  `ksbuild store add`  vs `nix-store --add`     (target: ≤ 0.5× Nix's time), both into fresh stores
# Usage: tests/bench/store-vs-nix.sh [RUNS]   (default 5; prints medians and ratios)
# The tree is 10 dirs × (100 files of 500 kB + 100 of 1 kB) of random bytes, as in
# ../shared/reference/nix-formats.md §9. Page cache is warmed first; stores live beside the tree.
set -euo pipefail
RUNS=${1:-5}
cd "$(dirname "$0")/../.."
cargo build --release --quiet
KS=$PWD/target/release/ksbuild
export NIX_CONFIG=$'experimental-features = nix-command flakes\nsubstituters =\nbuild-users-group ='
command -v nix >/dev/null || { echo "real Nix is needed: .ci/install-nix" >&2; exit 1; }

# A directory of its own under BENCH_DIR (default /var/tmp): never BENCH_DIR itself, which
# the EXIT trap would delete with everything else in it.
WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/ksbuild-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
TREE=$WORK/big
if [ ! -d "$TREE" ]; then
  mkdir -p "$TREE"
  for d in $(seq 0 9); do
    mkdir -p "$TREE/d$d"
    head -c $((100 * 500000 + 100 * 1000)) /dev/urandom > "$WORK/blob"
    for f in $(seq 0 99); do
      dd if="$WORK/blob" of="$TREE/d$d/big$f" bs=500000 skip=$f count=1 status=none
      dd if="$WORK/blob" of="$TREE/d$d/small$f" bs=1000 skip=$((50000 + f)) count=1 status=none
    done
  done
  rm -f "$WORK/blob"
fi
bytes=$(du -sb "$TREE" | cut -f1)
files=$(find "$TREE" -type f | wc -l)
cat "$TREE"/*/* > /dev/null   # warm the page cache

now() { date +%s.%N; }
# median of RUNS timings of a command; $2 = setup run before each timing (untimed)
measure() {
  local cmd=$1 setup=${2:-true} times=()
  for _ in $(seq "$RUNS"); do
    eval "$setup"
    local t0 t1; t0=$(now); eval "$cmd" > /dev/null; t1=$(now)
    times+=("$(echo "$t1 - $t0" | bc -l)")
  done
  printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}

echo "tree: $files files, $bytes bytes; $RUNS runs each, median seconds"
ks_hash=$(measure "$KS hash path $TREE")
nix_hash=$(measure "nix hash path $TREE")
[ "$($KS hash path "$TREE")" = "$(nix hash path "$TREE")" ] || { echo "hashes differ!" >&2; exit 1; }
ks_add=$(measure "$KS --store $WORK/ks store add $TREE" "rm -rf $WORK/ks")
nix_add=$(measure "nix-store --store $WORK/nixroot --add $TREE" "chmod -R u+w $WORK/nixroot 2>/dev/null || true; rm -rf $WORK/nixroot")
[ "$($KS --store "$WORK/ks" store add "$TREE")" = "$(nix-store --store "$WORK/nixroot" --add "$TREE")" ] || { echo "store paths differ!" >&2; exit 1; }

mbps() { echo "scale=0; $bytes / $1 / 1000000" | bc -l; }
printf '\n%-34s %10s %10s\n' "operation" "seconds" "MB/s"
printf '%-34s %10.3f %10s\n' "ksbuild hash path" "$ks_hash" "$(mbps "$ks_hash")"
printf '%-34s %10.3f %10s\n' "nix hash path" "$nix_hash" "$(mbps "$nix_hash")"
printf '%-34s %10.3f %10s\n' "ksbuild store add (fresh store)" "$ks_add" "$(mbps "$ks_add")"
printf '%-34s %10.3f %10s\n' "nix-store --add (fresh store)" "$nix_add" "$(mbps "$nix_add")"
printf '\nhash path throughput, ksbuild/nix: %.2fx   (target >= 1.0x)\n' "$(echo "$nix_hash / $ks_hash" | bc -l)"
printf 'store add time, ksbuild/nix:        %.2fx   (target <= 0.5x)\n' "$(echo "$ks_add / $nix_add" | bc -l)"
