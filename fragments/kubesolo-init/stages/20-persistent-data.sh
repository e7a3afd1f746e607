# The persistent data partition, found by label, with bind mounts for the state that
# must survive a reboot or an A/B switch. kubesolo.nopersist: a tmpfs instead, whatever the
# disks hold. kubesolo.live (the live ISO): the partition if a disk has one, else a tmpfs.
KS_DATA_DEV=none
mkdir -p /mnt/data
if [ "$KS_NOPERSIST" = 1 ]; then
  mount -t tmpfs -o mode=0755 data /mnt/data
  KS_DATA_DEV=tmpfs
else
  # Storage modules load in stage 30, but a built-in driver may need a moment too: load
  # the module list first if the device is not there yet. A disk image always has its
  # partition, so it waits long; a live system may have none, so it waits less.
  if [ "${KS_LIVE:-0}" = 1 ]; then ks_wait=5; else ks_wait=20; fi
  if ! KS_DATA_DEV=$(ks_wait_device "$KS_DATA" 2); then
    . /lib/kubesolo-init/load-modules.sh
    KS_DATA_DEV=$(ks_wait_device "$KS_DATA" "$ks_wait") || KS_DATA_DEV=
  fi
  if [ -n "$KS_DATA_DEV" ]; then
    mount -t ext4 -o noatime "$KS_DATA_DEV" /mnt/data || return 1
  elif [ "${KS_LIVE:-0}" = 1 ]; then
    ks_log "live: no data partition $KS_DATA after ${ks_wait} s; state is kept in RAM and lost at power-off"
    mount -t tmpfs -o mode=0755 data /mnt/data
    KS_DATA_DEV=tmpfs
  else
    ks_log "data partition $KS_DATA not found"
    return 1
  fi
fi
for d in var/lib/kubesolo var/lib/kubesolo-update var/lib/containerd var/lib/kubelet etc/kubesolo var/log; do
  mkdir -p "/mnt/data/$d" "/$d"
  mount --bind "/mnt/data/$d" "/$d"
done
ks_log "persistent data: $KS_DATA_DEV on /mnt/data (owner $(stat -c %u:%g /mnt/data))"
