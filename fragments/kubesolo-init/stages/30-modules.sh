# Kernel modules of this track's module list, in dependency order (etc/modules.order,
# written when the initramfs was packed).
. /lib/kubesolo-init/load-modules.sh
ks_log "modules: $KS_MODULES_LOADED loaded"
