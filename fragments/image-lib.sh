# Helpers for assembling disk images reproducibly; sourced by build-*-image.sh.
set -eu
export LC_ALL=C TZ=UTC MTOOLS_SKIP_CHECK=1 E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH
umask 022
MIB=1048576

# A value derived from the output's own store path: the same inputs give the same image,
# and two different images never share disk or filesystem identities.
seed_hex() { printf '%s' "$out:$1" | sha256sum | cut -c1-32; }
# An RFC 4122 version 4 UUID from the seed.
seed_uuid() {
  h=$(seed_hex "$1")
  v=$(printf '%x' $(( (0x$(echo "$h" | cut -c17) & 3) | 8 )))
  echo "$(echo "$h" | cut -c1-8)-$(echo "$h" | cut -c9-12)-4$(echo "$h" | cut -c14-16)-$v$(echo "$h" | cut -c18-20)-$(echo "$h" | cut -c21-32)"
}
# A FAT volume id (8 hex digits) from the seed.
seed_volid() { seed_hex "$1" | cut -c1-8 | tr a-f A-F; }

# fits NAME SRC PART_BYTES: fails, naming the partition, if SRC does not fit (leaving a
# sixteenth of the partition for the filesystem's own structures).
fits() {
  used=$(du -sb "$2" | cut -f1)
  room=$(( $3 - $3 / 16 ))
  if [ "$used" -gt "$room" ]; then
    echo "partition $1 is too small: its files take $(( used / 1024 )) KiB, it holds $(( room / 1024 )) KiB; enlarge it in the image's derivation" >&2
    exit 1
  fi
}

# Writes the normalised copy of directory $1 into $2: sorted, times at SOURCE_DATE_EPOCH.
stage_tree() {
  cp -R "$1" "$2"
  chmod -R u+w "$2"
  find "$2" -type d -exec chmod 0755 {} +
  find "$2" -type f -perm /111 -exec chmod 0755 {} +
  find "$2" -type f ! -perm /111 -exec chmod 0644 {} +
  find "$2" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
}

# fat IMAGE OFFSET_BYTES SIZE_BYTES LABEL VOLID SRC [BITS]: a FAT32 (or FAT BITS: 12, 16)
# filesystem at an offset of IMAGE, filled from SRC in sorted order (mcopy -s would follow the
# host's readdir order).
fat() {
  img=$1 off=$2 size=$3 label=$4 volid=$5 src=$6 bits=${7:-32}
  fits "$label" "$src" "$size"
  mkfs.fat -F "$bits" -S 512 -s 1 --invariant -i "$volid" -n "$label" --offset $((off / 512)) "$img" $((size / 1024)) > /dev/null 2>/build/mkfs.fat.log || { cat /build/mkfs.fat.log >&2; exit 1; }
  (cd "$src" && find . -mindepth 1 | sort) | while read -r p; do
    p=${p#./}
    if [ -d "$src/$p" ]; then
      mmd -i "$img@@$off" "::/$p"
    else
      mcopy -i "$img@@$off" -p -m -Q "$src/$p" "::/$p"
    fi
  done
}

# ext4 IMAGE OFFSET_BYTES SIZE_BYTES LABEL UUID JOURNAL(yes|no) [SRC]: an ext4 filesystem at an
# offset of IMAGE, owned by root, with every inode time (ctime too) at SOURCE_DATE_EPOCH.
# SRC (directories and regular files) is written by debugfs in sorted order: `mkfs -d` takes
# inodes in the order the build's filesystem lists SRC (hash order on ext4, creation order on
# tmpfs), so the image depended on which filesystem /build was on (`ksbuild check --vary
# order` found it).
ext4() {
  img=$1 off=$2 size=$3 label=$4 uuid=$5 journal=$6 src=${7:-}
  features=has_journal,ext_attr,resize_inode,dir_index,filetype,extent,64bit,flex_bg,sparse_super,large_file,huge_file,dir_nlink,extra_isize,metadata_csum
  [ "$journal" = yes ] || features=$(echo "$features" | sed 's/has_journal,//')
  cat > /build/mke2fs.conf <<CONF
[defaults]
	base_features = $features
	blocksize = 4096
	inode_size = 256
	inode_ratio = 16384
[fs_types]
	ext4 = {
		features = $features
	}
CONF
  if [ -n "$src" ]; then
    fits "$label" "$src" "$size"
  fi
  MKE2FS_CONFIG=/build/mke2fs.conf mkfs.ext4 -q -F -t ext4 -b 4096 -I 256 -m 0 -L "$label" -U "$uuid" \
    -E "offset=$off,hash_seed=$uuid,root_owner=0:0,lazy_itable_init=1,lazy_journal_init=1,nodiscard" \
    "$img" $((size / 1024))k
  # Every inode's owner, mode and times are set here: debugfs takes them from the source
  # (ctime cannot be set there, and reading the source moves atime).
  {
    echo /
    echo /lost+found
    if [ -n "$src" ]; then
      (cd "$src" && find . -mindepth 1 | sort) | while read -r p; do echo "/${p#./}"; done
    fi
  } > /build/ext4.paths
  while read -r p; do
    if [ "$p" != / ] && [ "$p" != /lost+found ]; then
      if [ -d "$src$p" ]; then
        echo "mkdir \"$p\""
        echo "sif \"$p\" mode 040755"
      elif [ -f "$src$p" ]; then
        echo "write \"$src$p\" \"$p\""
        if [ -x "$src$p" ]; then mode=0100755; else mode=0100644; fi
        echo "sif \"$p\" mode $mode"
      else
        echo "ext4: $src$p is neither a directory nor a regular file" >&2
        exit 1
      fi
      echo "sif \"$p\" uid 0"
      echo "sif \"$p\" gid 0"
    fi
    for t in atime mtime ctime crtime; do echo "sif \"$p\" $t @$SOURCE_DATE_EPOCH"; done
  done < /build/ext4.paths > /build/debugfs.cmds
  debugfs -w -f /build/debugfs.cmds "$img?offset=$off" > /build/debugfs.log 2>&1
  if grep -Ev '^(debugfs|Allocated inode: [0-9]+$)' /build/debugfs.log | grep -q .; then
    cat /build/debugfs.log >&2
    exit 1
  fi
  # The superblock counts the kilobytes written over the filesystem's life, which depends on
  # how the build's filesystem reports the source's extents (ext4 and tmpfs differ): the
  # count restarts here, so only this last session's fixed metadata writes are counted.
  debugfs -w -R "ssv kbytes_written 0" "$img?offset=$off" > /build/debugfs.log 2>&1 \
    || { cat /build/debugfs.log >&2; exit 1; }
  e2fsck -fn "$img?offset=$off" > /build/e2fsck.log 2>&1 || { cat /build/e2fsck.log >&2; exit 1; }
}

# The image's SPDX SBOM at $out/sbom.spdx.json, written by ksbuild's own writer
# ($sbomtool, fragments/sbom-tool) from this build's inputs: the kernel(s) $kernel
# ($kernel5), $initramfs holding $rootfs, the Debian packages of $debs whose files are in
# the rootfs, and the packages of $firmware (if set) as firmware. dpkg-deb unpacks each
# `.deb` into its control fields and (for those matched against the rootfs: `data`) its
# data tar, numbered in the lock's order.
write_sbom() {
  unpack_debs() {
    dir=$1
    what=$2
    shift 2
    i=0
    for deb in "$@"; do
      i=$((i + 1))
      d=$dir/$(printf %04d "$i")
      mkdir -p "$d"
      ln -s "$deb" "$d/deb"
      dpkg-deb -f "$deb" Package Version Architecture > "$d/control"
      if [ "$what" = data ]; then dpkg-deb --fsys-tarfile "$deb" > "$d/data.tar"; fi
    done
  }
  set -- --name "$name" --store-path "$out" --kernel "$kernel"
  if [ -n "${kernel5:-}" ] && [ "$kernel5" != "$kernel" ]; then set -- "$@" --kernel "$kernel5"; fi
  # shellcheck disable=SC2086 # $debs and $firmware are lists of store paths
  unpack_debs /build/sbom/debs data $debs
  set -- "$@" --initramfs "$initramfs" --rootfs "$rootfs" --debs /build/sbom/debs
  if [ -n "${firmware:-}" ]; then
    # shellcheck disable=SC2086
    unpack_debs /build/sbom/firmware control $firmware
    set -- "$@" --firmware /build/sbom/firmware
  fi
  "$sbomtool/bin/ksbuild-sbom" "$@" -o "$out/sbom.spdx.json"
  rm -rf /build/sbom
}
