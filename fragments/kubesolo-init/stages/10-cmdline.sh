# The kernel command line: kubesolo.data=, kubesolo.debug, kubesolo.shell, kubesolo.nopersist.
KS_DATA=$(ks_cmdline kubesolo.data LABEL=KSOLODATA)
KS_DEBUG=$(ks_cmdline kubesolo.debug 0)
KS_SHELL=$(ks_cmdline kubesolo.shell 0)
KS_NOPERSIST=$(ks_cmdline kubesolo.nopersist 0)
KS_SLOT=$(ks_cmdline kubesolo.slot -)
ks_log "cmdline: data=$KS_DATA slot=$KS_SLOT debug=$KS_DEBUG shell=$KS_SHELL nopersist=$KS_NOPERSIST"
