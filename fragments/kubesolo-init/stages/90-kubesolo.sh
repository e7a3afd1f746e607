# Start KubeSolo. The success line is printed only once KubeSolo is known to be runnable
# here: a program the kernel cannot run (another architecture's) would otherwise be
# announced, then fail. Instead the boot fails into the emergency shell, which powers off.
# Then the update agent's health check (when the agent is in the rootfs): it confirms a
# freshly updated slot once KubeSolo is healthy, or reboots a failing one (the boot loader
# counts the failed boots and falls back). PID 1 waits for KubeSolo; if it ever exits, the
# machine reboots (as the kernel did, with panic=-1, when PID 1 was KubeSolo itself).
ks_why=$(ks_runnable /usr/local/bin/kubesolo) || {
  ks_log "KUBESOLO-OS BOOT FAILED: $ks_why"
  return 1
}
ks_log "KUBESOLO-OS BOOT OK arch=$(uname -m) kernel=$(uname -r) slot=$KS_SLOT data=$KS_DATA_DEV version=$(. /etc/os-release && echo "${VERSION_ID:-unknown}")"
[ "$KS_SHELL" = 1 ] && { setsid cttyhack sh -l < /dev/console > /dev/console 2>&1 & }
/usr/local/bin/kubesolo &
ks_kubesolo=$!
# A live system has no A/B slot to confirm.
if [ -x /usr/bin/kubesolo-update ] && [ "$KS_NOPERSIST" != 1 ] && [ "${KS_LIVE:-0}" != 1 ]; then
  /usr/bin/kubesolo-update healthcheck > /dev/console 2>&1 &
fi
wait "$ks_kubesolo"
ks_status=$?
ks_log "KubeSolo exited with status $ks_status; rebooting"
sync
${KS_REBOOT:-reboot -f}
