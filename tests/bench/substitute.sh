#!/usr/bin/env bash
# Benchmark of issue #12 (substitution): a ~100 MB closure (4 generated outputs of ~25 MB —
# random bytes, base64 text and number lists, so that it compresses about as a kernel and
# its modules do — and a fifth path referencing them) substituted from an HTTP binary cache
# on loopback, served by a real nginx, into a fresh store, in one run:
#   `ksbuild realise top --substituters http://…`  vs  `nix copy --from http://… --to STORE`
# for an xz cache and a zstd cache (both written by Nix 2.8: `nix copy --to
# file://…?compression=…`)  (target: ksbuild ≤ 0.7× Nix's time), with MB/s (of NAR bytes),
# and for scale what `xz -dc` and `zstd -dc` alone take to decompress the same NARs.
# ksbuild's time includes evaluating the project (writing its `.drv`s): what a user waits for.
# Usage: tests/bench/substitute.sh [RUNS]   (default 5; medians)
#   KS=/path/to/ksbuild benchmarks that binary instead of the release build.
#   BENCH_DIR=DIR puts the work in a directory of its own there (default /var/tmp).
set -euo pipefail
RUNS=${1:-5}
cd "$(dirname "$0")/../.."
cargo build --release --quiet
KS=${KS:-${CARGO_TARGET_DIR:-$PWD/target}/release/ksbuild}
BUSYBOX=${BUSYBOX:-/bin/busybox}
export NIX_CONFIG=$'experimental-features = nix-command flakes\nsubstituters =\nbuild-users-group ='

# A directory of its own under BENCH_DIR: never BENCH_DIR itself, which the EXIT trap would
# delete with everything else in it.
WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/ksbuild-subst-bench.XXXXXX")
NGINX_PID=
cleanup() {
  [ -n "$NGINX_PID" ] && kill "$NGINX_PID" 2>/dev/null
  chmod -R u+w "$WORK" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
P=$WORK/proj
mkdir -p "$P/derivations" "$P/tools/busybox/bin"
command -v nix >/dev/null || { echo "real Nix is needed: .ci/install-nix" >&2; exit 1; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || { echo "nginx is needed: apt-get install nginx" >&2; exit 1; }
cp "$BUSYBOX" "$P/tools/busybox/bin/busybox"
printf 'system = "x86_64-linux"\n' > "$P/derivations/_project.toml"
cat > "$P/gen.sh" <<'SH'
b=$builder
$b mkdir $out
i=0
while [ $i -lt 9 ]; do
  $b dd if=/dev/urandom of=$out/random$i bs=1048576 count=1 2>/dev/null
  $b dd if=/dev/urandom bs=786432 count=1 2>/dev/null | $b base64 > $out/text$i
  $b seq $((i * 100000)) $((i * 100000 + 120000)) > $out/numbers$i
  i=$((i + 1))
done
SH
for i in 1 2 3 4; do
  cat > "$P/derivations/part$i.toml" <<TOML
builder = "\${bb}/bin/busybox"
args = ["sh", "-e", "\${script}"]
env = { PART = "$i" }
[inputs]
bb = { path = "tools/busybox" }
script = { path = "gen.sh" }
TOML
done
cat > "$P/derivations/top.toml" <<'TOML'
builder = "${bb}/bin/busybox"
args = ["sh", "-c", "echo ${p1} ${p2} ${p3} ${p4} > $out"]
[inputs]
bb = { path = "tools/busybox" }
p1 = "part1"
p2 = "part2"
p3 = "part3"
p4 = "part4"
TOML
export KSBUILD_PROJECT=$P
# Only the command line's substituters, whatever the host's nix.conf says.
export XDG_CONFIG_HOME=$WORK/config NIX_CONF_DIR=$WORK/nix-conf

# Build once, export (uncompressed, signed), and let Nix write the xz and zstd caches.
TOP=$("$KS" --store "$WORK/src" realise --no-link -j2 top)
"$KS" --store "$WORK/src" key generate bench-1 "$WORK/sk" "$WORK/pk" >/dev/null
PK=$(cat "$WORK/pk")
"$KS" --store "$WORK/src" cache push --compression none --to "file://$WORK/plain" --secret-key-file "$WORK/sk" "$TOP" >/dev/null
for c in xz zstd; do
  XDG_CACHE_HOME=$WORK/xdg nix copy --no-check-sigs --from "file://$WORK/plain" \
    --to "file://$WORK/www/$c?compression=$c&parallel-compression=true&secret-key=$WORK/sk" "$TOP"
done
nar_bytes=$(awk '/^NarSize:/ {s += $2} END {print s}' "$WORK"/plain/*.narinfo)

# nginx on a free port, as this user, everything under $WORK/nginx.
mkdir -p "$WORK/nginx"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$WORK/nginx/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1;
pid $WORK/nginx/nginx.pid; error_log $WORK/nginx/error.log;
events { worker_connections 256; }
http {
  access_log off; default_type application/octet-stream; sendfile on;
  client_body_temp_path $WORK/nginx/body; proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fcgi; uwsgi_temp_path $WORK/nginx/uwsgi; scgi_temp_path $WORK/nginx/scgi;
  server { listen 127.0.0.1:$PORT; root $WORK/www; }
}
CONF
"$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" &
NGINX_PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/xz/nix-cache-info" >/dev/null && break; sleep 0.1; done

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# Wall time of `eval "$1"` with $S a fresh directory (and a fresh narinfo disk cache for Nix).
time_fresh() {
  local t0 t1
  S=$(mktemp -d "$WORK/s-XXXXXX")
  t0=$EPOCHREALTIME
  XDG_CACHE_HOME=$S/xdg eval "$1" > /dev/null 2>&1 || { echo "failed: $1" >&2; exit 1; }
  t1=$EPOCHREALTIME
  chmod -R u+w "$S" 2>/dev/null; rm -rf "$S"
  echo "$t1 - $t0" | bc -l
}
sync
for c in xz zstd; do
  url=http://127.0.0.1:$PORT/$c
  ks="\"$KS\" --store \$S/ks realise --no-link --substituters $url --trusted-public-keys '$PK' top"
  nx="nix copy --from $url --to \$S/nixroot --option trusted-public-keys '$PK' $TOP"
  # Alternating, so that a change in the machine's load weighs on both alike.
  for _ in $(seq "$RUNS"); do
    time_fresh "$ks" >> "$WORK/ks-$c"
    time_fresh "$nx" >> "$WORK/nix-$c"
  done
  # Decompression alone, single-threaded, of the same NARs (for scale).
  t0=$EPOCHREALTIME
  for f in "$WORK/www/$c"/nar/*; do "$c" -dc "$f" > /dev/null; done
  echo "$EPOCHREALTIME - $t0" | bc -l > "$WORK/dec-$c"
done

mbps() { echo "$nar_bytes / $1 / 1000000" | bc -l; }
printf 'closure: 5 paths, %.1f MB of NAR; xz cache %.1f MB, zstd cache %.1f MB; %s runs, medians\n' \
  "$(echo "$nar_bytes / 1000000" | bc -l)" \
  "$(du -sb "$WORK/www/xz/nar" | awk '{print $1 / 1000000}')" \
  "$(du -sb "$WORK/www/zstd/nar" | awk '{print $1 / 1000000}')" "$RUNS"
printf '%-44s %8s %8s\n' "" "seconds" "MB/s"
for c in xz zstd; do
  ks=$(median < "$WORK/ks-$c"); nx=$(median < "$WORK/nix-$c"); dec=$(cat "$WORK/dec-$c")
  printf '%-44s %8.3f %8.0f\n' "ksbuild realise ($c, HTTP)" "$ks" "$(mbps "$ks")"
  printf '%-44s %8.3f %8.0f\n' "nix copy --from ($c, HTTP)" "$nx" "$(mbps "$nx")"
  printf '%-44s %8.2f×  (target ≤ 0.7×)\n' "ksbuild / nix ($c)" "$(echo "$ks / $nx" | bc -l)"
  printf '%-44s %8.3f %8.0f\n' "$c -dc alone (one thread)" "$dec" "$(mbps "$dec")"
done
