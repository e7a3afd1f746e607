# Packs a track's initramfs (kubesolo-os.gz) inside the `image` environment.
#   rootfs        the architecture's rootfs
#   kernel        the track's kernel (lib/modules/KVER from `modules_install`)
#   MODULE_LISTS  module list files (one module name per line, `#` comments)
# Modules come with their dependencies, in load order (etc/modules.order) and with a
# modules.dep generated for this kernel. A listed module that the kernel neither builds
# in nor ships fails the build. The archive is newc cpio, entries sorted, owner 0:0,
# mtimes at SOURCE_DATE_EPOCH, gzip without name or timestamp.
set -eu
export LC_ALL=C TZ=UTC
umask 022
root=/build/root
cp -R "$rootfs" "$root"
chmod -R u+w "$root"
kver=$(ls "$kernel/lib/modules" 2>/dev/null | head -n 1)
[ -n "$kver" ] || { echo "the kernel $kernel has no lib/modules (was it built with the modules target?)" >&2; exit 1; }
# depmod on a writable copy of the kernel's modules, to ask modprobe for load orders.
mods=/build/kmods
mkdir -p "$mods/lib/modules"
cp -R "$kernel/lib/modules/$kver" "$mods/lib/modules/$kver"
chmod -R u+w "$mods"
depmod -b "$mods" "$kver"
: > /build/order
missing=0
for list in $MODULE_LISTS; do
  while read -r m rest; do
    case "$m" in ''|'#'*) continue ;; esac
    if ! deps=$(modprobe -d "$mods" -S "$kver" --show-depends "$m" 2>&1); then
      name=$(basename "$list")
      echo "module \`$m\` (from ${name#*-}) is not in kernel $kver: neither built in nor built as a module" >&2
      missing=1
      continue
    fi
    echo "$deps" | while read -r kind path args; do
      case "$kind" in
        insmod) echo "${path#"$mods/lib/modules/$kver/"} $args" >> /build/order ;;
        builtin) ;;
        *) echo "unexpected modprobe output for $m: $kind $path" >&2; exit 1 ;;
      esac
    done
  done < "$list"
done
[ "$missing" = 0 ] || { echo "fix the module list, or enable the modules in the kernel's fragments" >&2; exit 1; }
# Keep the first occurrence of each module: dependencies come before their users.
awk '!seen[$1]++' /build/order > "$root/etc/modules.order"
target="$root/usr/lib/modules/$kver"
mkdir -p "$target"
while read -r rel args; do
  mkdir -p "$target/$(dirname "$rel")"
  cp "$mods/lib/modules/$kver/$rel" "$target/$rel"
done < "$root/etc/modules.order"
for f in modules.builtin modules.builtin.modinfo modules.order; do
  [ -e "$mods/lib/modules/$kver/$f" ] && cp "$mods/lib/modules/$kver/$f" "$target/$f"
done
depmod -b "$root" "$kver"
echo "initramfs: kernel $kver, $(wc -l < "$root/etc/modules.order") modules: $(awk '{n=$1; sub(".*/","",n); sub("\\.ko.*","",n); printf "%s ", n}' "$root/etc/modules.order")"
# Normalise: modes from the kind of file, every time at SOURCE_DATE_EPOCH.
find "$root" -type d -exec chmod 0755 {} +
find "$root" -type f -perm /111 -exec chmod 0755 {} +
find "$root" -type f ! -perm /111 -exec chmod 0644 {} +
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
mkdir -p "$out"
cd "$root"
find . -mindepth 1 | sort | cpio --quiet -o -H newc --reproducible -R 0:0 | gzip -9 -n > "$out/kubesolo-os.gz"
cp "$root/etc/modules.order" "$out/modules.order"
echo "initramfs: $(wc -c < "$out/kubesolo-os.gz") bytes"
