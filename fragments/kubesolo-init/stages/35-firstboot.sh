# First-boot configuration: on the first boot that finds it, `kubesolo-config.toml` at the
# root of the FAT partition the firmware boots from (KSOLOEFI, the EFI partition of the GRUB
# tracks; KSOCTL, the Raspberry Pi's control partition) is checked by firstboot.awk and
# applied: host name, interfaces, DNS and NTP servers into /etc/kubesolo (read by stages 50,
# 60, 70 on every boot), SSH keys into /mnt/data/root/.ssh, KubeSolo's config.yaml (0600), the
# update agent's update.conf. Recorded in /mnt/data/var/lib/kubesolo-os/firstboot.done (the
# file's SHA-256); later boots do not read it again. A bad setting is reported and skipped;
# nothing here stops the boot. With kubesolo.nopersist it all lands on the tmpfs: this boot only.
# Paths come from variables so tests can run the stage on the host: KS_ROOT (prefix of every
# path), KS_INIT_LIB (firstboot.awk's directory), KS_FIRSTBOOT_DIR (a directory to read the
# file from instead of mounting a partition).
fb_root=${KS_ROOT:-}
fb_lib=${KS_INIT_LIB:-/lib/kubesolo-init}
fb_state=$fb_root/mnt/data/var/lib/kubesolo-os
fb_etc=$fb_root/etc/kubesolo
fb_name=kubesolo-config.toml
fb_labels="KSOLOEFI KSOCTL"

# Finds the partition (a moment for it to appear: the data partition's disk is there already)
# and mounts it read-only at $fb_mnt; sets fb_where. False when there is none.
fb_mount() {
  fb_dev=
  i=0
  while [ -z "$fb_dev" ] && [ "$i" -lt 20 ]; do
    for l in $fb_labels; do
      fb_dev=$(findfs "LABEL=$l" 2>/dev/null) && { fb_label=$l; break; }
      fb_dev=
    done
    [ -n "$fb_dev" ] || usleep 100000
    i=$((i + 1))
  done
  [ -n "$fb_dev" ] || { fb_where="no partition labelled $(echo $fb_labels | sed 's/ / or /')"; return 1; }
  fb_where="$fb_dev (LABEL=$fb_label)"
  mkdir -p "$fb_mnt"
  mount -t vfat -o ro,noatime "$fb_dev" "$fb_mnt" 2>/dev/null || { fb_where="$fb_where: cannot mount it (vfat)"; return 1; }
  return 0
}

# The stage; its status is always 0.
fb_stage() {
  if [ -f "$fb_state/firstboot.done" ]; then
    ks_log "first-boot configuration: already applied ($(sed -n 's/^source=//p' "$fb_state/firstboot.done"), sha256 $(sed -n 's/^sha256=//p' "$fb_state/firstboot.done" | cut -c1-16)…); not read again"
    return 0
  fi
  fb_work=$fb_root/run/kubesolo-firstboot
  fb_mnt=$fb_work/mnt
  rm -rf "$fb_work"
  mkdir -p "$fb_work/out"
  chmod 0700 "$fb_work"
  if [ -n "${KS_FIRSTBOOT_DIR:-}" ]; then
    fb_src=$KS_FIRSTBOOT_DIR
    fb_where=$KS_FIRSTBOOT_DIR
  elif fb_mount; then
    fb_src=$fb_mnt
  else
    ks_log "first-boot configuration: none ($fb_where)"
    rm -rf "$fb_work"
    return 0
  fi
  if [ ! -f "$fb_src/$fb_name" ]; then
    fb_why="no $fb_name on $fb_where"
  elif fb_size=$(wc -c < "$fb_src/$fb_name") && [ "$fb_size" -gt 262144 ]; then
    fb_why="$fb_name on $fb_where is $fb_size bytes, more than 256 KiB: not read"
  else
    cp "$fb_src/$fb_name" "$fb_work/config.toml"
    fb_why=
  fi
  [ -n "${KS_FIRSTBOOT_DIR:-}" ] || umount "$fb_mnt" 2>/dev/null
  if [ -n "$fb_why" ]; then
    ks_log "first-boot configuration: none ($fb_why)"
    rm -rf "$fb_work"
    return 0
  fi
  fb_sum=$(sha256sum "$fb_work/config.toml" | cut -d' ' -f1)
  # Parse and check; what may be applied lands in $fb_work/out, one file per setting. A file
  # with control characters (other than tab, CR, LF) is not text: nothing of it applies.
  fb_binary=$(tr -d '\t\r\n -~\200-\377' < "$fb_work/config.toml" | wc -c)
  if [ "$fb_binary" -gt 0 ]; then
    echo "ignored $fb_name: not a text file ($fb_binary control characters); nothing of it applies" > "$fb_work/messages"
  else
    (umask 077; awk -v out="$fb_work/out" -f "$fb_lib/firstboot.awk" "$fb_work/config.toml") \
      > "$fb_work/messages" 2> "$fb_work/errors" \
      || echo "ignored the rest: the parser failed: $(head -n 3 "$fb_work/errors" | tr -d '\000-\037')" >> "$fb_work/messages"
  fi
  # On the console: the first 20 problems; all of them in firstboot.log.
  fb_ignored=0
  while IFS= read -r m; do
    case "$m" in
      ignored*)
        fb_ignored=$((fb_ignored + 1))
        [ "$fb_ignored" -gt 20 ] || ks_log "$m"
        ;;
    esac
  done < "$fb_work/messages"
  [ "$fb_ignored" -le 20 ] || ks_log "ignored $((fb_ignored - 20)) more: see /mnt/data/var/lib/kubesolo-os/firstboot.log"
  # Install what was checked.
  mkdir -p "$fb_etc" "$fb_state"
  fb_applied=
  fb_put() { # FILE DEST MODE WHAT
    [ -f "$fb_work/out/$1" ] || return 0
    cp "$fb_work/out/$1" "$2.new" && chmod "$3" "$2.new" && mv -f "$2.new" "$2" \
      && fb_applied="$fb_applied; $4" \
      || ks_log "ignored $4: cannot write $2"
  }
  fb_put hostname "$fb_etc/hostname" 0644 "hostname $(cat "$fb_work/out/hostname" 2>/dev/null)"
  fb_put network.conf "$fb_etc/network.conf" 0644 "$(sed -n 's/^applied \(interfaces .*\)/\1/p' "$fb_work/messages")"
  fb_put resolv.conf "$fb_etc/resolv.conf" 0644 "dns $(awk '{printf "%s%s", s, $2; s=" "}' "$fb_work/out/resolv.conf" 2>/dev/null)"
  if [ -x "$fb_root/usr/sbin/ntpd" ] || [ -x "$fb_root/sbin/ntpd" ]; then fb_ntp=ntpd; else fb_ntp="recorded, no ntpd"; fi
  fb_put ntp-servers "$fb_etc/ntp-servers" 0644 "ntp $(tr '\n' ' ' 2>/dev/null < "$fb_work/out/ntp-servers")($fb_ntp)"
  if [ -f "$fb_work/out/authorized_keys" ]; then
    fb_ssh=no
    for s in usr/sbin/sshd usr/sbin/dropbear sbin/dropbear; do [ -x "$fb_root/$s" ] && fb_ssh=/$s; done
    mkdir -p "$fb_root/mnt/data/root/.ssh"
    chmod 0700 "$fb_root/mnt/data/root" "$fb_root/mnt/data/root/.ssh"
    if [ "$fb_ssh" = no ]; then fb_ssh="recorded, no SSH server in this rootfs"; else fb_ssh="for $fb_ssh"; fi
    fb_put authorized_keys "$fb_root/mnt/data/root/.ssh/authorized_keys" 0600 \
      "ssh keys: $(wc -l < "$fb_work/out/authorized_keys") in /mnt/data/root/.ssh/authorized_keys ($fb_ssh)"
  fi
  fb_put config.yaml "$fb_etc/config.yaml" 0600 "kubesolo config /etc/kubesolo/config.yaml ($(wc -c 2>/dev/null < "$fb_work/out/config.yaml") bytes)"
  fb_put update.conf "$fb_etc/update.conf" 0644 "update.conf ($(sed 's/ = .*//' "$fb_work/out/update.conf" 2>/dev/null | sort -u | tr '\n' ' ' | sed 's/ $//'))"
  fb_applied=${fb_applied#; }
  {
    echo "sha256=$fb_sum"
    echo "source=$fb_where:/$fb_name"
    echo "applied=$fb_applied"
    echo "ignored=$fb_ignored"
  } > "$fb_state/firstboot.done.new"
  cp "$fb_work/messages" "$fb_state/firstboot.log"
  mv -f "$fb_state/firstboot.done.new" "$fb_state/firstboot.done"
  sync
  rm -rf "$fb_work"
  fb_scope=
  [ "${KS_NOPERSIST:-0}" = 1 ] && fb_scope=" (kubesolo.nopersist: for this boot only)"
  ks_log "first-boot configuration applied from $fb_where:/$fb_name (sha256 $(echo "$fb_sum" | cut -c1-16)…): ${fb_applied:-nothing}; $fb_ignored ignored$fb_scope"
  return 0
}

fb_stage
true
