#!/usr/bin/env bash
# Benchmark of issue #11: what a reproducibility check costs against a plain realisation,
# in one run, on a graph of 200 independent trivial derivations (-j2, fresh stores):
#   realise:            `ksbuild realise -j2 t1…t200`
#   check --rounds 2:   `ksbuild check -j2 t1…t200` (the realisation's build and one
#                       rebuild of each in a fresh sandbox, compared)  (target: ≤ 2.2× realise)
#   and, for information, `check --rounds 2 --vary all` (its builds spaced in time: about
#   1.1 s each, so it is timed on 10 of the derivations and reported per derivation).
# Usage: tests/bench/check-vs-realise.sh [RUNS]   (default 5; medians)
#   KS=/path/to/ksbuild benchmarks that binary instead of the release build.
#   BENCH_DIR=DIR puts the stores in a directory of their own there (default /var/tmp).
set -euo pipefail
RUNS=${1:-5}
cd "$(dirname "$0")/../.."
cargo build --release --quiet
KS=${KS:-${CARGO_TARGET_DIR:-$PWD/target}/release/ksbuild}
BUSYBOX=${BUSYBOX:-/bin/busybox}

. "$(dirname "$0")/lib.sh"
bench_setup ksbuild-check-bench
trivial_derivations 200

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# Wall time of `eval "$1"` ($2 runs, median), each run in a fresh store of its own.
time_fresh() {
  for _ in $(seq "$2"); do
    local t0 t1 store
    store=$(mktemp -d "$WORK/s-XXXXXX")
    t0=$EPOCHREALTIME
    KSBUILD_STORE=$store eval "$1" > /dev/null 2>&1 || { echo "failed: $1" >&2; exit 1; }
    t1=$EPOCHREALTIME
    echo "$t1 - $t0" | bc -l
  done | median
}
targets=$(seq -f 't%g' 1 200 | tr '\n' ' ')
ten=$(seq -f 't%g' 1 10 | tr '\n' ' ')
# Alternating, so that a change in the machine's load weighs on both alike.
for _ in $(seq "$RUNS"); do
  time_fresh "$KS realise --no-link -j2 $targets" 1 >> "$WORK/realise"
  time_fresh "$KS check -j2 $targets" 1 >> "$WORK/check"
done
realise=$(median < "$WORK/realise")
check=$(median < "$WORK/check")
varied=$(time_fresh "$KS check -j2 --vary all $ten" 1)
printf 'filesystem of the stores: %s\n' "$(stat -f -c %T "$WORK")"
printf '%-44s %8.3f s  (%.2f ms per derivation)\n' "realise -j2, 200 derivations" "$realise" "$(echo "$realise * 5" | bc -l)"
printf '%-44s %8.3f s  (%.2f ms per derivation)\n' "check --rounds 2 -j2, 200 derivations" "$check" "$(echo "$check * 5" | bc -l)"
printf '%-44s %8.2f×  (target ≤ 2.2×)\n' "check / realise" "$(echo "$check / $realise" | bc -l)"
printf '%-44s %8.3f s  (%.0f ms per derivation, 1.1 s of it the wait for the next second)\n' "check --vary all -j2, 10 derivations" "$varied" "$(echo "$varied * 100" | bc -l)"
