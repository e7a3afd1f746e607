# Runs a builder inside a build environment's tree. Run by the static busybox inside
# ksbuild's (or Nix's) sandbox:  busybox sh -e environment-enter.sh TREE BUILDER ARGS...
# A nested user and mount namespace (whose inherited mounts are locked, so read-only stays
# read-only) binds the sandbox's /nix/store, /build, /dev, /proc and /tmp into the tree,
# which is itself a read-only input, and chroots into it. Outside the tree there is only the
# sandbox's own root: the boundary is the sandbox, this is only a change of view.
bb=$builder
tree=$1
shift
if [ "$PATH" = /path-not-set ]; then
  export PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin
fi
export KSBUILD_ENVIRONMENT="$tree"
exec $bb unshare --user --mount --map-root-user $bb sh -e -c '
  bb=$1; tree=$2; shift 2
  for d in nix/store build dev proc tmp; do
    $bb mount --rbind "/$d" "$tree/$d"
  done
  for f in etc/passwd etc/group etc/hosts; do
    $bb mount --bind "/$f" "$tree/$f"
  done
  # chroot resets the working directory: return to /build, as the sandbox started us.
  exec $bb chroot "$tree" $bb sh -c '"'"'cd /build && exec "$@"'"'"' builder "$@"
' enter "$bb" "$tree" "$@"
