# Networking: loopback, then DHCP on the first Ethernet interface (bounded in time).
ip link set lo up
iface=
for path in /sys/class/net/*; do
  n=${path##*/}
  case "$n" in lo|sit*|tunl*|ip6tnl*) continue ;; esac
  iface=$n
  break
done
if [ -z "$iface" ]; then
  ks_log "network: no interface"
else
  ip link set "$iface" up
  if udhcpc -i "$iface" -n -q -t 5 -T 2 -s /lib/kubesolo-init/udhcpc.script > /dev/null 2>&1; then
    ks_log "network: $iface $(ip -4 -o addr show dev "$iface" | awk '{print $4}')"
  else
    ks_log "network: $iface has no DHCP lease (continuing)"
  fi
fi
