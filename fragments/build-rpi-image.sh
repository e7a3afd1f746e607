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
. "$rpiboot"
img=$out/sdcard.img
mkdir -p "$out"
ctl_start=$MIB
a_start=$((ctl_start + CONTROL_MIB * MIB))
b_start=$((a_start + BOOT_MIB * MIB))
data_start=$((b_start + BOOT_MIB * MIB))
data_size=$((DISK_MIB * MIB - data_start))
[ "$data_size" -gt 0 ] || { echo "the disk ($DISK_MIB MiB) is too small for its partitions" >&2; exit 1; }

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
write_sbom
echo "sd-card image: $DISK_MIB MiB apparent, $(du -k "$img" | cut -f1) KiB allocated"
