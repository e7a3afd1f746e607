# Networking: loopback, then the interfaces of /etc/kubesolo/network.conf (written by the
# first-boot configuration: `NAME static ADDRESS/PREFIX GATEWAY|-` or `NAME dhcp`), else DHCP
# on the first Ethernet interface (bounded in time). DNS servers in /etc/kubesolo/resolv.conf
# replace what DHCP offered.
ip link set lo up
ks_dhcp() {
  udhcpc -i "$1" -n -q -t 5 -T 2 -s /lib/kubesolo-init/udhcpc.script > /dev/null 2>&1 < /dev/null
}
ks_net=
if [ -s /etc/kubesolo/network.conf ]; then
  while read -r n mode addr gw; do
    case "$n" in ''|'#'*) continue ;; esac
    if [ ! -e "/sys/class/net/$n" ]; then
      ks_net="$ks_net; $n: no such interface"
      continue
    fi
    ip link set "$n" up < /dev/null
    case "$mode" in
      static)
        ip -4 addr flush dev "$n" < /dev/null
        if ! ip -4 addr add "$addr" dev "$n" < /dev/null 2>/dev/null; then
          ks_net="$ks_net; $n: cannot set $addr"
          continue
        fi
        ks_net="$ks_net; $n $(ip -4 -o addr show dev "$n" < /dev/null | awk '{print $4}') static"
        if [ -n "$gw" ] && [ "$gw" != - ]; then
          if ip route replace default via "$gw" dev "$n" < /dev/null 2>/dev/null; then
            ks_net="$ks_net via $gw"
          else
            ks_net="$ks_net (gateway $gw unreachable)"
          fi
        fi
        ;;
      dhcp)
        if ks_dhcp "$n"; then
          ks_net="$ks_net; $n $(ip -4 -o addr show dev "$n" < /dev/null | awk '{print $4}') dhcp"
        else
          ks_net="$ks_net; $n has no DHCP lease"
        fi
        ;;
      *) ks_net="$ks_net; $n: unknown mode $mode" ;;
    esac
  done < /etc/kubesolo/network.conf
  ks_net="${ks_net#; } (/etc/kubesolo/network.conf)"
else
  iface=
  for path in /sys/class/net/*; do
    n=${path##*/}
    case "$n" in lo|sit*|tunl*|ip6tnl*) continue ;; esac
    iface=$n
    break
  done
  if [ -z "$iface" ]; then
    ks_net="no interface"
  else
    ip link set "$iface" up
    if ks_dhcp "$iface"; then
      ks_net="$iface $(ip -4 -o addr show dev "$iface" | awk '{print $4}')"
    else
      ks_net="$iface has no DHCP lease (continuing)"
    fi
  fi
fi
if [ -s /etc/kubesolo/resolv.conf ]; then
  cp /etc/kubesolo/resolv.conf /etc/resolv.conf
  ks_net="$ks_net; dns $(awk '{printf "%s%s", s, $2; s=" "}' /etc/resolv.conf)"
fi
ks_log "network: $ks_net"
