# Builds a kernel inside the `kernel` environment. Run by /bin/sh (dash) from the tree.
#   src          the linux-source .deb (holds usr/src/linux-source-*.tar.xz) or a tarball
#   KARCH        kernel ARCH (x86_64, arm64); CROSS_COMPILE for cross builds
#   BASE_CONFIG  the defconfig target (x86_64_defconfig, defconfig, bcm2711_defconfig, tinyconfig)
#   FRAGMENTS    config fragments, merged in order; every line must hold in the final .config
#   TARGETS      make targets (bzImage, Image, dtbs, modules); IMAGE the image to install
set -eu
export LC_ALL=C TZ=UTC
export KBUILD_BUILD_TIMESTAMP="$(date -u -d "@$SOURCE_DATE_EPOCH" '+%a %b %e %H:%M:%S UTC %Y')"
export KBUILD_BUILD_USER=ksbuild KBUILD_BUILD_HOST=ksbuild KBUILD_BUILD_VERSION=1
cd /build
if ar t "$src" > /dev/null 2>&1; then
  # A Debian package: its data.tar holds usr/src/linux-source-*.tar.xz.
  ar p "$src" data.tar.xz | tar -xJ --wildcards './usr/src/linux-source-*.tar.xz'
  tar -xJf usr/src/linux-source-*.tar.xz
  rm -rf usr
else
  tar -xf "$src"
fi
srcdir=$(echo /build/linux-*)
O=/build/out
# Quiet for the steps that take seconds; the compile prints kbuild's short lines (`  CC
# kernel/fork.o`), one per object, which the progress view counts against the last build's.
mk() { make -s -C "$srcdir" O="$O" ARCH="$KARCH" ${CROSS_COMPILE:+CROSS_COMPILE=$CROSS_COMPILE} "$@"; }
echo "kernel: configuring $(basename "$srcdir") for $KARCH: $BASE_CONFIG + $(echo $FRAGMENTS | wc -w) fragments"
mk "$BASE_CONFIG"
"$srcdir/scripts/kconfig/merge_config.sh" -m -O "$O" "$O/.config" $FRAGMENTS > /build/merge.log
mk olddefconfig
# Audit: every option a fragment sets must hold; Kconfig silently drops what it cannot satisfy.
failed=0
for f in $FRAGMENTS; do
  while IFS= read -r line; do
    case "$line" in
      CONFIG_*=*) opt=${line%%=*}; want=${line#*=} ;;
      "# CONFIG_"*" is not set") opt=${line#\# }; opt=${opt%% *}; want=n ;;
      *) continue ;;
    esac
    have=$(grep -E "^$opt=" "$O/.config" | cut -d= -f2- || true)
    [ -n "$have" ] || have=n
    if [ "$have" != "$want" ]; then
      echo "config audit: $opt wanted $want, got $have (from $(basename "$f"))" >&2
      failed=1
    fi
  done < "$f"
done
[ "$failed" = 0 ] || { echo "config audit failed: Kconfig dropped or changed the options above" >&2; exit 1; }
echo "kernel: compiling $TARGETS with $NIX_BUILD_CORES jobs"
make --no-print-directory -C "$srcdir" O="$O" ARCH="$KARCH" ${CROSS_COMPILE:+CROSS_COMPILE=$CROSS_COMPILE} \
  -j"$NIX_BUILD_CORES" $TARGETS
echo "kernel: installing $TARGETS"
mkdir -p "$out"
cp "$O/.config" "$out/config"
cp "$O/$IMAGE" "$out/$(basename "$IMAGE")"
if echo " $TARGETS " | grep -q ' modules '; then
  mk INSTALL_MOD_PATH="$out" INSTALL_MOD_STRIP=1 DEPMOD=true modules_install
  rm -f "$out"/lib/modules/*/build "$out"/lib/modules/*/source
fi
if echo " $TARGETS " | grep -q ' dtbs '; then
  mk INSTALL_DTBS_PATH="$out/dtbs" dtbs_install
fi
