# Clock: from the RTC where there is one; then NTP with the servers of
# /etc/kubesolo/ntp-servers (first-boot configuration) where busybox has ntpd.
if [ -e /dev/rtc0 ] && hwclock -s -u 2>/dev/null; then
  ks_clock="from rtc0, $(date -u '+%Y-%m-%dT%H:%M:%SZ')"
else
  ks_clock="no rtc, $(date -u '+%Y-%m-%dT%H:%M:%SZ')"
fi
if [ -s /etc/kubesolo/ntp-servers ]; then
  ks_ntp=$(tr '\n' ' ' < /etc/kubesolo/ntp-servers | sed 's/ $//')
  if command -v ntpd > /dev/null 2>&1; then
    ntpd $(for s in $ks_ntp; do printf ' -p %s' "$s"; done) > /dev/null 2>&1 < /dev/null \
      && ks_clock="$ks_clock; ntpd started: $ks_ntp" \
      || ks_clock="$ks_clock; ntpd failed to start ($ks_ntp)"
  else
    ks_clock="$ks_clock; ntp servers $ks_ntp recorded, no ntpd in this rootfs"
  fi
fi
ks_log "clock: $ks_clock"
