# Assembles the x86_64 live ISO inside the `image` environment: a hybrid ISO 9660 image
# that boots from a CD (El Torito) and from a USB stick or disk written with `dd` (isohybrid
# MBR and GPT, as Debian's own ISOs), on BIOS (isolinux) and on UEFI (GRUB's BOOTX64.EFI in an
# El Torito EFI system image, which the MBR and GPT also list as a partition).
#   kernel, initramfs  the track's kernel (KERNEL_FILE) and kubesolo-os.gz
#   CONSOLE            the serial console (ttyS0); both boot loaders talk on it at 115200
#   VOLUME             the ISO 9660 volume id; EFI_KIB  the EFI system image's size
# Four entries, the same on both boot loaders (one table below): kubesolo (default, after
# 3 s), kubesolo-debug, kubesolo-shell, kubesolo-nopersist. The ISO has no A/B slot and may
# find no data partition: every entry says `kubesolo.live kubesolo.slot=live`.
# Identities come from $out (image-lib.sh); every timestamp is SOURCE_DATE_EPOCH.
. "$imagelib"
iso=$out/kubesolo.iso
mkdir -p "$out"

# What the inputs must hold, named with the fix.
[ -f "$kernel/$KERNEL_FILE" ] || {
  echo "the kernel input $kernel has no $KERNEL_FILE: the iso needs an x86_64 kernel target (kernel-x86_64) as \`kernel\`" >&2
  exit 1
}
[ -f "$initramfs/kubesolo-os.gz" ] || {
  echo "the initramfs input $initramfs has no kubesolo-os.gz: the iso needs an initramfs target (initramfs-x86_64) as \`initramfs\`" >&2
  exit 1
}
for f in /usr/lib/ISOLINUX/isolinux.bin /usr/lib/ISOLINUX/isohdpfx.bin \
  /usr/lib/syslinux/modules/bios/ldlinux.c32 /usr/lib/syslinux/modules/bios/menu.c32 \
  /usr/lib/grub/x86_64-efi/kernel.img; do
  [ -f "$f" ] || {
    echo "$f is not in the image environment: sandboxes/image.toml needs isolinux, syslinux-common and grub-efi-amd64-bin in \`data\` (then \`ksbuild lock image\`)" >&2
    exit 1
  }
done
command -v xorriso > /dev/null || {
  echo "xorriso is not in the image environment: add it to \`packages\` in sandboxes/image.toml, then \`ksbuild lock image\`" >&2
  exit 1
}

disc_id=$(seed_uuid disc)
efi_vol=$(seed_volid efi-fs)
stamp=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y%m%d%H%M%S00)
# The disk image's words; tty0 first, so that a PC's screen shows the kernel's log too, the
# serial port last, so that it is /dev/console for the init (as on the disk image).
common="console=tty0 console=$CONSOLE,115200n8 panic=-1 kubesolo.live kubesolo.slot=live kubesolo.data=LABEL=KSOLODATA"
# name|GRUB hotkey|kernel words|what it does
entries='kubesolo|k||boot KubeSolo OS; the data partition if a disk has one, else RAM
kubesolo-debug|d|kubesolo.debug loglevel=7|verbose kernel log and the init'"'"'s debug lines
kubesolo-shell|s|kubesolo.shell|a root shell on the console beside KubeSolo
kubesolo-nopersist|n|kubesolo.nopersist|RAM only: never mounts a data partition'

mkdir -p /build/iso/.disk/id /build/iso/boot/grub /build/iso/isolinux /build/efi/EFI/BOOT
: > "/build/iso/.disk/id/$disc_id"
cp "$kernel/$KERNEL_FILE" /build/iso/boot/vmlinuz
cp "$initramfs/kubesolo-os.gz" /build/iso/boot/kubesolo-os.gz

# BIOS: isolinux with its text menu (menu.c32: drawn on the screen and the serial port, where
# isolinux's own DISPLAY and SAY text is not); an entry's key boots it at once.
cp /usr/lib/ISOLINUX/isolinux.bin /build/iso/isolinux/
for f in ldlinux.c32 menu.c32 libutil.c32 libcom32.c32; do
  cp "/usr/lib/syslinux/modules/bios/$f" /build/iso/isolinux/
done
{
  echo "SERIAL 0 115200"
  echo "UI menu.c32"
  echo "PROMPT 0"
  echo "TIMEOUT 30"
  echo "DEFAULT kubesolo"
  echo "MENU TITLE KubeSolo OS live"
  echo "MENU IMMEDIATE"
  echo "$entries" | while IFS='|' read -r name key words what; do
    echo "LABEL $name"
    echo "  MENU LABEL $(echo "$name" | sed "s/-$key/-^$key/; t; s/^$key/^$key/")"
    echo "  LINUX /boot/vmlinuz"
    echo "  INITRD /boot/kubesolo-os.gz"
    echo "  APPEND $common${words:+ $words}"
    echo "  TEXT HELP"
    echo "  $what"
    echo "  ENDTEXT"
  done
} > /build/iso/isolinux/isolinux.cfg

# UEFI: GRUB finds the disc by a file named after its identity (as Debian's ISOs do: ISO 9660
# has no UUID of its own, GRUB's `--fs-uuid` of a disc is its timestamp, the same for every
# build), then reads /boot/grub/grub.cfg from it. A menu key per entry. The menu goes to the
# serial port and to the firmware's console; where the firmware also sends its console to the
# serial port (OVMF does), that port shows it drawn twice.
{
  echo "serial --unit=0 --speed=115200"
  echo "terminal_input serial console"
  echo "terminal_output serial console"
  echo "set timeout=3"
  echo "set default=0"
  echo "$entries" | while IFS='|' read -r name key words what; do
    echo "menuentry '$name' --hotkey=$key {"
    echo "  linux /boot/vmlinuz $common${words:+ $words}"
    echo "  initrd /boot/kubesolo-os.gz"
    echo "}"
  done
} > /build/iso/boot/grub/grub.cfg
cat > /build/embed.cfg <<CFG
search --no-floppy --file --set=root /.disk/id/$disc_id
set prefix=(\$root)/boot/grub
CFG
grub-mkimage -O x86_64-efi -d /usr/lib/grub/x86_64-efi -o /build/efi/EFI/BOOT/BOOTX64.EFI \
  -p /boot/grub -c /build/embed.cfg \
  iso9660 part_msdos part_gpt fat normal configfile linux echo test search search_fs_file \
  serial terminal sleep reboot halt cat ls efi_gop
stage_tree /build/efi /build/efi.staged
truncate -s $((EFI_KIB * 1024)) /build/iso/boot/grub/efi.img
fat /build/iso/boot/grub/efi.img 0 $((EFI_KIB * 1024)) KSOLOISO "$efi_vol" /build/efi.staged 12

stage_tree /build/iso /build/iso.staged
# -no_rc: no startup files. -r: owner 0:0, modes rationalised. SOURCE_DATE_EPOCH (exported by
# the sandbox) already sets -iso_nowtime (the time of nodes without a source file),
# --modification-date (the volume's times, GRUB's and blkid's "UUID" of the disc, the boot
# catalog's time) and --set_all_file_dates set_to_mtime (atime and ctime = the staged mtime);
# they are given here so the image does not depend on that default. The GPT's GUIDs come from
# --gpt_disk_guid (the partitions' are derived from it); the isohybrid MBR's id would come
# from --modification-date, the same for every build, so it is set below. Files: libisofs
# writes directories in name order, and their data in that order (`check --vary order`).
xorriso -no_rc -iso_nowtime "=$SOURCE_DATE_EPOCH" -as mkisofs -o "$iso" -quiet \
  -r -V "$VOLUME" --modification-date="$stamp" --set_all_file_dates set_to_mtime \
  --gpt_disk_guid "$(seed_uuid gpt-disk)" \
  -b isolinux/isolinux.bin -c isolinux/boot.cat -no-emul-boot -boot-load-size 4 -boot-info-table \
  -isohybrid-mbr /usr/lib/ISOLINUX/isohdpfx.bin \
  -eltorito-alt-boot -e boot/grub/efi.img -no-emul-boot -isohybrid-gpt-basdat \
  /build/iso.staged 2> /build/xorriso.log || { cat /build/xorriso.log >&2; exit 1; }
# The MBR's disk signature (bytes 440-443) from the output's identity.
seed_hex mbr-id | cut -c1-8 | sed 's/../& /g' | {
  read -r b0 b1 b2 b3
  printf "\\$(printf %o 0x$b0)\\$(printf %o 0x$b1)\\$(printf %o 0x$b2)\\$(printf %o 0x$b3)"
} | dd of="$iso" bs=1 seek=440 conv=notrunc status=none
write_sbom
echo "live ISO: $(du -k "$iso" | cut -f1) KiB, disc id $disc_id"
