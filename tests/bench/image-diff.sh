#!/usr/bin/env bash
# Benchmark of issue #11: the image-aware diff of two 4 GiB sparse disk images that differ
# in one line of one file of a FAT32 partition (target: ≤ 30 s), against `cmp` of the same
# two files, which reads every byte (holes included) and says only where they part.
#   The images: an MBR with one 256 MiB FAT32 partition at 1 MiB holding a 64 MiB file and a
#   small config.txt; the rest of the 4 GiB is a hole. Made with mtools.
# Usage: tests/bench/image-diff.sh   KS=/path/to/ksbuild; BENCH_DIR=DIR (default /var/tmp).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --quiet
KS=${KS:-${CARGO_TARGET_DIR:-$PWD/target}/release/ksbuild}
command -v mformat >/dev/null || { echo "mtools is needed: .ci/install-nix" >&2; exit 1; }
WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/ksbuild-image-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
head -c $((64 << 20)) /dev/urandom > "$WORK/payload.bin"
image() { # $1 = directory, $2 = the os_prefix line
  mkdir -p "$1"
  local img=$1/sdcard.img
  truncate -s 4G "$img"
  # MBR: one FAT32 (LBA) partition from sector 2048, 524288 sectors; disk signature; 55 AA.
  printf '\x78\x56\x34\x12' | dd of="$img" bs=1 seek=440 conv=notrunc status=none
  printf '\x00\x00\x00\x00\x0c\x00\x00\x00\x00\x08\x00\x00\x00\x00\x08\x00' \
    | dd of="$img" bs=1 seek=446 conv=notrunc status=none
  printf '\x55\xaa' | dd of="$img" bs=1 seek=510 conv=notrunc status=none
  mformat -i "$img@@1M" -F -T 524288 -h 1 -s 32 -v KSOBOOTA -N 12345678 ::
  printf 'arm_64bit=1\nkernel=kernel8.img\n%s\n' "$2" > "$1/config.txt"
  mcopy -i "$img@@1M" "$WORK/payload.bin" ::/kernel8.img
  mcopy -i "$img@@1M" "$1/config.txt" ::/config.txt
}
image "$WORK/a" "os_prefix=slot-a/"
image "$WORK/b" "os_prefix=slot-b/"
sync
cat "$WORK"/a/sdcard.img "$WORK"/b/sdcard.img > /dev/null  # warm the page cache (holes cost nothing)
t0=$EPOCHREALTIME
out=$("$KS" diff "$WORK/a/sdcard.img" "$WORK/b/sdcard.img" || true)
t1=$EPOCHREALTIME
t2=$EPOCHREALTIME
cmp "$WORK/a/sdcard.img" "$WORK/b/sdcard.img" > /dev/null || true
t3=$EPOCHREALTIME
echo "ksbuild diff says: $(echo "$out" | head -1)"
printf '%-40s %8.3f s  (target ≤ 30 s)\n' "ksbuild diff, two 4 GiB sparse images" "$(echo "$t1 - $t0" | bc -l)"
printf '%-40s %8.3f s  (stops at the first differing byte, says only its offset)\n' "cmp of the same two files" "$(echo "$t3 - $t2" | bc -l)"
printf 'allocated in each image: %s\n' "$(du -h "$WORK/a/sdcard.img" | cut -f1)"
