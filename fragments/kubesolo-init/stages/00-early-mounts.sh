# Early mounts: proc, sys, devtmpfs, /run, /tmp, devpts, shm, and the cgroup2 hierarchy.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec 0</dev/console 1>/dev/console 2>&1
mkdir -p /dev/pts /dev/shm /run /tmp /sys/fs/cgroup
mount -t devpts -o gid=5,mode=0620 devpts /dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev shm /dev/shm
mount -t tmpfs -o mode=0755,nosuid,nodev run /run
mount -t tmpfs -o mode=1777,nosuid,nodev tmp /tmp
if mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup 2>/dev/null; then
  cgroup=cgroup2
else
  mount -t tmpfs cgroup /sys/fs/cgroup
  cgroup="v1 fallback"
fi
ks_log "early mounts done (proc sys dev run tmp; cgroup: $cgroup)"
