# Shared by the benchmarks (`. "$(dirname "$0")/lib.sh"`): a scratch project whose builder is
# a copy of the static busybox, trivial derivations, and timing helpers.

# bench_setup NAME: WORK, a scratch directory (under BENCH_DIR, default /var/tmp, i.e. the
# disk) removed on exit; P=$WORK/proj, a project with `tools/busybox` and
# `derivations/_project.toml` (system x86_64-linux), exported as KSBUILD_PROJECT.
bench_setup() {
  WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/$1.XXXXXX")
  trap 'chmod -R u+w "$WORK" 2>/dev/null; rm -rf "$WORK"' EXIT
  P=$WORK/proj
  mkdir -p "$P/derivations" "$P/tools/busybox/bin"
  cp "${BUSYBOX:-/bin/busybox}" "$P/tools/busybox/bin/busybox"
  printf 'system = "x86_64-linux"\n' > "$P/derivations/_project.toml"
  export KSBUILD_PROJECT=$P
}

# trivial_derivations N: t1 … tN, each `echo i > $out`, independent of each other.
trivial_derivations() {
  for i in $(seq 1 "$1"); do
    cat > "$P/derivations/t$i.toml" <<TOML
builder = "\${busybox}/bin/busybox"
args = ["sh", "-c", "echo $i > \$out"]
[inputs]
busybox = { path = "tools/busybox" }
TOML
  done
}

# The median of the numbers on stdin.
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Wall time of `eval "$1"`, median of $2 runs; bash's $EPOCHREALTIME reads the clock
# without starting a process, so nothing but the command is timed. $3, if given, runs
# before each run, untimed.
time_runs() {
  for _ in $(seq "$2"); do
    local t0 t1
    [ -z "${3:-}" ] || eval "$3"
    t0=$EPOCHREALTIME; eval "$1" > /dev/null 2>&1; t1=$EPOCHREALTIME
    echo "$t1 - $t0" | bc -l
  done | median
}
