# Assembles a KubeSolo OS rootfs inside the `image` environment. Run by /bin/sh (dash).
#   pkgs      the rootfs-ARCH environment tree (Debian packages of the target architecture)
#   applets   a busybox of the build machine, to list the applets (same Debian build)
#   init      fragments/kubesolo-init
#   kubesolo  the KubeSolo release (a tree holding `kubesolo`)
#   agent     the update agent for the track (a tree holding `bin/kubesolo-update`, static)
#   keys      fragments/update-keys: `*.pub`, the public keys the agent trusts
#   TRIPLET   the multiarch triplet of the target (x86_64-linux-gnu, aarch64-linux-gnu)
# Every ELF copied in brings its NEEDED libraries and dynamic loader; the build fails if
# any ELF of the rootfs is for another machine than TRIPLET's, or does not resolve inside
# the rootfs.
set -eu
export LC_ALL=C TZ=UTC
umask 022
r=$out
libdir=usr/lib/$TRIPLET
# The ELF machine of the track (as `readelf -h` names it) and its KubeSolo target.
case "$TRIPLET" in
  x86_64-linux-gnu) machine='Advanced Micro Devices X86-64' kubesolo_target=kubesolo-x86_64 ;;
  aarch64-linux-gnu) machine=AArch64 kubesolo_target=kubesolo-arm64 ;;
  *) echo "build-rootfs.sh: no ELF machine known for TRIPLET=$TRIPLET" >&2; exit 1 ;;
esac
mkdir -p "$r"
cd "$r"
mkdir -p bin sbin usr/bin usr/sbin usr/local/bin "$libdir" etc dev proc sys run tmp mnt root \
  var/lib var/log var/tmp
# /lib is the merged /usr/lib, as on Debian (loader paths start with it).
ln -s usr/lib lib
mkdir -p usr/lib/modules

# Resolves a path inside the package tree, following symlinks within the tree only.
resolve() {
  f=$1
  n=0
  while [ -L "$f" ]; do
    t=$(readlink "$f")
    case "$t" in
      /*) f=$pkgs$t ;;
      *) f=$(dirname "$f")/$t ;;
    esac
    n=$((n + 1))
    [ "$n" -lt 40 ] || { echo "symlink loop at $1" >&2; return 1; }
  done
  [ -e "$f" ] || { echo "$1 resolves to the missing $f" >&2; return 1; }
  echo "$f"
}

# The userland: the static busybox and a link per applet.
cp "$(resolve "$pkgs/usr/bin/busybox")" bin/busybox
chmod 0755 bin/busybox
for applet in $("$applets" --list-full); do
  [ -e "$applet" ] || [ -L "$applet" ] || ln -s /bin/busybox "$applet"
done

# ELF helpers (readelf reads any architecture).
is_elf() { [ "$(head -c 4 "$1" | od -An -c | tr -d ' ')" = '177ELF' ]; }
needed() { readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; }
interp() { readelf -l "$1" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p'; }
# Fails, saying so (and $2, the likely cause), if ELF $1 is not for the track's machine: the
# booted kernel could not run it (`ELF: not found`, and PID 1 killed if it is the init's).
check_machine() {
  m=$(readelf -h "$1" | sed -n 's/^ *Machine: *//p')
  [ "$m" = "$machine" ] && return 0
  echo "rootfs check: $1 is an ELF for ${m:-an unknown machine}, but this rootfs ($TRIPLET) needs $machine${2:+; $2}" >&2
  return 1
}

# Copies library $1 (a soname) from the package tree into the rootfs, with its own needs.
add_lib() {
  [ -e "$libdir/$1" ] && return 0
  for d in "$pkgs/usr/lib/$TRIPLET" "$pkgs/usr/lib"; do
    if [ -e "$d/$1" ] || [ -L "$d/$1" ]; then
      cp "$(resolve "$d/$1")" "$libdir/$1"
      chmod 0644 "$libdir/$1"
      add_needs "$libdir/$1"
      return 0
    fi
  done
  echo "library $1 (needed by $2) is in none of the locked packages" >&2
  return 1
}
add_needs() {
  i=$(interp "$1")
  if [ -n "$i" ] && [ ! -e ".$i" ] && [ ! -L ".$i" ]; then
    base=${i##*/}
    cp "$(resolve "$pkgs/usr/lib/$TRIPLET/$base")" "$libdir/$base"
    chmod 0755 "$libdir/$base"
    # A relative link, so that it resolves inside the rootfs (never on the build machine).
    case "$(dirname "$i")" in
      /lib|/usr/lib) ln -s "$TRIPLET/$base" ".$i" ;;
      *) mkdir -p ".$(dirname "$i")"; ln -s "../$libdir/$base" ".$i" ;;
    esac
  fi
  for lib in $(needed "$1"); do
    add_lib "$lib" "$1"
  done
}

# iptables (nftables backend) and nft, from the locked packages.
cp "$(resolve "$pkgs/usr/sbin/xtables-nft-multi")" usr/sbin/xtables-nft-multi
cp "$(resolve "$pkgs/usr/sbin/nft")" usr/sbin/nft
chmod 0755 usr/sbin/xtables-nft-multi usr/sbin/nft
for t in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore \
         iptables-nft iptables-nft-save iptables-nft-restore ip6tables-nft ip6tables-nft-save \
         ip6tables-nft-restore; do
  rm -f "usr/sbin/$t" "sbin/$t"
  ln -s xtables-nft-multi "usr/sbin/$t"
done
# The match and target extensions iptables loads at run time.
mkdir -p "$libdir/xtables"
for so in "$pkgs/usr/lib/$TRIPLET/xtables/"*.so; do
  cp "$(resolve "$so")" "$libdir/xtables/${so##*/}"
done
for f in usr/sbin/xtables-nft-multi usr/sbin/nft "$libdir"/xtables/*.so; do
  add_needs "$f"
done
for f in etc/protocols etc/services etc/ethertypes; do
  [ -e "$pkgs/$f" ] && cp "$(resolve "$pkgs/$f")" "$f"
done

# KubeSolo.
cp "$kubesolo/kubesolo" usr/local/bin/kubesolo
chmod 0755 usr/local/bin/kubesolo
if is_elf usr/local/bin/kubesolo; then
  check_machine usr/local/bin/kubesolo "the KubeSolo release pinned as \`$kubesolo_target\` is for another architecture: pin the $TRIPLET release with \`ksbuild pin $kubesolo_target FILE\`" || exit 1
  add_needs usr/local/bin/kubesolo
fi

# The update agent (static: the rootfs's loader is for iptables, not for it) and the public
# keys it trusts, one `name:base64` key per line (Nix's format).
cp "$agent/bin/kubesolo-update" usr/bin/kubesolo-update
chmod 0755 usr/bin/kubesolo-update
check_machine usr/bin/kubesolo-update "the update agent given as \`agent\` was built for another target" || exit 1
if [ -n "$(interp usr/bin/kubesolo-update)" ] || [ -n "$(needed usr/bin/kubesolo-update)" ]; then
  echo "rootfs check: usr/bin/kubesolo-update is not static (interpreter '$(interp usr/bin/kubesolo-update)', needs '$(needed usr/bin/kubesolo-update | tr '\n' ' ')'): build it with fragments/build-rust-crate.sh" >&2
  exit 1
fi
mkdir -p usr/share/kubesolo-update/keys
for k in "$keys"/*.pub; do
  [ -e "$k" ] || continue
  n=0
  while IFS= read -r line || [ -n "$line" ]; do
    n=$((n + 1))
    case "$line" in ''|'#'*) continue ;; esac
    if echo "$line" | grep -Eq '^[^:[:space:]]+:[A-Za-z0-9+/]{86}==$'; then
      echo "rootfs check: fragments/update-keys/${k##*/} holds a SECRET key (64 bytes): remove it, and put only its public key (\`name:base64 of 32 bytes\`) there" >&2
      exit 1
    fi
    echo "$line" | grep -Eq '^[^:[:space:]]+:[A-Za-z0-9+/]{43}=$' || {
      echo "rootfs check: fragments/update-keys/${k##*/} line $n is not an Ed25519 public key in Nix's format (\`name:base64 of 32 bytes\`)" >&2
      exit 1
    }
  done < "$k"
  cp "$k" usr/share/kubesolo-update/keys/
  chmod 0644 "usr/share/kubesolo-update/keys/${k##*/}"
done

# The init and its stages; the configuration files.
cp "$init/init" init
chmod 0755 init
mkdir -p lib/kubesolo-init/stages
cp "$init"/lib/* lib/kubesolo-init/
cp "$init"/stages/*.sh lib/kubesolo-init/stages/
chmod 0755 lib/kubesolo-init/udhcpc.script
cp -R "$init"/etc/. etc/
chmod -R u+w etc lib/kubesolo-init
ln -s /proc/mounts etc/mtab
: > etc/resolv.conf

# Every ELF is for the track's machine and resolves its interpreter and NEEDED libraries
# inside the rootfs.
bad=0
for f in $(find . -type f | sort); do
  is_elf "$f" || continue
  check_machine "$f" || bad=1
  i=$(interp "$f")
  if [ -n "$i" ] && [ ! -e ".$i" ]; then
    echo "rootfs check: $f needs the loader $i, which is missing" >&2
    bad=1
  fi
  for lib in $(needed "$f"); do
    if [ ! -e "$libdir/$lib" ] && [ ! -e "usr/lib/$lib" ]; then
      echo "rootfs check: $f needs $lib, which is missing" >&2
      bad=1
    fi
  done
done
[ "$bad" = 0 ] || exit 1
echo "rootfs: $(find . -type f | wc -l) files, $(du -sk . | cut -f1) KiB"
