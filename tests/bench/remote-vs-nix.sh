#!/usr/bin/env bash
# Benchmark of issue #14: remote builds over ssh (Nix's serve protocol), ksbuild against
# Nix 2.8, in one run, on loopback (a real sshd started here as the current user):
#   1. per-derivation overhead of 50 trivial remote builds: the ksbuild client against the
#      Nix client, both with `nix-store --serve` on the far side and `--max-jobs 0`
#                                                             (target: ≤ 0.5× Nix's time)
#   2. closure upload throughput, ~100 MB: `ksbuild store copy --to ssh://` against
#      `nix copy --to ssh://`, into a fresh Nix store on the far side (target: ≥ 0.9×)
# Usage: tests/bench/remote-vs-nix.sh [RUNS]   (default 3; medians)
#   KS=/path/to/ksbuild benchmarks that binary instead of the release build.
#   BENCH_DIR=DIR puts the stores there (default /var/tmp).
set -euo pipefail
RUNS=${1:-3}
cd "$(dirname "$0")/../.."
cargo build --release --quiet
KS=${KS:-${CARGO_TARGET_DIR:-$PWD/target}/release/ksbuild}
NIX_CONFIG=$'experimental-features = nix-command flakes\nsubstituters =\nbuild-users-group =\nsandbox = true\nsandbox-fallback = false'
export NIX_CONFIG
command -v nix-build >/dev/null || { echo "real Nix is needed: .ci/install-nix" >&2; exit 1; }
SSHD=$(command -v sshd || echo /usr/sbin/sshd)
[ -x "$SSHD" ] && command -v ssh >/dev/null \
  || { echo "OpenSSH is needed: apt-get install openssh-server openssh-client" >&2; exit 1; }
BUSYBOX=${BUSYBOX:-/bin/busybox}

WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/ksbuild-bench.XXXXXX")
SSHD_PID=
cleanup() {
  [ -z "$SSHD_PID" ] || kill "$SSHD_PID" 2>/dev/null || true
  chmod -R u+w "$WORK" 2>/dev/null; rm -rf "$WORK"
}
trap cleanup EXIT

# --- a real sshd on 127.0.0.1, as this user, with keys made here ----------------------
S=$WORK/sshd
mkdir -p "$S"
ssh-keygen -q -t ed25519 -N '' -f "$S/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$S/client_key"
cp "$S/client_key.pub" "$S/authorized_keys"
USER_NAME=$(id -un)
[ "$(id -u)" != 0 ] || mkdir -p /run/sshd
echo "builder $(cut -d' ' -f1,2 "$S/host_key.pub")" > "$S/known_hosts"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$S/sshd_config" <<EOF
ListenAddress 127.0.0.1
Port $PORT
HostKey $S/host_key
AuthorizedKeysFile $S/authorized_keys
AllowUsers $USER_NAME
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile $S/sshd.pid
EOF
cat > "$S/ssh_config" <<EOF
Host builder
  HostName 127.0.0.1
  Port $PORT
  User $USER_NAME
  IdentityFile $S/client_key
  IdentitiesOnly yes
  HostKeyAlias builder
  UserKnownHostsFile $S/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
EOF
"$SSHD" -D -f "$S/sshd_config" -E "$S/sshd.log" &
SSHD_PID=$!
for _ in $(seq 100); do ssh -F "$S/ssh_config" builder true 2>/dev/null && break; sleep 0.1; done
export NIX_SSHOPTS="-F $S/ssh_config"
# The far side runs Nix with this configuration (ssh's login shell knows no NIX_CONFIG).
{ echo '#!/bin/sh'; echo "export NIX_CONFIG='$NIX_CONFIG'"; echo 'exec nix-store "$@"'; } > "$WORK/nix-store-offline"
chmod +x "$WORK/nix-store-offline"
builder() { echo "ssh://$USER_NAME@builder?remote-program=$WORK/nix-store-offline&remote-store=$1"; }

# --- the 50 derivations, as TOML and as the same Nix expression ---------------------
P=$WORK/proj
mkdir -p "$P/derivations" "$P/tools/busybox/bin"
cp "$BUSYBOX" "$P/tools/busybox/bin/busybox"
printf 'system = "x86_64-linux"\n' > "$P/derivations/_project.toml"
echo '{' > "$P/default.nix"
TARGETS=()
for i in $(seq -w 1 50); do
  cat > "$P/derivations/t$i.toml" <<TOML
builder = "\${busybox}/bin/busybox"
args = ["sh", "-c", "echo $i > \$out"]
[inputs]
busybox = { path = "tools/busybox" }
TOML
  echo "  t$i = derivation { name = \"t$i\"; system = \"x86_64-linux\"; builder = \"\${./tools/busybox}/bin/busybox\"; args = [ \"sh\" \"-c\" \"echo $i > \$out\" ]; };" >> "$P/default.nix"
  TARGETS+=("t$i")
done
echo '}' >> "$P/default.nix"
export KSBUILD_PROJECT=$P

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
now() { echo "$EPOCHREALTIME"; }

# 1. 50 remote builds, two slots on the builder, nothing local; fresh stores on both sides.
ks_builds() {
  local run=$1 t0 t1
  t0=$(now)
  KSBUILD_STORE=$WORK/ks-client-$run "$KS" realise --no-link --max-jobs 0 \
    --builders "$(builder "$WORK/srv-ks-$run") x86_64-linux - 2 1" "${TARGETS[@]}" > /dev/null 2>"$WORK/ks.err" \
    || { cat "$WORK/ks.err" >&2; exit 1; }
  t1=$(now)
  echo "$t1 - $t0" | bc -l
}
nix_builds() {
  local run=$1 t0 t1
  t0=$(now)
  nix-build --store "$WORK/nix-client-$run" "$P/default.nix" --no-out-link --max-jobs 0 \
    --builders "$(builder "$WORK/srv-nix-$run") x86_64-linux - 2 1" > /dev/null 2>"$WORK/nix.err" \
    || { cat "$WORK/nix.err" >&2; exit 1; }
  t1=$(now)
  echo "$t1 - $t0" | bc -l
}
# Alternate, so both see the same machine state.
: > "$WORK/ks.times"; : > "$WORK/nix.times"
for run in $(seq "$RUNS"); do
  ks_builds "$run" >> "$WORK/ks.times"
  nix_builds "$run" >> "$WORK/nix.times"
done
KS_BUILDS=$(median < "$WORK/ks.times")
NIX_BUILDS=$(median < "$WORK/nix.times")
# Both built every derivation remotely: the outputs are in the far sides' stores.
[ -e "$WORK/srv-ks-1/nix/store" ] && [ -e "$WORK/srv-nix-1/nix/store" ]

# 2. A ~100 MB closure (four files of 25 MB, and one referring to them) sent over ssh.
D=$WORK/payload
mkdir -p "$D"
for i in 1 2 3 4; do head -c 25000000 /dev/urandom > "$D/blob$i"; done
KSP=$(KSBUILD_STORE=$WORK/ks-up "$KS" store add "$D")
NIXP=$(nix-store --store "$WORK/nix-up" --add "$D")
[ "$KSP" = "$NIXP" ] || { echo "the payload's store paths differ: $KSP vs $NIXP" >&2; exit 1; }
up_ks() {
  local run=$1 t0 t1
  t0=$(now)
  KSBUILD_STORE=$WORK/ks-up "$KS" store copy --to "$(builder "$WORK/up-ks-$run")" "$KSP" > /dev/null 2>"$WORK/ks.err" \
    || { cat "$WORK/ks.err" >&2; exit 1; }
  t1=$(now)
  echo "$t1 - $t0" | bc -l
}
up_nix() {
  local run=$1 t0 t1
  t0=$(now)
  nix copy --store "$WORK/nix-up" --to "$(builder "$WORK/up-nix-$run")" "$NIXP" > /dev/null 2>"$WORK/nix.err" \
    || { cat "$WORK/nix.err" >&2; exit 1; }
  t1=$(now)
  echo "$t1 - $t0" | bc -l
}
: > "$WORK/ks.up"; : > "$WORK/nix.up"
for run in $(seq "$RUNS"); do
  up_ks "$run" >> "$WORK/ks.up"
  up_nix "$run" >> "$WORK/nix.up"
done
KS_UP=$(median < "$WORK/ks.up")
NIX_UP=$(median < "$WORK/nix.up")
MB=$(du -sb "$D" | cut -f1)

printf '\nremote builds over ssh, loopback, %s runs (medians)\n' "$RUNS"
printf '%-58s %10s %10s %8s\n' measurement ksbuild 'Nix 2.8' ratio
printf '%-58s %9.1fms %9.1fms %7.2fx  (target <= 0.5x)\n' \
  "50 trivial remote builds, per derivation (-j0, 2 slots)" \
  "$(echo "$KS_BUILDS * 1000 / 50" | bc -l)" "$(echo "$NIX_BUILDS * 1000 / 50" | bc -l)" \
  "$(echo "$KS_BUILDS / $NIX_BUILDS" | bc -l)"
printf '%-58s %8.1fMB/s %8.1fMB/s %7.2fx  (target >= 0.9x)\n' \
  "upload of a $((MB / 1000000)) MB closure (store copy / nix copy --to ssh://)" \
  "$(echo "$MB / 1000000 / $KS_UP" | bc -l)" "$(echo "$MB / 1000000 / $NIX_UP" | bc -l)" \
  "$(echo "$NIX_UP / $KS_UP" | bc -l)"
