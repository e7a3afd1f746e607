# Kernel parameters Kubernetes expects (etc/sysctl.d/k8s.conf).
applied=0
for f in /etc/sysctl.d/*.conf; do
  [ -f "$f" ] || continue
  while IFS= read -r line; do
    case "$line" in ''|'#'*) continue ;; esac
    key=$(echo "${line%%=*}" | tr -d ' ')
    value=$(echo "${line#*=}" | sed 's/^ *//')
    if [ -e "/proc/sys/$(echo "$key" | tr . /)" ]; then
      echo "$value" > "/proc/sys/$(echo "$key" | tr . /)" 2>/dev/null && applied=$((applied + 1))
    else
      ks_debug "sysctl $key: not in this kernel"
    fi
  done < "$f"
done
ks_log "sysctl: $applied settings applied"
