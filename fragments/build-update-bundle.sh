# Builds an unsigned KubeSolo OS update bundle inside the `image` environment: the new
# contents of a GRUB A/B slot (the kernel as `vmlinuz`, the initramfs `kubesolo-os.gz`) and
# a manifest naming the version (VERSION_ID of the initramfs's os-release), architecture,
# track and each file's SHA-256 and size. `ksbuild bundle sign --key FILE` signs it outside
# the sandbox; the device's `kubesolo-update apply` checks it. Format: `ksbuild bundle --help`.
#   kernel, initramfs  the track's kernel and kubesolo-os.gz;  KERNEL_FILE  bzImage, Image
#   ARCH (uname -m of the target), TRACK, MIN_VERSION (oldest version it may replace)
set -eu
export LC_ALL=C TZ=UTC
mkdir -p /build/bundle/files "$out"
cd /build/bundle
cp "$kernel/$KERNEL_FILE" files/vmlinuz
cp "$initramfs/kubesolo-os.gz" files/kubesolo-os.gz
# The version the new slot reports, from the initramfs itself.
version=$(gzip -dc files/kubesolo-os.gz | cpio -i --quiet --to-stdout etc/os-release \
  | sed -n 's/^VERSION_ID=//p' | tr -d '"')
[ -n "$version" ] || { echo "the initramfs has no VERSION_ID in etc/os-release" >&2; exit 1; }
{
  echo "format=kubesolo-update-1"
  echo "version=$version"
  echo "arch=$ARCH"
  echo "track=$TRACK"
  echo "boot=grub"
  echo "min-version=$MIN_VERSION"
  for f in vmlinuz kubesolo-os.gz; do
    echo "file=$(sha256sum "files/$f" | cut -d' ' -f1) $(stat -c %s "files/$f") $f"
  done
} > manifest
chmod 0644 manifest files/*
tar --format=ustar --no-recursion --owner=0 --group=0 --numeric-owner --mode=0644 \
  --mtime="@$SOURCE_DATE_EPOCH" -cf "$out/bundle.tar" manifest files/vmlinuz files/kubesolo-os.gz
cp manifest "$out/manifest"
echo "update bundle: version $version for $ARCH ($TRACK), $(stat -c %s "$out/bundle.tar") bytes"
