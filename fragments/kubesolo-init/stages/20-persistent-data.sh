# The persistent data partition, found by label, with bind mounts for the state that
# must survive a reboot or an A/B switch.
KS_DATA_DEV=none
mkdir -p /mnt/data
if [ "$KS_NOPERSIST" = 1 ]; then
  mount -t tmpfs -o mode=0755 data /mnt/data
  KS_DATA_DEV=tmpfs
else
  # Storage modules load in stage 30, but a built-in driver may need a moment too: load
  # the module list first if the device is not there yet.
  if ! KS_DATA_DEV=$(ks_wait_device "$KS_DATA" 2); then
    . /lib/kubesolo-init/load-modules.sh
    KS_DATA_DEV=$(ks_wait_device "$KS_DATA" 20) || {
      ks_log "data partition $KS_DATA not found"
      return 1
    }
  fi
  mount -t ext4 -o noatime "$KS_DATA_DEV" /mnt/data || return 1
fi
for d in var/lib/kubesolo var/lib/kubesolo-update var/lib/containerd var/lib/kubelet etc/kubesolo var/log; do
  mkdir -p "/mnt/data/$d" "/$d"
  mount --bind "/mnt/data/$d" "/$d"
done
ks_log "persistent data: $KS_DATA_DEV on /mnt/data (owner $(stat -c %u:%g /mnt/data))"
