# Loads the modules of /etc/modules.order once (sourced by stage 20 or 30).
if [ -z "${KS_MODULES_LOADED:-}" ]; then
  KS_MODULES_LOADED=0
  if [ -f /etc/modules.order ]; then
    while read -r mod args; do
      [ -n "$mod" ] || continue
      if insmod "/lib/modules/$(uname -r)/$mod" $args 2>/dev/null; then
        KS_MODULES_LOADED=$((KS_MODULES_LOADED + 1))
      else
        ks_debug "insmod $mod failed (already loaded?)"
      fi
    done < /etc/modules.order
  fi
fi
