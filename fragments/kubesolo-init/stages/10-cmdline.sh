# The kernel command line: kubesolo.data=, kubesolo.debug, kubesolo.shell, kubesolo.nopersist,
# kubesolo.live (the live ISO: no data partition is not an error), kubesolo.slot=.
KS_DATA=$(ks_cmdline kubesolo.data LABEL=KSOLODATA)
KS_DEBUG=$(ks_cmdline kubesolo.debug 0)
KS_SHELL=$(ks_cmdline kubesolo.shell 0)
KS_NOPERSIST=$(ks_cmdline kubesolo.nopersist 0)
KS_LIVE=$(ks_cmdline kubesolo.live 0)
KS_SLOT=$(ks_cmdline kubesolo.slot -)
# A Raspberry Pi boot partition written by an update names no slot: the firmware says which
# partition it booted (a big-endian cell; 2 is Boot A, 3 is Boot B).
if [ "$KS_SLOT" = - ] && [ -r /proc/device-tree/chosen/bootloader/partition ]; then
  case "$(od -An -tu1 /proc/device-tree/chosen/bootloader/partition | awk '{print $NF}')" in
    2) KS_SLOT=A ;;
    3) KS_SLOT=B ;;
  esac
fi
ks_log "cmdline: data=$KS_DATA slot=$KS_SLOT debug=$KS_DEBUG shell=$KS_SHELL nopersist=$KS_NOPERSIST live=$KS_LIVE"
ks_debug "kernel command line: $(cat /proc/cmdline)"
