# Start KubeSolo. The success line is printed only once KubeSolo is known to be runnable
# here: a program the kernel cannot run (another architecture's) would otherwise be
# announced, then kill PID 1 (a panic; with panic=-1 a reboot loop). Instead the boot fails
# into the emergency shell, which powers off.
ks_why=$(ks_runnable /usr/local/bin/kubesolo) || {
  ks_log "KUBESOLO-OS BOOT FAILED: $ks_why"
  return 1
}
ks_log "KUBESOLO-OS BOOT OK arch=$(uname -m) kernel=$(uname -r) slot=$KS_SLOT data=$KS_DATA_DEV"
[ "$KS_SHELL" = 1 ] && { setsid cttyhack sh -l < /dev/console > /dev/console 2>&1 & }
exec /usr/local/bin/kubesolo
