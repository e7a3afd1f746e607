# What containerd and kube-proxy expect: cgroup controllers delegated, /run dirs,
# an iptables that speaks nftables, and a machine id.
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  for c in $(cat /sys/fs/cgroup/cgroup.controllers); do
    echo "+$c" > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null
  done
fi
mkdir -p /run/containerd /var/lib/kubesolo /etc/cni/net.d /opt/cni/bin
[ -s /etc/machine-id ] || cat /proc/sys/kernel/random/uuid | tr -d - > /etc/machine-id
iptables_ok=no
iptables -V > /dev/null 2>&1 && iptables_ok=yes
nft_ok=no
nft -v > /dev/null 2>&1 && nft_ok=yes
ks_log "containerd prerequisites: cgroups $(cat /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null | wc -w) controllers, iptables=$iptables_ok nft=$nft_ok"
