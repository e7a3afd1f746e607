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

# Whether the program $1 can run on this machine; if not, prints why and fails. Cheap checks
# of what would otherwise only show when PID 1 execs it (`ELF: not found`, then a kernel
# panic): a file, executable, and either an ELF whose e_machine is this machine's (`uname
# -m`) or a script whose interpreter is executable.
ks_runnable() {
  [ -e "$1" ] || { echo "$1 is missing"; return 1; }
  { [ -f "$1" ] && [ -x "$1" ]; } || { echo "$1 is not an executable file"; return 1; }
  # The first 20 bytes: e_ident (16), e_type (2), e_machine (2).
  set -- "$1" $(od -An -tx1 -N20 "$1")
  if [ "$2$3$4$5" = 7f454c46 ]; then
    # e_machine in the file's byte order (EI_DATA, byte 5: 01 little-endian, 02 big).
    if [ "$7" = 02 ]; then ks_m=${20}${21}; else ks_m=${21}${20}; fi
    case "$(uname -m)" in
      x86_64) ks_want=003e ;;
      aarch64) ks_want=00b7 ;;
      armv*) ks_want=0028 ;;
      i?86) ks_want=0003 ;;
      riscv64) ks_want=00f3 ;;
      *) return 0 ;; # a machine not listed here: the kernel decides
    esac
    [ "$ks_m" = "$ks_want" ] && return 0
    echo "$1 is an ELF for $(ks_elf_machine "$ks_m"), but this machine is $(uname -m)"
    return 1
  fi
  if [ "$2$3" = 2321 ]; then
    ks_interp=$(head -n 1 "$1" | sed 's/^#![[:space:]]*//; s/[[:space:]].*//')
    [ -f "$ks_interp" ] && [ -x "$ks_interp" ] && return 0
    echo "$1 is a script for the interpreter ${ks_interp:-(none)}, which is not an executable file"
    return 1
  fi
  echo "$1 is neither an ELF executable nor a script"
  return 1
}

# The name `uname -m` gives the ELF machine $1 (e_machine, four hex digits).
ks_elf_machine() {
  case "$1" in
    003e) echo x86_64 ;;
    00b7) echo aarch64 ;;
    0028) echo arm ;;
    0003) echo i386 ;;
    00f3) echo riscv64 ;;
    *) echo "e_machine 0x$1" ;;
  esac
}
