#!/usr/bin/env bash
# Benchmark of issue #3: ksbuild's sandboxed builds against Nix 2.8's, in one run.
#   1. a trivial derivation rebuilt whole-process: `ksbuild realise --check` vs
#      `nix-build --check` in Nix's sandbox                        (target: ≤ 0.33× Nix's time)
#   2. 200 independent trivial derivations realised with -j2      (target: ≤ 3 ms each)
#   3. a no-op realise of the same 200-node graph, all valid      (target: ≤ 20 ms)
#   and, for scale, the kernel's share of (2): the same namespaces made by `unshare`.
# Usage: tests/bench/realise-vs-nix.sh [RUNS]   (default 10; medians)
#   KS=/path/to/ksbuild benchmarks that binary instead of the release build.
#   BENCH_DIR=DIR puts the stores there (default /var/tmp). On an unjournaled ext4 (as on
#   the VM these figures come from), inodes freed in the last minutes make every new one
#   slow to allocate — a run right after deleting many files (another bench's stores, say)
#   measures that, not ksbuild; BENCH_DIR=/dev/shm measures without the disk.
set -euo pipefail
RUNS=${1:-10}
cd "$(dirname "$0")/../.."
cargo build --release --quiet
KS=${KS:-${CARGO_TARGET_DIR:-$PWD/target}/release/ksbuild}
export NIX_CONFIG=$'experimental-features = nix-command flakes\nsubstituters =\nbuild-users-group =\nsandbox = true\nsandbox-fallback = false'
command -v nix-build >/dev/null || { echo "real Nix is needed: .ci/install-nix" >&2; exit 1; }
BUSYBOX=${BUSYBOX:-/bin/busybox}

. "$(dirname "$0")/lib.sh"
bench_setup ksbuild-bench
cat > "$P/derivations/trivial.toml" <<'TOML'
builder = "${busybox}/bin/busybox"
args = ["sh", "-c", "echo trivial > $out"]
[inputs]
busybox = { path = "tools/busybox" }
TOML
cat > "$P/default.nix" <<'NIX'
{ trivial = derivation { name = "trivial"; system = "x86_64-linux"; builder = "${./tools/busybox}/bin/busybox"; args = [ "sh" "-c" "echo trivial > $out" ]; }; }
NIX
trivial_derivations 200
export KSBUILD_STORE=$WORK/ks
NIXROOT=$WORK/nixroot

# On an unjournaled ext4 (as here), every inode freed in the last minute or so slows each
# new allocation: the kernel checks and skips them. So nothing is removed until the end,
# and (2) and (3) run before (1), where nix-build's sandbox frees dozens of inodes per build.
# 2. 200 independent derivations with -j2, into a fresh store each run.
targets=$(seq -f 't%g' 1 200 | tr '\n' ' ')
run=0
many=$(time_runs "KSBUILD_STORE=$WORK/many-\$run $KS realise --no-link -j2 $targets" 5 'run=$((run + 1))')
# 3. no-op realise of the 200 valid nodes
$KS realise --no-link -j2 $targets > /dev/null
noop=$(time_runs "$KS realise --no-link -j2 $targets" "$RUNS")
# 1. trivial rebuild, whole process
$KS realise --no-link trivial > /dev/null
nix-build --store "$NIXROOT" --no-out-link "$P/default.nix" -A trivial > /dev/null 2>&1
[ "$($KS realise --no-link trivial)" = "$(nix-build --store "$NIXROOT" --no-out-link "$P/default.nix" -A trivial 2>/dev/null)" ] || { echo "output paths differ!" >&2; exit 1; }
# Alternating the two, so that a change in the machine's load weighs on both alike.
for _ in $(seq "$RUNS"); do
  time_runs "$KS realise --no-link --check trivial" 1 >> "$WORK/ks-trivial"
  time_runs "nix-build --store $NIXROOT --no-out-link --check $P/default.nix -A trivial" 1 >> "$WORK/nix-trivial"
done
ks_trivial=$(median < "$WORK/ks-trivial")
nix_trivial=$(median < "$WORK/nix-trivial")

# The kernel's share of (2), for scale: util-linux `unshare` making the same namespaces
# (user, mount, PID, IPC, UTS, network, cgroup) around the same busybox command, 200
# times, two at a time — no store, no pivot_root, no /dev, no seccomp: a floor.
floor=""
if unshare -Urmpiunf -C --mount-proc "$BUSYBOX" true 2>/dev/null; then
  floor=$(time_runs "seq 1 200 | xargs -P2 -I{} unshare -Urmpiunf -C --mount-proc $BUSYBOX sh -c 'echo {} > /dev/null'" 3)
fi

printf '\nstores on %s (%s)\n' "$(df --output=target "$WORK" | tail -1)" "$(df --output=fstype "$WORK" | tail -1)"
printf '\n%-52s %10s\n' "measurement" "ms"
printf '%-52s %10.1f\n' "ksbuild realise --check trivial (whole process)" "$(echo "$ks_trivial * 1000" | bc -l)"
printf '%-52s %10.1f\n' "nix-build --check trivial (sandbox = true)" "$(echo "$nix_trivial * 1000" | bc -l)"
printf '%-52s %10.2f\n' "200 derivations, -j2, per derivation" "$(echo "$many * 1000 / 200" | bc -l)"
printf '%-52s %10.1f\n' "no-op realise of 200 valid nodes" "$(echo "$noop * 1000" | bc -l)"
[ -z "$floor" ] || printf '%-52s %10.2f\n' "floor: 200 x unshare (same namespaces) + busybox, -P2" "$(echo "$floor * 1000 / 200" | bc -l)"
printf '\ntrivial build, ksbuild/nix: %.2fx   (target <= 0.33x)\n' "$(echo "$ks_trivial / $nix_trivial" | bc -l)"
printf '200 derivations: %.2f ms each (target <= 3 ms); no-op: %.1f ms (target <= 20 ms)\n' \
  "$(echo "$many * 1000 / 200" | bc -l)" "$(echo "$noop * 1000" | bc -l)"
