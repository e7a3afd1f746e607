#!/usr/bin/env bash
# Benchmark of issue #13: the .drv path of every target (variants included) evaluated through
# the flake (`nix eval --json .#lib.drvPaths`: Nix 2.8 running fragments/lower.nix) beside
# `ksbuild instantiate` of every target. Figures only, no target.
#   cold: into a fresh store each run (every .drv and source written);
#   warm: into a store that already holds them.
# Usage: tests/bench/flake-eval.sh [RUNS]   (default 5; prints medians)
# Both read a copy of the project whose upstream-only downloads are pinned to a stand-in
# (`ksbuild pin`, as tests/it/flake.rs does); Nix's evaluation cache is off.
set -euo pipefail
RUNS=${1:-5}
cd "$(dirname "$0")/../.."
cargo build --release --quiet
KS=$PWD/target/release/ksbuild
export NIX_CONFIG=$'experimental-features = nix-command flakes\nsubstituters =\nbuild-users-group =\neval-cache = false'
command -v nix >/dev/null || { echo "real Nix is needed: .ci/install-nix" >&2; exit 1; }

# A directory of its own under BENCH_DIR (default /var/tmp): never BENCH_DIR itself, which
# the EXIT trap would delete with everything else in it.
WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/ksbuild-bench.XXXXXX")
trap 'chmod -R u+w "$WORK" 2>/dev/null || true; rm -rf "$WORK"' EXIT
export XDG_CACHE_HOME=$WORK/xdg-cache
mkdir -p "$WORK/project" "$WORK/standin/tree"
cp -r flake.nix Cargo.toml derivations fragments sandboxes "$WORK/project/"
PROJ=$WORK/project
printf '#!/bin/sh\necho stand-in\n' > "$WORK/standin/tree/standin"
tar --owner=0 --group=0 --mtime=@0 -czf "$WORK/standin/standin.tar.gz" -C "$WORK/standin" tree
echo "a stand-in download" > "$WORK/standin/standin.bin"
# `[fetch]` files without `hash`: upstream-only downloads, pinned to the stand-in.
find "$PROJ/derivations" -name '*.toml' ! -name '_*' | sort | while read -r f; do
  if grep -q '^\[fetch\]' "$f" && ! grep -q '^hash *=' "$f"; then
    file=$WORK/standin/standin.bin
    grep -q '^unpack *= *"tar"' "$f" && file=$WORK/standin/standin.tar.gz
    "$KS" --quiet --store "$WORK/pins" --project "$PROJ" pin "$(basename "$f" .toml)" "$file" > /dev/null
  fi
done

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

FLAKE="path:$PROJ"
read -r -a TARGETS <<< "$(nix eval --raw --store "$WORK/nixroot" "$FLAKE#lib.targets" --apply 'builtins.concatStringsSep " "')"
NIX_EVAL="nix eval --json --store $WORK/nixroot $FLAKE#lib.drvPaths"
KS_INST="$KS --quiet --store $WORK/ks --project $PROJ instantiate ${TARGETS[*]}"
# Same answer first: the figures compare equal work.
nix_paths=$($NIX_EVAL | tr -d '{}"' | tr ',' '\n' | cut -d: -f2 | sort)
ks_paths=$($KS_INST | sort)
[ "$nix_paths" = "$ks_paths" ] || { echo "the flake and ksbuild disagree on the .drv paths!" >&2; exit 1; }
drvs=$(find "$WORK/ks/nix/store" -name '*.drv' | wc -l)

clean() { echo "chmod -R u+w $1 2>/dev/null || true; rm -rf $1"; }
nix_cold=$(measure "$NIX_EVAL" "$(clean "$WORK/nixroot")")
nix_warm=$(measure "$NIX_EVAL")
ks_cold=$(measure "$KS_INST" "$(clean "$WORK/ks")")
ks_warm=$(measure "$KS_INST")

echo "${#TARGETS[@]} targets, $drvs .drv files in their closure; $RUNS runs each, median seconds"
printf '\n%-44s %8s %8s\n' "command" "cold" "warm"
printf '%-44s %8.3f %8.3f\n' "nix eval --json .#lib.drvPaths (flake)" "$nix_cold" "$nix_warm"
printf '%-44s %8.3f %8.3f\n' "ksbuild instantiate (every target)" "$ks_cold" "$ks_warm"
