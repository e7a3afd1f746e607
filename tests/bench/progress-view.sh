#!/usr/bin/env bash
# Benchmark of issue #18: what the live view costs, in one run.
#   1. 200 independent trivial derivations with -j2, on a pseudo-terminal (util-linux
#      `script`): the live view on (TERM=xterm) against off (`--quiet`)   (target: nothing
#      measurable, i.e. within the runs' spread)
#   2. a chatty 20 s build, like a kernel compile (a log line every 10 ms, sleeping
#      between): the CPU time of the whole realisation with the view on and off; the
#      difference is the view's, as a share of one CPU over the build   (target: <= 1 %)
#
# Usage: tests/bench/progress-view.sh [RUNS]   (default 3; medians)
#   KS=/path/to/ksbuild benchmarks that binary instead of the release build.
set -euo pipefail
RUNS=${1:-3}
KS=${KS:-${CARGO_TARGET_DIR:-$PWD/target}/release/ksbuild}
BUSYBOX=${BUSYBOX:-/bin/busybox}
command -v script >/dev/null || { echo "util-linux's script (Debian bsdutils) is needed" >&2; exit 1; }

. "$(dirname "$0")/lib.sh"
bench_setup ksbuild-bench
printf '[env]\nROUND = "0"\n' >> "$P/derivations/_project.toml"
trivial_derivations 200
cat > "$P/derivations/chatty.toml" <<'TOML'
builder = "${busybox}/bin/busybox"
args = ["sh", "-c", "i=0; while [ $i -lt 2000 ]; do echo \"  CC      drivers/net/ethernet/intel/e1000/obj$i.o\"; $builder usleep 10000; i=$((i+1)); done; echo $ROUND > $out"]
[inputs]
busybox = { path = "tools/busybox" }
TOML

# `ksbuild ARGS` on an 100x30 pseudo-terminal; its output is dropped.
on_pty() { script -qec "stty cols 100 rows 30; $*" /dev/null > /dev/null; }

targets=$(seq -f 't%g' 1 200 | tr '\n' ' ')
run=0
# 1. Alternating, each into a fresh store, so that load weighs on both alike.
for _ in $(seq "$RUNS"); do
  for view in on off; do
    run=$((run + 1))
    q=""; [ "$view" = on ] || q=--quiet
    t0=$EPOCHREALTIME
    TERM=xterm on_pty "KSBUILD_STORE=$WORK/many-$run $KS $q realise --no-link -j2 $targets"
    t1=$EPOCHREALTIME
    echo "$t1 - $t0" | bc -l >> "$WORK/many-$view"
  done
done
many_on=$(median < "$WORK/many-on")
many_off=$(median < "$WORK/many-off")

# 2. The chatty build, view on and off, each a new .drv (ROUND) in one store. CPU time of
# everything (ksbuild and the builder, whose share is the same in both): bash's `times`
# reports the user and system time of the children it waited for, and theirs.
cpu_of() {
  # $1: on|off, $2: round. Prints "wall cpu" in seconds.
  local q=""; [ "$1" = on ] || q=--quiet
  sed -i "s/^ROUND = .*/ROUND = \"$2\"/" "$P/derivations/_project.toml"
  bash -c '
    t0=$EPOCHREALTIME
    TERM=xterm script -qec "stty cols 100 rows 30; KSBUILD_STORE='"$WORK"'/chatty '"$KS $q"' realise --no-link chatty" /dev/null > /dev/null
    t1=$EPOCHREALTIME
    # children user and system time: the second line of `times`, e.g. "0m1.234s 0m0.567s"
    # (written to a file: in a pipe or `$(…)`, `times` would report a subshell)
    times > '"$WORK"'/times
    c=$(sed -n 2p '"$WORK"'/times)
    u=${c%% *}; s=${c##* }
    tosec() { local m=${1%%m*}; local r=${1#*m}; echo "$m * 60 + ${r%s}" | bc -l; }
    echo "$(echo "$t1 - $t0" | bc -l) $(echo "$(tosec "$u") + $(tosec "$s")" | bc -l)"
  '
}
round=0
for _ in $(seq "$RUNS"); do
  for view in on off; do
    round=$((round + 1))
    cpu_of "$view" "$round" >> "$WORK/chatty-$view"
  done
done
chatty_wall=$(cut -d' ' -f1 "$WORK/chatty-on" | median)
cpu_on=$(cut -d' ' -f2 "$WORK/chatty-on" | median)
cpu_off=$(cut -d' ' -f2 "$WORK/chatty-off" | median)

printf '\n%-60s %10s\n' "measurement" "value"
printf '%-60s %10.1f ms\n' "200 derivations -j2 on a pty, live view on" "$(echo "$many_on * 1000" | bc -l)"
printf '%-60s %10.1f ms\n' "200 derivations -j2 on a pty, view off (--quiet)" "$(echo "$many_off * 1000" | bc -l)"
printf '%-60s %10.1f s\n' "chatty build (2000 log lines, 10 ms apart), wall" "$chatty_wall"
printf '%-60s %10.3f s\n' "  CPU of the realisation, view on" "$cpu_on"
printf '%-60s %10.3f s\n' "  CPU of the realisation, view off" "$cpu_off"
printf '\n200 derivations, view on/off: %.2fx   (target: ~1.00x)\n' "$(echo "$many_on / $many_off" | bc -l)"
printf 'the view during a chatty build: %.2f %% of one CPU   (target <= 1 %%)\n' \
  "$(echo "($cpu_on - $cpu_off) * 100 / $chatty_wall" | bc -l)"
