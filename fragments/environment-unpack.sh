# Builds a build environment's tree from locked Debian packages, with nothing but the
# static busybox that runs it (so Nix can build it too). Run by `busybox sh -e`.
#   $debs    the .deb store paths, separated by spaces
#   $fixups  lines `path target`: symlinks to create (what maintainer scripts would have made)
bb=$builder
umask 022
# Merged /usr, as debootstrap makes it: the debs still ship /bin, /sbin, /lib, /lib64, and
# busybox tar keeps these directory symlinks when it extracts into them.
$bb mkdir -p "$out/usr/bin" "$out/usr/sbin" "$out/usr/lib" "$out/usr/lib64"
for d in bin sbin lib lib64; do $bb ln -s "usr/$d" "$out/$d"; done
for deb in $debs; do
  member=$($bb ar t "$deb" | $bb grep '^data\.tar')
  case "$member" in
    *.xz) $bb ar p "$deb" "$member" | $bb tar -xJ -f - -C "$out" ;;
    *.gz) $bb ar p "$deb" "$member" | $bb tar -xz -f - -C "$out" ;;
    data.tar) $bb ar p "$deb" "$member" | $bb tar -x -f - -C "$out" ;;
    *) echo "unsupported member $member in $deb" >&2; exit 1 ;;
  esac
done
echo "$fixups" | while read -r path target; do
  [ -n "$path" ] || continue
  $bb mkdir -p "$out/$($bb dirname "$path")"
  $bb rm -f "$out/$path"
  $bb ln -s "$target" "$out/$path"
done
# Mount points for entering the tree (environment-enter.sh).
$bb mkdir -p "$out/nix/store" "$out/build" "$out/dev" "$out/proc" "$out/tmp" "$out/etc"
for f in passwd group hosts; do
  [ -e "$out/etc/$f" ] || : > "$out/etc/$f"
done
