#!/usr/bin/env bash
# Benchmark of issue #4: the overhead of building a kernel as a ksbuild derivation against a
# plain `make` of the same configuration, in one run (target: ≤ 5%).
#   plain:   fragments/build-kernel.sh run by hand in the same environment tree
#            (`unshare --map-root-user` + `chroot`, no ksbuild), same source, same fragments
#   ksbuild: `ksbuild realise --check TARGET`, a complete sandboxed rebuild of the derivation
#            (sandbox set-up, the build, hashing and comparing the output)
# Usage: tests/bench/kernel-overhead.sh [TARGET]   (default kernel-x86_64@small)
#   KS=/path/to/ksbuild benchmarks that binary instead of the release build.
set -euo pipefail
TARGET=${1:-kernel-x86_64@small}
cd "$(dirname "$0")/../.."
cargo build --release --quiet
KS=${KS:-${CARGO_TARGET_DIR:-$PWD/target}/release/ksbuild}
# The target must be valid (so that --check rebuilds it) and its inputs realised.
"$KS" realise --no-link "$TARGET" > /dev/null
DRV=$("$KS" show-derivation "$TARGET")
field() { python3 -c "import json,sys; d=json.load(sys.stdin); v=list(d.values())[0]; print($1)" <<< "$DRV"; }
STORE=${KSBUILD_STORE:-$PWD/store}
TREE=$STORE$(field "v['args'][3]")
SCRIPT=$(field "v['args'][6]")
WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/ksbuild-kbench.XXXXXX")
trap 'chmod -R u+w "$WORK" 2>/dev/null; rm -rf "$WORK"' EXIT
# The derivation's environment, with the store paths as the build sees them.
ENVFILE=$WORK/env
field "'\n'.join(f'export {k}={v!r}' for k, v in v['env'].items() if k not in ('out',))" > "$ENVFILE"
mkdir -p "$WORK/out" "$WORK/build"
echo "plain make of $TARGET in $TREE ..."
now() { python3 -c 'import time; print(time.time())'; }
start=$(now)
unshare --user --mount --map-root-user sh -c '
  set -e
  tree=$1 store=$2 work=$3 script=$4 envfile=$5
  # The same view the derivation has: /nix/store, /build, /dev, /proc, /tmp; a fresh /build.
  mount --rbind "$store/nix/store" "$tree/nix/store"
  mount --rbind "$work/build" "$tree/build"
  mount --rbind /dev "$tree/dev"
  mount -t proc proc "$tree/proc" 2>/dev/null || mount --rbind /proc "$tree/proc"
  mount --rbind "$work" "$tree/tmp"
  exec chroot "$tree" /bin/sh -c ". /tmp/env; export out=/tmp/out NIX_BUILD_CORES=$(nproc) PATH=/usr/bin:/bin:/usr/sbin:/sbin HOME=/homeless-shelter; cd /build && sh -e $script"
' plain "$TREE" "$STORE" "$WORK" "$SCRIPT" "$ENVFILE" > "$WORK/plain.log" 2>&1 || { tail -20 "$WORK/plain.log"; exit 1; }
plain=$(python3 -c "print($(now) - $start)")
echo "ksbuild realise --check $TARGET ..."
start=$(now)
"$KS" realise --no-link --check "$TARGET" > /dev/null
ks=$(python3 -c "print($(now) - $start)")
printf '%-40s %8.1f s\n' "plain make (same tree, same script)" "$plain" "ksbuild realise --check" "$ks"
printf 'overhead: %+.1f%% (target: <= +5%%)\n' "$(python3 -c "print(($ks - $plain) * 100 / $plain)")"
