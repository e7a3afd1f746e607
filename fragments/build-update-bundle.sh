# Builds an unsigned KubeSolo OS update bundle inside the `image` environment: the new
# contents of an A/B slot and a manifest naming the version (VERSION_ID of the initramfs's
# os-release), architecture, track and each file's SHA-256 and size. `ksbuild bundle sign
# --key FILE` signs it outside the sandbox; the device's `kubesolo-update apply` checks it.
#   BOOT=grub: kernel, initramfs, KERNEL_FILE (bzImage, Image) → `vmlinuz`, `kubesolo-os.gz`
#   BOOT=rpi:  a whole Raspberry Pi boot partition (rpi-boot-lib.sh: both kernels, device
#              trees, overlays, firmware, config.txt, cmdline.txt without a slot)
#   ARCH (uname -m of the target), TRACK, MIN_VERSION (oldest version it may replace)
set -eu
export LC_ALL=C TZ=UTC
umask 022
mkdir -p /build/bundle/files "$out"
cd /build/bundle
case "$BOOT" in
  grub)
    cp "$kernel/$KERNEL_FILE" files/vmlinuz
    cp "$initramfs/kubesolo-os.gz" files/kubesolo-os.gz
    ;;
  rpi)
    . "$rpiboot"
    boot_files /build/bundle/files ""
    ;;
  *) echo "BOOT=$BOOT: expected grub or rpi" >&2; exit 1 ;;
esac
# The version the new slot reports, from the initramfs itself.
version=$(gzip -dc files/kubesolo-os.gz | cpio -i --quiet --to-stdout etc/os-release \
  | sed -n 's/^VERSION_ID=//p' | tr -d '"')
[ -n "$version" ] || { echo "the initramfs has no VERSION_ID in etc/os-release" >&2; exit 1; }
names=$(cd files && find . -type f | sed 's|^\./||' | sort)
{
  echo "format=kubesolo-update-1"
  echo "version=$version"
  echo "arch=$ARCH"
  echo "track=$TRACK"
  echo "boot=$BOOT"
  echo "min-version=$MIN_VERSION"
  for f in $names; do
    echo "file=$(sha256sum "files/$f" | cut -d' ' -f1) $(stat -c %s "files/$f") $f"
  done
} > manifest
chmod 0644 manifest
# shellcheck disable=SC2086 # one name per word: names have no spaces
tar --format=ustar --no-recursion --owner=0 --group=0 --numeric-owner --mode=0644 \
  --mtime="@$SOURCE_DATE_EPOCH" -cf "$out/bundle.tar" manifest $(for f in $names; do echo "files/$f"; done)
cp manifest "$out/manifest"
echo "update bundle: version $version for $ARCH ($TRACK), $(echo "$names" | wc -l) files, $(stat -c %s "$out/bundle.tar") bytes"
