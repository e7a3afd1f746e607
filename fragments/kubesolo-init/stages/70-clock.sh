# Clock: from the RTC where there is one (no NTP before the network is configured).
if [ -e /dev/rtc0 ] && hwclock -s -u 2>/dev/null; then
  ks_log "clock: from rtc0, $(date -u '+%Y-%m-%dT%H:%M:%SZ')"
else
  ks_log "clock: no rtc, $(date -u '+%Y-%m-%dT%H:%M:%SZ')"
fi
