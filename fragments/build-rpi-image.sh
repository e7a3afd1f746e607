# Assembles the Raspberry Pi SD-card image (MBR) inside the `image` environment.
#   kernel, initramfs  the rpi track's kernel (Image, dtbs/) and kubesolo-os.gz
#   kernel5            the Pi 5 kernel (bcm2712), installed as kernel_2712.img with
#                      DTBS5; not installed when DTBS5 is empty (a variant whose kernel has
#                      no Pi 5 device tree: the mainline small kernel)
#   FIRMWARE           firmware files every boot partition needs (from raspi-firmware; the
#                      Pi 4's: the Pi 5's firmware lives in its EEPROM)
#   DTBS, DTBS5        device trees to install from each kernel's dtbs/
#   CONFIG_EXTRA       extra config.txt lines (e.g. upstream_kernel=1 for a mainline kernel)
#   DISK_MIB, CONTROL_MIB, BOOT_MIB  sizes
# Layout: 1 Boot/Control (FAT32, KSOCTL: autoboot.txt, firmware, a fallback kernel),
# 2/3 Boot A/B (FAT32, KSOBOOTA/KSOBOOTB, each bootable on its own), 4 Data (ext4,
# KSOLODATA, the rest). The firmware's tryboot switches A/B through autoboot.txt.
. "$imagelib"
img=$out/sdcard.img
fw=/usr/lib/raspi-firmware
mkdir -p "$out"
ctl_start=$MIB
a_start=$((ctl_start + CONTROL_MIB * MIB))
b_start=$((a_start + BOOT_MIB * MIB))
data_start=$((b_start + BOOT_MIB * MIB))
data_size=$((DISK_MIB * MIB - data_start))
[ "$data_size" -gt 0 ] || { echo "the disk ($DISK_MIB MiB) is too small for its partitions" >&2; exit 1; }

# Copies each device tree named in $2 from kernel $1's dtbs/ into $3, and its overlays.
install_dtbs() {
  for d in $2; do
    found=$(find "$1/dtbs" -name "$d" | head -n 1)
    [ -n "$found" ] || { echo "device tree $d is not in the kernel's dtbs ($1/dtbs)" >&2; exit 1; }
    cp "$found" "$3/$d"
  done
  if [ -d "$1/dtbs/overlays" ]; then
    mkdir -p "$3/overlays"
    cp -R "$1/dtbs/overlays/." "$3/overlays/"
  fi
}

# One boot partition's files: firmware, kernel, DTBs and overlays, config, initramfs.
boot_files() {
  dir=$1 slot=$2
  mkdir -p "$dir"
  for f in $FIRMWARE; do
    [ -f "$fw/$f" ] || { echo "firmware file $f is not in the locked raspi-firmware package ($fw)" >&2; exit 1; }
    cp "$fw/$f" "$dir/$f"
  done
  cp "$kernel/Image" "$dir/kernel8.img"
  install_dtbs "$kernel" "$DTBS" "$dir"
  if [ -n "$DTBS5" ]; then
    cp "$kernel5/Image" "$dir/kernel_2712.img"
    install_dtbs "$kernel5" "$DTBS5" "$dir"
  fi
  cp "$initramfs/kubesolo-os.gz" "$dir/kubesolo-os.gz"
  # Each model's kernel named explicitly ([pi4] covers 4B, 400 and CM4; [pi5] the Pi 5 and
  # 500); the sections end with [all]. Without a Pi 5 kernel, a Pi 5 finds nothing to boot.
  {
    echo "# KubeSolo OS boot partition ($slot)"
    echo "[all]"
    echo "arm_64bit=1"
    echo "enable_uart=1"
    echo "initramfs kubesolo-os.gz followkernel"
    echo "[pi4]"
    echo "kernel=kernel8.img"
    if [ -n "$DTBS5" ]; then
      echo "[pi5]"
      echo "kernel=kernel_2712.img"
    else
      echo "# [pi5]: not in this variant (its kernel has no bcm2712 device tree)"
    fi
    echo "[all]"
    printf '%s\n' "$CONFIG_EXTRA" | sed '/^$/d'
  } > "$dir/config.txt"
  echo "console=serial0,115200 console=tty1 panic=-1 rootwait kubesolo.slot=$slot kubesolo.data=LABEL=KSOLODATA" > "$dir/cmdline.txt"
}

boot_files /build/boot-a A
boot_files /build/boot-b B
boot_files /build/control fallback
cat > /build/control/autoboot.txt <<AUTO
[all]
tryboot_a_b=1
boot_partition=2
[tryboot]
boot_partition=3
AUTO
for p in control boot-a boot-b; do stage_tree "/build/$p" "/build/$p.staged"; done

truncate -s $((DISK_MIB * MIB)) "$img"
sfdisk -q --no-reread --no-tell-kernel "$img" <<TABLE
label: dos
label-id: 0x$(seed_hex disk | cut -c1-8)
unit: sectors
start=$((ctl_start / 512)), size=$((CONTROL_MIB * MIB / 512)), type=c, bootable
start=$((a_start / 512)), size=$((BOOT_MIB * MIB / 512)), type=c
start=$((b_start / 512)), size=$((BOOT_MIB * MIB / 512)), type=c
start=$((data_start / 512)), size=$((data_size / 512)), type=83
TABLE
fat "$img" "$ctl_start" $((CONTROL_MIB * MIB)) KSOCTL "$(seed_volid control-fs)" /build/control.staged
fat "$img" "$a_start" $((BOOT_MIB * MIB)) KSOBOOTA "$(seed_volid boot-a-fs)" /build/boot-a.staged
fat "$img" "$b_start" $((BOOT_MIB * MIB)) KSOBOOTB "$(seed_volid boot-b-fs)" /build/boot-b.staged
ext4 "$img" "$data_start" "$data_size" KSOLODATA "$(seed_uuid data-fs)" yes
cat > "$out/partitions.txt" <<INFO
disk 0x$(seed_hex disk | cut -c1-8)
1 KSOCTL    fat32 offset $ctl_start size $((CONTROL_MIB * MIB))
2 KSOBOOTA  fat32 offset $a_start size $((BOOT_MIB * MIB))
3 KSOBOOTB  fat32 offset $b_start size $((BOOT_MIB * MIB))
4 KSOLODATA ext4 $(seed_uuid data-fs) offset $data_start size $data_size
INFO
echo "sd-card image: $DISK_MIB MiB apparent, $(du -k "$img" | cut -f1) KiB allocated"
