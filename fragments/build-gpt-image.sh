# Assembles a GPT disk image (x86_64 or generic ARM64) inside the `image` environment.
#   kernel, initramfs  the track's kernel and kubesolo-os.gz
#   KERNEL_FILE        the kernel's image file (bzImage, Image)
#   GRUB_TARGET        x86_64-efi or arm64-efi; EFI_NAME  BOOTX64.EFI or BOOTAA64.EFI
#   CONSOLE            the serial console (ttyS0, ttyAMA0); grubcfg  the A/B grub.cfg
#   DISK_MIB, ESP_MIB, SYSTEM_MIB  sizes
# Layout: 1 EFI (FAT32, KSOLOEFI), 2/3 System A/B (ext4, KSOLOA/KSOLOB: vmlinuz and
# kubesolo-os.gz), 4 Data (ext4, KSOLODATA, the rest). Sparse; identities from $out.
. "$imagelib"
img=$out/disk.img
mkdir -p "$out"
esp_start=$MIB
a_start=$((esp_start + ESP_MIB * MIB))
b_start=$((a_start + SYSTEM_MIB * MIB))
data_start=$((b_start + SYSTEM_MIB * MIB))
# The last MiB holds the backup GPT (33 sectors), rounded to keep the data partition aligned.
data_size=$((DISK_MIB * MIB - data_start - MIB))
[ "$data_size" -gt 0 ] || { echo "the disk ($DISK_MIB MiB) is too small for its partitions" >&2; exit 1; }
esp_uuid=$(seed_uuid esp-part) a_uuid=$(seed_uuid system-a-part) b_uuid=$(seed_uuid system-b-part)
data_uuid=$(seed_uuid data-part)
a_fs=$(seed_uuid system-a-fs) b_fs=$(seed_uuid system-b-fs) data_fs=$(seed_uuid data-fs)
esp_vol=$(seed_volid esp-fs)
esp_fsid=$(echo "$esp_vol" | cut -c1-4)-$(echo "$esp_vol" | cut -c5-8)
case "$GRUB_TARGET" in
  x86_64-efi) root_type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709 ;;
  arm64-efi) root_type=B921B045-1DF0-41C3-AF44-4C6F280D3FAE ;;
  *) echo "unknown GRUB_TARGET $GRUB_TARGET" >&2; exit 1 ;;
esac
truncate -s $((DISK_MIB * MIB)) "$img"
sfdisk -q --no-reread --no-tell-kernel "$img" <<TABLE
label: gpt
label-id: $(seed_uuid disk)
unit: sectors
first-lba: 2048
start=$((esp_start / 512)), size=$((ESP_MIB * MIB / 512)), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=$esp_uuid, name="KSOLOEFI"
start=$((a_start / 512)), size=$((SYSTEM_MIB * MIB / 512)), type=$root_type, uuid=$a_uuid, name="KSOLOA"
start=$((b_start / 512)), size=$((SYSTEM_MIB * MIB / 512)), type=$root_type, uuid=$b_uuid, name="KSOLOB"
start=$((data_start / 512)), size=$((data_size / 512)), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=$data_uuid, name="KSOLODATA"
TABLE

# System A and B: the kernel and the initramfs.
mkdir -p /build/system
cp "$kernel/$KERNEL_FILE" /build/system/vmlinuz
cp "$initramfs/kubesolo-os.gz" /build/system/kubesolo-os.gz
stage_tree /build/system /build/system.staged
ext4 "$img" "$a_start" $((SYSTEM_MIB * MIB)) KSOLOA "$a_fs" no /build/system.staged
ext4 "$img" "$b_start" $((SYSTEM_MIB * MIB)) KSOLOB "$b_fs" no /build/system.staged
ext4 "$img" "$data_start" "$data_size" KSOLODATA "$data_fs" yes

# The EFI partition: GRUB with the A/B configuration and its environment block.
mkdir -p /build/esp/EFI/BOOT
cat > /build/embed.cfg <<CFG
search --no-floppy --fs-uuid --set=root $esp_fsid
set prefix=(\$root)/EFI/BOOT
CFG
grub-mkimage -O "$GRUB_TARGET" -d "/usr/lib/grub/$GRUB_TARGET" -o "/build/esp/EFI/BOOT/$EFI_NAME" \
  -p /EFI/BOOT -c /build/embed.cfg \
  part_gpt fat ext2 normal configfile linux echo test search search_fs_uuid loadenv sleep \
  reboot halt cat ls efi_gop
sed -e "s/@SYSTEM_A_UUID@/$a_fs/g" -e "s/@SYSTEM_B_UUID@/$b_fs/g" -e "s/@CONSOLE@/$CONSOLE/g" \
  "$grubcfg" > /build/esp/EFI/BOOT/grub.cfg
grub-editenv /build/esp/EFI/BOOT/grubenv create
grub-editenv /build/esp/EFI/BOOT/grubenv set active_slot=A boot_counter=3 boot_success=1
stage_tree /build/esp /build/esp.staged
fat "$img" "$esp_start" $((ESP_MIB * MIB)) KSOLOEFI "$esp_vol" /build/esp.staged
cat > "$out/partitions.txt" <<INFO
disk $(seed_uuid disk)
1 KSOLOEFI  part $esp_uuid fat32 $esp_fsid offset $esp_start size $((ESP_MIB * MIB))
2 KSOLOA    part $a_uuid ext4 $a_fs offset $a_start size $((SYSTEM_MIB * MIB))
3 KSOLOB    part $b_uuid ext4 $b_fs offset $b_start size $((SYSTEM_MIB * MIB))
4 KSOLODATA part $data_uuid ext4 $data_fs offset $data_start size $data_size
INFO
write_sbom
echo "disk image: $DISK_MIB MiB apparent, $(du -k "$img" | cut -f1) KiB allocated"
