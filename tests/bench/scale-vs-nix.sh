#!/usr/bin/env bash
# Benchmark of issue #17: ksbuild against Nix 2.8 on large graphs, in one run.
#
# The graph: N trivial derivations (default 10,000), node i depending on i-1 and i/2, so
# closures grow to thousands of paths. The same graph is written as ksbuild TOML and as one
# Nix expression; the top node's drvPath must be the same in both (checked first, so a
# speed-up can never silently change a hash).
#
#   1. instantiate the top node, cold store            ksbuild instantiate vs nix-instantiate
#   2. instantiate again, every .drv present           (the same)
#   3. realise the first BUILT nodes (default 1,000), -j2   vs nix-build -j2, sandboxed (median
#      of RUNS runs, each into new stores)
#   4. no-op realise of those                           (the same)
#   5. no-op realise of all N nodes (needs all N outputs: only with FULL=1, which has Nix build
#      them outside its sandbox and ksbuild substitute them from Nix's cache; about 30 min)
#   6. a build whose input closure has CLOSURE paths (default 1,000) against the same build
#      with a 2-path closure (ksbuild only; the ratio is the point): alone in a process
#      (`--check`, medians of PAIRS alternating runs, default 15), and in a series of SERIES
#      (default 100) new builds in one process; beside it, Nix's ratio for the same two .drvs
#      (`nix-store --realise --check`), and the kernel's floor: binding the paths of the two
#      closures in new namespaces from one small C program (bind-floor.c), and for the series
#      a new mount namespace per build holding those binds, so the ratio each floor alone
#      allows is printed in the same run
#   7. INDEP (default 1,000) independent trivial derivations, -j2, each run into a fresh store,
#      with the stores on the benchmark's filesystem and on tmpfs (/dev/shm), against the
#      kernel's floor: util-linux `unshare` making the same namespaces around the same
#      busybox command, INDEP times, two at a time
#
# Usage: tests/bench/scale-vs-nix.sh [RUNS]   (default 3; medians)
#   N=10000 BUILT=1000 CLOSURE=1000 PAIRS=15 SERIES=100 INDEP=1000 FULL=0 FULL_NIX_STORE=(a Nix store root to keep); KS=/path/to/ksbuild (default: the release build);
#   BENCH_DIR=/dev/shm measures on tmpfs (the default, /var/tmp, is the disk).
set -euo pipefail
RUNS=${1:-3}
N=${N:-10000}
BUILT=${BUILT:-1000}
CLOSURE=${CLOSURE:-1000}
INDEP=${INDEP:-1000}
FULL=${FULL:-0}
KS=${KS:-${CARGO_TARGET_DIR:-$PWD/target}/release/ksbuild}
BUSYBOX=${BUSYBOX:-/bin/busybox}
export NIX_CONFIG=$'experimental-features = nix-command flakes\nsubstituters =\nbuild-users-group =\nsandbox = true\nsandbox-fallback = false'
command -v nix-instantiate >/dev/null || { echo "real Nix is needed: .ci/install-nix" >&2; exit 1; }

. "$(dirname "$0")/lib.sh"
bench_setup ksbuild-bench

# The generator: TOML per node, and default.nix with the same derivations.
awk -v n="$N" -v dir="$P/derivations" -v nixfile="$P/default.nix" 'BEGIN {
  print "let bb = ./tools/busybox; in rec {" > nixfile
  for (i = 0; i < n; i++) {
    deps = ""; inputs = ""; nixrefs = ""
    if (i > 0) { deps = deps " " (i - 1) }
    if (i > 1 && int(i / 2) != i - 1) { deps = deps " " int(i / 2) }
    k = split(deps, d, " ")
    for (j = 1; j <= k; j++) {
      inputs = inputs sprintf("d%d = \"n%d\"\n", d[j], d[j])
      refs = refs ""
    }
    toml_refs = ""; nix_refs = ""
    for (j = 1; j <= k; j++) { toml_refs = toml_refs " ${d" d[j] "}"; nix_refs = nix_refs " ${n" d[j] "}" }
    f = dir "/n" i ".toml"
    printf "builder = \"${bb}/bin/busybox\"\nargs = [\"sh\", \"-c\", \"echo %d%s > $out\"]\n[inputs]\nbb = { path = \"tools/busybox\" }\n%s", i, toml_refs, inputs > f
    close(f)
    printf "  n%d = derivation { name = \"n%d\"; system = \"x86_64-linux\"; builder = \"${bb}/bin/busybox\"; args = [ \"sh\" \"-c\" \"echo %d%s > $out\" ]; };\n", i, i, i, nix_refs > nixfile
  }
  print "}" > nixfile
}'
# A build with a CLOSURE-path input closure: a chain of CLOSURE trivial derivations, w0 …
# w(CLOSURE-1), each mentioning the one before (so each output refers to it).
awk -v n="$CLOSURE" -v dir="$P/derivations" 'BEGIN {
  for (i = 0; i < n; i++) {
    f = dir "/w" i ".toml"
    if (i == 0) printf "builder = \"${bb}/bin/busybox\"\nargs = [\"sh\", \"-c\", \"echo w0 > $out\"]\n[inputs]\nbb = { path = \"tools/busybox\" }\n" > f
    else printf "builder = \"${bb}/bin/busybox\"\nargs = [\"sh\", \"-c\", \"echo w%d ${p} > $out\"]\n[inputs]\nbb = { path = \"tools/busybox\" }\np = \"w%d\"\n", i, i - 1 > f
    close(f)
  }
}'
# The same chain for Nix, in a file of its own (default.nix stays the graph alone).
awk -v n="$CLOSURE" -v nixfile="$P/chain.nix" 'BEGIN {
  print "let bb = ./tools/busybox; in rec {" > nixfile
  for (i = 0; i < n; i++)
    printf "  w%d = derivation { name = \"w%d\"; system = \"x86_64-linux\"; builder = \"${bb}/bin/busybox\"; args = [ \"sh\" \"-c\" \"echo w%d%s > $out\" ]; };\n", i, i, i, (i ? " ${w" (i - 1) "}" : "") > nixfile
  print "}" > nixfile
}'
top=n$((N - 1))
NIXROOT=$WORK/nixroot

# 0. The same drvPath, or nothing is measured.
ks_drv=$(KSBUILD_STORE=$WORK/check $KS instantiate "$top")
nix_drv=$(nix-instantiate --store "$WORK/nixcheck" "$P/default.nix" -A "$top" 2>/dev/null)
[ "$ks_drv" = "$nix_drv" ] || { echo "drvPaths differ: ksbuild $ks_drv, Nix $nix_drv" >&2; exit 1; }
echo "drvPath of $top: $ks_drv (the same in ksbuild and Nix)"

run=0
cold_ks=$(time_runs "KSBUILD_STORE=$WORK/cold-\$run $KS instantiate $top" "$RUNS" 'run=$((run + 1))')
cold_nix=$(time_runs "nix-instantiate --store $WORK/nixcold-\$run $P/default.nix -A $top" "$RUNS" 'run=$((run + 1))')
export KSBUILD_STORE=$WORK/ks
$KS instantiate "$top" > /dev/null
nix-instantiate --store "$NIXROOT" "$P/default.nix" -A "$top" > /dev/null 2>&1
warm_ks=$(time_runs "$KS instantiate $top" "$RUNS")
warm_nix=$(time_runs "nix-instantiate --store $NIXROOT $P/default.nix -A $top" "$RUNS")

# 3. and 4.: the first BUILT nodes, RUNS times, each run into a new store of each tool where
# they were instantiated first (untimed), alternating the tools; the no-op on the first run's.
sub=$((BUILT - 1))
for r in $(seq "$RUNS"); do
  KSBUILD_STORE=$WORK/built-$r $KS instantiate "n$sub" > /dev/null
  nix-instantiate --store "$WORK/nixbuilt-$r" "$P/default.nix" -A "n$sub" > /dev/null 2>&1
  KSBUILD_STORE=$WORK/built-$r time_runs "$KS realise --no-link -j2 n$sub" 1 >> "$WORK/built-ks"
  time_runs "nix-build --store $WORK/nixbuilt-$r --no-out-link -j2 $P/default.nix -A n$sub" 1 >> "$WORK/built-nix"
done
built_ks=$(median < "$WORK/built-ks")
built_nix=$(median < "$WORK/built-nix")
export KSBUILD_STORE=$WORK/built-1
[ "$($KS realise --no-link "n$sub")" = "$(nix-build --store "$WORK/nixbuilt-1" --no-out-link "$P/default.nix" -A "n$sub" 2>/dev/null)" ] \
  || { echo "output paths differ" >&2; exit 1; }
noop_ks=$(time_runs "$KS realise --no-link -j2 n$sub" "$RUNS")
noop_nix=$(time_runs "nix-build --store $WORK/nixbuilt-1 --no-out-link -j2 $P/default.nix -A n$sub" "$RUNS")
export KSBUILD_STORE=$WORK/ks
noop_all_ks=""; noop_all_nix=""
if [ "$FULL" = 1 ]; then
  # Every output of the graph, valid in both stores. A sandbox's set-up grows with the
  # closure (here up to N paths) in both tools, so building all N nodes in it takes hours;
  # a no-op only needs the outputs valid. So Nix builds the graph outside its sandbox (the
  # same paths: they are input-addressed; about 33 min for N=10,000, hence FULL_NIX_STORE
  # to reuse a store from an earlier run, in which this is a no-op), and ksbuild
  # substitutes every output from a signed file:// cache that `nix copy` fills, which checks
  # on the way that the two agree.
  full=${FULL_NIX_STORE:-$NIXROOT}
  top_out=$(nix-build --store "$full" --option sandbox false --no-out-link -j2 "$P/default.nix" -A "$top" 2>/dev/null)
  nix-store --store "$full" --generate-binary-cache-key bench-1 "$WORK/sk" "$WORK/pk"
  XDG_CACHE_HOME=$WORK/xdg nix copy --from "$full" --to "file://$WORK/cache?secret-key=$WORK/sk" "$top_out"
  [ "$($KS realise --no-link -j2 --substituters "file://$WORK/cache" --trusted-public-keys "$(cat "$WORK/pk")" "$top" 2>/dev/null)" = "$top_out" ] \
    || { echo "ksbuild did not substitute $top_out" >&2; exit 1; }
  noop_all_ks=$(time_runs "$KS realise --no-link -j2 $top" "$RUNS")
  noop_all_nix=$(time_runs "nix-build --store $full --no-out-link -j2 $P/default.nix -A $top" "$RUNS")
fi

# 6. One build with a CLOSURE-path closure against one with a 1-path closure: the same
# script, rebuilt with --check (whole process, alternating), PAIRS times (default 15: each
# takes well under 0.1 s, and a median of 3 moved by a third from run to run on a busy host).
# pairs NAME WIDE NARROW: PAIRS alternating runs of the commands WIDE and NARROW, their
# times in $WORK/NAME-wide and $WORK/NAME-narrow.
pairs() {
  for _ in $(seq "${PAIRS:-15}"); do
    time_runs "$2" 1 >> "$WORK/$1-wide"
    time_runs "$3" 1 >> "$WORK/$1-narrow"
  done
}
last=w$((CLOSURE - 1))
$KS realise --no-link -j2 "$last" w0 > /dev/null 2>&1
pairs ks "$KS realise --no-link --check $last" "$KS realise --no-link --check w1"
wide=$(median < "$WORK/ks-wide")
narrow=$(median < "$WORK/ks-narrow")

# 6c. Nix's own figures for the same two builds (the same .drvs, built first, untimed):
# `nix-store --realise --check` of each .drv (no evaluation), alternating, PAIRS times.
NIXCHAIN=$WORK/nixchain
nix_last=$(nix-instantiate --store "$NIXCHAIN" "$P/chain.nix" -A "$last" 2>/dev/null)
nix_w1=$(nix-instantiate --store "$NIXCHAIN" "$P/chain.nix" -A w1 2>/dev/null)
[ "$nix_last" = "$($KS instantiate "$last")" ] || { echo "drvPaths of $last differ" >&2; exit 1; }
nix-store --store "$NIXCHAIN" --realise -j2 "$nix_last" "$nix_w1" > /dev/null 2>&1
pairs nix "nix-store --store $NIXCHAIN --realise --check $nix_last" "nix-store --store $NIXCHAIN --realise --check $nix_w1"
nix_wide=$(median < "$WORK/nix-wide")
nix_narrow=$(median < "$WORK/nix-narrow")

# 6d. The kernel's floor: binding each path of the two outputs' closures (CLOSURE and 2
# paths) onto a tmpfs in new namespaces, in one process (tests/bench/bind-floor.c), whole
# process, alternating, PAIRS times. What the closure costs any sandbox that binds each path.
cc -O2 -o "$WORK/bind-floor" "$(dirname "$0")/bind-floor.c"
physical() { $KS store path-info -r "$($KS realise --no-link "$1")" | awk -v s="$KSBUILD_STORE" '{print s $1}'; }
physical "$last" > "$WORK/floor-wide.txt"
physical w1 > "$WORK/floor-narrow.txt"
mkdir "$WORK/floor-mnt"
pairs floor "unshare -Urm $WORK/bind-floor $WORK/floor-mnt < $WORK/floor-wide.txt" \
  "unshare -Urm $WORK/bind-floor $WORK/floor-mnt < $WORK/floor-narrow.txt"
floor_wide=$(median < "$WORK/floor-wide")
floor_narrow=$(median < "$WORK/floor-narrow")

# 6b. The same in a series (one process, -j1, where store views apply): SERIES (default 100)
# new derivations on top of w(CLOSURE-1) against as many on top of w0, instantiated first
# (untimed), per build.
SERIES=${SERIES:-100}
for r in $(seq "$RUNS"); do
  for kind in wide narrow; do
    on=$last; [ "$kind" = wide ] || on=w0
    names=()
    for k in $(seq "$SERIES"); do
      names+=("s$kind$r-$k")
      printf 'builder = "${bb}/bin/busybox"\nargs = ["sh", "-c", "echo %s ${p} > $out"]\n[inputs]\nbb = { path = "tools/busybox" }\np = "%s"\n' \
        "s$kind$r-$k" "$on" > "$P/derivations/s$kind$r-$k.toml"
    done
    $KS instantiate "${names[@]}" > /dev/null
    time_runs "$KS realise --no-link -j1 ${names[*]}" 1 >> "$WORK/series-$kind"
  done
done
series_wide=$(median < "$WORK/series-wide")
series_narrow=$(median < "$WORK/series-narrow")
# Its floor: with the same binds made once, a new mount namespace per build (a copy of them,
# then its teardown), SERIES times in one process (bind-floor.c with K), RUNS times each.
for _ in $(seq "$RUNS"); do
  for kind in wide narrow; do
    unshare -Urm "$WORK/bind-floor" "$WORK/floor-mnt" "$SERIES" < "$WORK/floor-$kind.txt" >> "$WORK/series-floor-$kind"
  done
done
series_floor_wide=$(median < "$WORK/series-floor-wide")
series_floor_narrow=$(median < "$WORK/series-floor-narrow")

# 7. Independent builds, on disk and on tmpfs, and the floor.
trivial_derivations "$INDEP"
indep_targets=$(seq -f 't%g' 1 "$INDEP" | tr '\n' ' ')
SHM=$(mktemp -d /dev/shm/ksbuild-bench.XXXXXX)
trap 'chmod -R u+w "$WORK" "$SHM" 2>/dev/null; rm -rf "$WORK" "$SHM"' EXIT
run=0
indep_disk=$(time_runs "KSBUILD_STORE=$WORK/indep-\$run $KS realise --no-link -j2 $indep_targets" "$RUNS" 'run=$((run + 1))')
indep_shm=$(time_runs "KSBUILD_STORE=$SHM/indep-\$run $KS realise --no-link -j2 $indep_targets" "$RUNS" 'run=$((run + 1))')
floor=$(time_runs "seq 1 $INDEP | xargs -P2 -I{} unshare -Urmpiunf -C --mount-proc $BUSYBOX sh -c 'echo {} > /dev/null'" "$RUNS")

ms() { echo "$1 * 1000" | bc -l; }
ratio() { echo "$1 / $2" | bc -l; }
printf '\nstores on %s (%s); N=%d, BUILT=%d, CLOSURE=%d\n' "$(df --output=target "$WORK" | tail -1)" "$(df --output=fstype "$WORK" | tail -1)" "$N" "$BUILT" "$CLOSURE"
printf '\n| %-44s | %12s | %12s | %7s | %s\n' "measurement" "ksbuild ms" "Nix 2.8 ms" "ratio" "target"
row() { printf '| %-44s | %12.1f | %12.1f | %6.2fx | %s\n' "$1" "$(ms "$2")" "$(ms "$3")" "$(ratio "$2" "$3")" "$4"; }
row "instantiate the top node, cold store" "$cold_ks" "$cold_nix" "<= 0.40x"
row "instantiate again, every .drv present" "$warm_ks" "$warm_nix" "<= 0.50x"
row "realise $BUILT nodes (-j2)" "$built_ks" "$built_nix" "<= 0.25x"
row "no-op realise of those $BUILT" "$noop_ks" "$noop_nix" ""
[ -z "$noop_all_ks" ] || row "no-op realise of all $N" "$noop_all_ks" "$noop_all_nix" "<= 0.25x and <= 150 ms"
printf '\nper build of the %d: ksbuild %.1f ms, Nix %.1f ms (each run, s: ksbuild %s; Nix %s)\n' "$BUILT" "$(echo "$built_ks * 1000 / $BUILT" | bc -l)" "$(echo "$built_nix * 1000 / $BUILT" | bc -l)" \
  "$(xargs printf '%.2f ' < "$WORK/built-ks")" "$(xargs printf '%.2f ' < "$WORK/built-nix")"
printf 'a build with a %d-path closure vs a 2-path one (w1) (realise --check, whole process): %.1f ms vs %.1f ms = %.2fx   (target <= 1.3x)\n' \
  "$CLOSURE" "$(ms "$wide")" "$(ms "$narrow")" "$(ratio "$wide" "$narrow")"
printf '  Nix 2.8, the same two builds (nix-store --realise --check of each .drv): %.1f ms vs %.1f ms = %.2fx\n' \
  "$(ms "$nix_wide")" "$(ms "$nix_narrow")" "$(ratio "$nix_wide" "$nix_narrow")"
printf '  the kernel floor, binding the paths of %d vs %d output closures in new namespaces (bind-floor.c, whole process): %.1f ms vs %.1f ms: %.1f ms more\n' \
  "$(wc -l < "$WORK/floor-wide.txt")" "$(wc -l < "$WORK/floor-narrow.txt")" "$(ms "$floor_wide")" "$(ms "$floor_narrow")" "$(ms "$(echo "$floor_wide - $floor_narrow" | bc -l)")"
printf '  so the ratio of a sandbox adding only that floor to the 2-path build: %.2fx; ksbuild adds %.1f ms, %.2fx the floor\n' \
  "$(ratio "$(echo "$narrow + $floor_wide - $floor_narrow" | bc -l)" "$narrow")" "$(ms "$(echo "$wide - $narrow" | bc -l)")" \
  "$(ratio "$(echo "$wide - $narrow" | bc -l)" "$(echo "$floor_wide - $floor_narrow" | bc -l)")"
printf 'the same in a series of %d builds in one process (-j1), per build: %.2f ms vs %.2f ms = %.2fx\n' \
  "$SERIES" "$(echo "$series_wide * 1000 / $SERIES" | bc -l)" "$(echo "$series_narrow * 1000 / $SERIES" | bc -l)" "$(ratio "$series_wide" "$series_narrow")"
per_series() { echo "$1 * 1000 / $SERIES" | bc -l; }
series_floor_more=$(echo "($series_floor_wide - $series_floor_narrow) / 1000" | bc -l)
printf '  the kernel floor, a new mount namespace holding the same binds per build (bind-floor.c K): %.2f ms vs %.2f ms: %.2f ms more\n' \
  "$(echo "$series_floor_wide / 1000" | bc -l)" "$(echo "$series_floor_narrow / 1000" | bc -l)" "$series_floor_more"
printf '  so the ratio of a series adding only that floor: %.2fx; ksbuild adds %.2f ms, %.2fx the floor\n' \
  "$(ratio "$(echo "$(per_series "$series_narrow") + $series_floor_more" | bc -l)" "$(per_series "$series_narrow")")" \
  "$(echo "$(per_series "$series_wide") - $(per_series "$series_narrow")" | bc -l)" \
  "$(ratio "$(echo "$(per_series "$series_wide") - $(per_series "$series_narrow")" | bc -l)" "$series_floor_more")"
per() { echo "$1 * 1000 / $INDEP" | bc -l; }
printf '%d independent derivations, -j2, per derivation: %.2f ms with the stores on %s (%s), %.2f ms on tmpfs; the unshare floor %.2f ms: %.2fx and %.2fx   (target <= 1.3x)\n' \
  "$INDEP" "$(per "$indep_disk")" "$(df --output=target "$WORK" | tail -1)" "$(df --output=fstype "$WORK" | tail -1)" "$(per "$indep_shm")" "$(per "$floor")" \
  "$(ratio "$indep_disk" "$floor")" "$(ratio "$indep_shm" "$floor")"
