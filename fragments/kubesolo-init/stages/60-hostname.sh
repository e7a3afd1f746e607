# Hostname: kept on the data partition (set by the first-boot configuration, or derived once
# from the machine: stable per disk).
if [ -s /etc/kubesolo/hostname ]; then
  name=$(cat /etc/kubesolo/hostname)
  from="/etc/kubesolo/hostname"
else
  name=kubesolo-$(cat /proc/sys/kernel/random/uuid | cut -c1-6)
  from=generated
  [ "$KS_NOPERSIST" = 1 ] || echo "$name" > /etc/kubesolo/hostname
fi
hostname "$name"
echo "$name" > /etc/hostname
printf '127.0.0.1 localhost\n127.0.1.1 %s\n::1 localhost\n' "$name" > /etc/hosts
ks_log "hostname: $(hostname) ($from)"
