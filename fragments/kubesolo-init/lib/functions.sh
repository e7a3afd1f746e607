# Helpers shared by the init stages.

# One line per stage on the console, always in the same form, so logs and tests can follow.
ks_log() {
  echo "kubesolo-os: [$STAGE] $*" > /dev/console 2>/dev/null || echo "kubesolo-os: [$STAGE] $*"
}

# A debug line, shown with `kubesolo.debug`.
ks_debug() {
  [ "${KS_DEBUG:-0}" = 1 ] && ks_log "debug: $*"
  return 0
}

# A stage failed: say so and open an emergency shell on the console; leaving it powers
# off (the boot counter then falls back to the other slot after three failed boots).
ks_fail() {
  echo "kubesolo-os: FAILED: $* (stage ${STAGE:-?})" > /dev/console 2>/dev/null
  echo "kubesolo-os: emergency shell; 'exit' powers off" > /dev/console 2>/dev/null
  setsid cttyhack sh -l < /dev/console > /dev/console 2>&1
  sync
  poweroff -f
}

# The value of `key=` on the kernel command line, or $2.
ks_cmdline() {
  for word in $(cat /proc/cmdline); do
    case "$word" in
      "$1="*) echo "${word#*=}"; return 0 ;;
      "$1") echo 1; return 0 ;;
    esac
  done
  echo "$2"
}

# Waits up to $2 seconds for `findfs $1` to name a device; prints it.
ks_wait_device() {
  i=0
  while [ "$i" -lt "$(( $2 * 10 ))" ]; do
    dev=$(findfs "$1" 2>/dev/null) && { echo "$dev"; return 0; }
    usleep 100000
    i=$((i + 1))
  done
  return 1
}
