# Start KubeSolo. The line below is the boot's success line.
[ -x /usr/local/bin/kubesolo ] || { ks_log "no /usr/local/bin/kubesolo"; return 1; }
ks_log "KUBESOLO-OS BOOT OK arch=$(uname -m) kernel=$(uname -r) slot=$KS_SLOT data=$KS_DATA_DEV"
[ "$KS_SHELL" = 1 ] && { setsid cttyhack sh -l < /dev/console > /dev/console 2>&1 & }
exec /usr/local/bin/kubesolo
