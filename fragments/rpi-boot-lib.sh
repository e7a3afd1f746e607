# The files of a Raspberry Pi boot partition (Pi 4 and Pi 5), for the SD-card image and its
# update bundles; sourced by build-rpi-image.sh and build-update-bundle.sh.
#   kernel, kernel5, initramfs, FIRMWARE, DTBS, DTBS5, CONFIG_EXTRA: see build-rpi-image.sh
fw=/usr/lib/raspi-firmware

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
  # The slot is named where it is known (the image's own partitions); an update bundle's
  # files go to either slot, and the init then asks the firmware which one it booted.
  echo "console=serial0,115200 console=tty1 panic=-1 rootwait${slot:+ kubesolo.slot=$slot} kubesolo.data=LABEL=KSOLODATA" > "$dir/cmdline.txt"
}

