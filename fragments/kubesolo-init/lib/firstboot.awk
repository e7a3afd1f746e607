# The first-boot configuration's parser and checker (run by stage 35-firstboot with busybox
# awk): reads kubesolo-config.toml, a TOML subset (fragments/kubesolo-config.example.toml),
# and writes what it may apply into the directory `out`, one file per setting:
#   hostname         the host name, one line
#   network.conf     `NAME static ADDRESS/PREFIX GATEWAY|-` or `NAME dhcp`, one interface a line
#   resolv.conf      `nameserver ADDRESS` lines
#   ntp-servers      one server a line
#   authorized_keys  OpenSSH public keys, one a line
#   config.yaml      KubeSolo's configuration, verbatim
#   update.conf      the update agent's `key = value` lines (update-spec.md)
# On stdout: `ignored WHAT: WHY` for each setting or line it refuses (the rest still applies),
# then `applied WHAT` for each setting written.
#
# The subset: `# comments`; `[table]` and `[table."quoted.part"]` headers; `key = value` with
# bare or quoted keys, dotted keys; values: "basic strings" (escapes \" \\ \n \t \r \b \f and
# \u of ASCII), 'literal strings', '''multi-line literal strings''' (verbatim; a newline right
# after the opening quotes is dropped), true/false, decimal integers, and arrays of strings
# (across lines too, trailing comma allowed). A UTF-8 byte order mark and CRLF line ends are
# accepted. No arrays of tables, inline tables, floats, dates or """multi-line basic strings""".

BEGIN {
  SEP = SUBSEP
  table = ""
  buf = ""
  nifaces = 0
  nsettings = 0
}

{
  line = $0
  if (NR == 1) sub(/^\357\273\277/, "", line)
  sub(/\r$/, "", line)
  if (buf != "") {
    buf = buf "\n" line
  } else {
    buf = line
    start = NR
  }
  r = statement(buf)
  if (r == "more") next
  buf = ""
}

END {
  if (buf != "") {
    problem_line(start, "unterminated value (a ''' string or an array never closed)")
  }
  finish()
}

# --- reporting ------------------------------------------------------------------------------

# Control characters (from escapes) are shown as `?` on the console.
function problem(key, ln, why) { print clean("ignored " key " (line " ln "): " why) }
function problem_line(ln, why) { print clean("ignored line " ln ": " why) }
function clean(s) { gsub(/[\001-\037\177]/, "?", s); return s }

# --- the scanner: S is the text, P the position (1-based) ------------------------------------

function ch() { return substr(S, P, 1) }
function skip_ws() { while (P <= length(S) && (ch() == " " || ch() == "\t")) P++ }
# Whitespace, newlines and comments (inside arrays).
function skip_all(   c) {
  while (P <= length(S)) {
    c = ch()
    if (c == " " || c == "\t" || c == "\n") { P++; continue }
    if (c == "#") {
      while (P <= length(S) && ch() != "\n") P++
      continue
    }
    break
  }
}
# True when only whitespace and a comment are left on the line.
function at_end(   c) {
  skip_ws()
  c = ch()
  return P > length(S) || c == "#"
}

# A key (bare or quoted parts joined by dots) at P; returns the parts joined with SEP, or ""
# with ERR set.
function parse_key(   k, part, c) {
  k = ""
  while (1) {
    skip_ws()
    c = ch()
    if (c == "\"") {
      if (!basic_string()) return ""
      part = V
    } else if (c == "'") {
      if (!literal_string()) return ""
      part = V
    } else if (match(substr(S, P), /^[A-Za-z0-9_-]+/)) {
      part = substr(S, P, RLENGTH)
      P += RLENGTH
    } else {
      ERR = (c == "" ? "a key is missing" : "`" c "` cannot start a key (bare keys are letters, digits, _ and -; quote others)")
      return ""
    }
    if (part == "") { ERR = "an empty key"; return "" }
    k = (k == "" ? part : k SEP part)
    skip_ws()
    if (ch() != ".") return k
    P++
  }
}

# "…" at P (a single line). Sets V; false with ERR.
function basic_string(   c, out, hex, n) {
  P++
  out = ""
  while (1) {
    if (P > length(S) || ch() == "\n") { ERR = "unterminated string"; return 0 }
    c = ch()
    if (c == "\"") { P++; V = out; return 1 }
    if (c == "\\") {
      P++
      c = ch()
      if (c == "\"" || c == "\\") out = out c
      else if (c == "n") out = out "\n"
      else if (c == "t") out = out "\t"
      else if (c == "r") out = out "\r"
      else if (c == "b") out = out "\b"
      else if (c == "f") out = out "\f"
      else if (c == "u") {
        hex = substr(S, P + 1, 4)
        if (hex !~ /^00([2-6][0-9A-Fa-f]|7[0-9A-Ea-e])$/) { ERR = "only \\u escapes of printable ASCII (\\u0020 to \\u007E) are supported; write the character itself"; return 0 }
        n = index("0123456789abcdef", tolower(substr(hex, 3, 1))) - 1
        n = n * 16 + index("0123456789abcdef", tolower(substr(hex, 4, 1))) - 1
        out = out sprintf("%c", n)
        P += 4
      } else { ERR = "unknown escape \\" c " in a string"; return 0 }
      P++
      continue
    }
    out = out c
    P++
  }
}

# '…' at P. Sets V; false with ERR.
function literal_string(   rest, i) {
  rest = substr(S, P + 1)
  i = index(rest, "'")
  if (i == 0 || index(substr(rest, 1, i), "\n") > 0) { ERR = "unterminated string"; return 0 }
  V = substr(rest, 1, i - 1)
  P += i + 1
  return 1
}

# '''…''' at P. Sets V; returns 1, 0 with ERR, or -1 when the text ends first (read more).
function ml_literal_string(   rest, i) {
  rest = substr(S, P + 3)
  if (substr(rest, 1, 1) == "\n") { rest = substr(rest, 2); P++ }
  i = index(rest, "'''")
  if (i == 0) return -1
  # Up to two quotes may end the content right before the closing '''.
  while (substr(rest, i + 3, 1) == "'" && i < length(rest)) i++
  V = substr(rest, 1, i - 1)
  P += 3 + (i - 1) + 3
  return 1
}

# A value at P. Sets VT (str, bool, int, arr: elements in A[1..AN]) and V; returns 1, 0 with
# ERR, or -1 when the text ends inside a ''' string or an array.
function parse_value(   c, r) {
  skip_ws()
  c = ch()
  if (substr(S, P, 3) == "'''") { VT = "str"; return ml_literal_string() }
  if (substr(S, P, 3) == "\"\"\"") {
    # Skipped whole, to its closing quotes.
    r = index(substr(S, P + 3), "\"\"\"")
    if (r == 0) return -1
    P += 3 + r + 2
    ERR = "multi-line basic strings (\"\"\"…\"\"\") are not supported: use a literal '''…''' (verbatim)"
    return 0
  }
  if (c == "\"") { VT = "str"; return basic_string() }
  if (c == "'") { VT = "str"; return literal_string() }
  if (c == "[") { VT = "arr"; return parse_array() }
  if (c == "{") { ERR = "inline tables are not supported: use a [table]"; return 0 }
  if (match(substr(S, P), /^(true|false)/)) { VT = "bool"; V = substr(S, P, RLENGTH); P += RLENGTH; return 1 }
  if (match(substr(S, P), /^[+-]?[0-9]+/)) {
    VT = "int"; V = substr(S, P, RLENGTH); P += RLENGTH
    if (ch() ~ /[0-9A-Za-z_.:-]/) { ERR = "only decimal integers are supported (no floats, dates or _)"; return 0 }
    sub(/^\+/, "", V)
    return 1
  }
  ERR = (c == "" ? "the value is missing" : "a value cannot start with `" c "` (strings are quoted)")
  return 0
}

# [ "…", '…', … ] at P, across lines. Only strings.
function parse_array(   r) {
  P++
  AN = 0
  while (1) {
    skip_all()
    if (P > length(S)) return -1
    if (ch() == "]") { P++; return 1 }
    if (ch() == "\"") r = basic_string()
    else if (ch() == "'") {
      if (substr(S, P, 3) == "'''") { ERR = "''' strings inside arrays are not supported"; return 0 }
      r = literal_string()
    } else { ERR = "arrays may hold only strings here (`" ch() "` found)"; return 0 }
    if (!r) return 0
    A[++AN] = V
    skip_all()
    if (P > length(S)) return -1
    if (ch() == ",") { P++; continue }
    if (ch() == "]") { P++; return 1 }
    ERR = "expected `,` or `]` in the array"
    return 0
  }
}

# --- statements -----------------------------------------------------------------------------

# One statement starting on line `start`; returns "more" if it continues on the next line.
function statement(text,   k, r, full, p) {
  S = text
  P = 1
  ERR = ""
  if (at_end()) return "done"
  if (substr(S, P, 2) == "[[") {
    problem_line(start, "arrays of tables ([[…]]) are not supported")
    table = "\001bad" SEP start
    return "done"
  }
  if (ch() == "[") {
    P++
    k = parse_key()
    if (k != "" && ch() != "]") { k = ""; ERR = "expected `]` after the table name" }
    if (k != "") { P++; if (!at_end()) { k = ""; ERR = "unexpected text after the table header" } }
    if (k == "") {
      problem_line(start, "bad table header: " ERR "; the keys under it are ignored")
      table = "\001bad" SEP start
      return "done"
    }
    if (k in tables) {
      problem_line(start, "table [" show(k) "] is defined twice (first on line " tables[k] "); the keys under it are ignored")
      table = "\001bad" SEP start
      return "done"
    }
    tables[k] = start
    table = k
    # An interface's table names it, even with no keys (DHCP).
    if (split(k, p, SEP) == 2 && p[1] == "interface" && !interface(p[2], show(k), start)) table = "\001bad" SEP start
    return "done"
  }
  k = parse_key()
  if (k == "") { problem_line(start, ERR); return "done" }
  skip_ws()
  if (ch() != "=") { problem_line(start, "expected `=` after the key " show(k)); return "done" }
  P++
  r = parse_value()
  if (r < 0) return "more"
  if (substr(table, 1, 1) == "\001") {
    split(table, bad, SEP)
    problem(show(k), start, "under the invalid table header of line " bad[2])
    return "done"
  }
  full = (table == "" ? k : table SEP k)
  if (r == 0) { problem(show(full), start, ERR); return "done" }
  if (!at_end()) { problem(show(full), start, "unexpected text after the value"); return "done" }
  if (full in seen) { problem(show(full), start, "already set on line " seen[full] "; the first value is kept"); return "done" }
  seen[full] = start
  setting(full, start)
  return "done"
}

# A key path as written (dotted; parts that need it quoted).
function show(k,   n, parts, i, out) {
  n = split(k, parts, SEP)
  out = ""
  for (i = 1; i <= n; i++) {
    if (parts[i] !~ /^[A-Za-z0-9_-]+$/) parts[i] = "\"" parts[i] "\""
    out = (i == 1 ? parts[i] : out "." parts[i])
  }
  return out
}

# --- settings -------------------------------------------------------------------------------

function want(type, key, ln) {
  if (VT == type) return 1
  problem(key, ln, "expected " (type == "str" ? "a string" : type == "arr" ? "an array of strings" : type == "bool" ? "true or false" : "an integer") ", got " (VT == "str" ? "a string" : VT == "arr" ? "an array" : VT == "bool" ? "a boolean" : "an integer"))
  return 0
}

function setting(k, ln,   n, p, key, i, v, name, good) {
  n = split(k, p, SEP)
  key = show(k)
  if (k == "hostname") {
    if (!want("str", key, ln)) return
    if (!is_hostname(V)) { problem(key, ln, "\"" V "\" is not a valid host name (lowercase letters, digits and -, labels of 1 to 63 separated by dots, 64 at most: Kubernetes uses it as the node name)"); return }
    hostname = V
  } else if (k == "network" SEP "dns") {
    if (!want("arr", key, ln)) return
    for (i = 1; i <= AN; i++) {
      if (is_ipv4(A[i]) || is_ipv6(A[i])) dns[++ndns] = A[i]
      else problem(key, ln, "\"" A[i] "\" is not an IPv4 or IPv6 address")
    }
    if (ndns > 3) { problem(key, ln, "more than 3 servers: the C library reads the first 3 only; " ndns - 3 " dropped"); ndns = 3 }
  } else if (k == "network" SEP "ntp") {
    if (!want("arr", key, ln)) return
    for (i = 1; i <= AN; i++) {
      if (is_ipv4(A[i]) || is_ipv6(A[i]) || is_dnsname(A[i])) ntp[++nntp] = A[i]
      else problem(key, ln, "\"" A[i] "\" is neither a host name nor an address")
    }
  } else if (p[1] == "interface" && n == 3) {
    name = p[2]
    if (!interface(name, key, ln)) return
    if (p[3] == "dhcp") {
      if (!want("bool", key, ln)) return
      iface_dhcp[name] = V
    } else if (p[3] == "address") {
      if (!want("str", key, ln)) return
      if (!is_cidr(V)) { problem(key, ln, "\"" V "\" is not an IPv4 address with a prefix length (e.g. 192.168.1.10/24)"); return }
      iface_addr[name] = V
      iface_addr_line[name] = ln
    } else if (p[3] == "gateway") {
      if (!want("str", key, ln)) return
      if (!is_ipv4(V)) { problem(key, ln, "\"" V "\" is not an IPv4 address"); return }
      iface_gw[name] = V
      iface_gw_line[name] = ln
    } else problem(key, ln, "unknown setting (an interface has dhcp, address and gateway)")
  } else if (p[1] == "interface" && n == 2) {
    problem(key, ln, "interfaces are tables: [interface." show(p[2]) "] with dhcp, address, gateway")
  } else if (k == "ssh" SEP "authorized_keys") {
    if (!want("arr", key, ln)) return
    for (i = 1; i <= AN; i++) {
      if (is_sshkey(A[i])) sshkeys[++nssh] = A[i]
      else problem(key, ln, "entry " i " is not an OpenSSH public key line (`TYPE BASE64 [COMMENT]`, TYPE one of ssh-ed25519, ssh-rsa, ecdsa-sha2-nistp256/384/521, sk-…@openssh.com)")
    }
  } else if (k == "kubesolo" SEP "config") {
    if (!want("str", key, ln)) return
    if (V == "") { problem(key, ln, "empty"); return }
    kubesolo_config = V
    have_kubesolo = 1
  } else if (p[1] == "update" && n == 2) {
    setting_update(p[2], key, ln)
  } else {
    problem(key, ln, "unknown setting (known: hostname, network.dns, network.ntp, interface.NAME.{dhcp,address,gateway}, ssh.authorized_keys, kubesolo.config, update.{server,channel,public_keys,health_port,health_socket,health_timeout,health_process})")
  }
}

# Registers interface `name` (in order of appearance); false, reported, if it cannot be one.
function interface(name, key, ln) {
  if (name in iface_line) return 1
  if (name in iface_bad) return 0
  if (!is_ifname(name)) { iface_bad[name] = 1; problem(key, ln, "\"" name "\" is not an interface name (1 to 15 letters, digits, _ . -)"); return 0 }
  if (name == "lo") { iface_bad[name] = 1; problem(key, ln, "the loopback interface is configured by the init"); return 0 }
  iface_line[name] = ln
  ifaces[++nifaces] = name
  return 1
}

function setting_update(name, key, ln,   i) {
  if (name == "server") {
    if (!want("str", key, ln)) return
    if (V !~ /^https?:\/\/[^ \t\n"'<>\\]+$/) { problem(key, ln, "\"" V "\" is not an http:// or https:// URL"); return }
    upd["server"] = V
  } else if (name == "channel") {
    if (!want("str", key, ln)) return
    if (V !~ /^[A-Za-z0-9._-]+$/ || length(V) > 64) { problem(key, ln, "\"" V "\" is not a channel name (letters, digits, . _ -, 64 at most)"); return }
    upd["channel"] = V
  } else if (name == "public_keys") {
    if (!want("arr", key, ln)) return
    for (i = 1; i <= AN; i++) {
      if (A[i] ~ /^[^: \t\n]+:[A-Za-z0-9+\/]{43}=$/) updkeys[++nupdkeys] = A[i]
      else problem(key, ln, "entry " i " is not a public key in Nix's format (NAME:BASE64 of 32 bytes)")
    }
  } else if (name == "health_port") {
    if (!want("int", key, ln)) return
    if (V + 0 < 1 || V + 0 > 65535) { problem(key, ln, V " is not a TCP port (1 to 65535)"); return }
    upd["health-port"] = V + 0
  } else if (name == "health_socket") {
    if (!want("str", key, ln)) return
    if (V !~ /^\/[^ \t\n]+$/) { problem(key, ln, "\"" V "\" is not an absolute path"); return }
    upd["health-socket"] = V
  } else if (name == "health_timeout") {
    if (!want("int", key, ln)) return
    if (V + 0 < 1 || V + 0 > 86400) { problem(key, ln, V " is not a number of seconds from 1 to 86400"); return }
    upd["health-timeout"] = V + 0
  } else if (name == "health_process") {
    if (!want("str", key, ln)) return
    if (V !~ /^[A-Za-z0-9._-]+$/ || length(V) > 15) { problem(key, ln, "\"" V "\" is not a process name (letters, digits, . _ -, 15 at most)"); return }
    upd["health-process"] = V
  } else problem(key, ln, "unknown setting (update has server, channel, public_keys, health_port, health_socket, health_timeout, health_process)")
}

# --- checks ---------------------------------------------------------------------------------

function is_ipv4(s,   n, q, i) {
  n = split(s, q, ".")
  if (n != 4 || s ~ /\.$/) return 0
  for (i = 1; i <= 4; i++) {
    if (q[i] !~ /^(0|[1-9][0-9]?[0-9]?)$/ || q[i] + 0 > 255) return 0
  }
  return 1
}
function is_ipv6(s,   t) {
  if (s !~ /:/ || s !~ /^[0-9A-Fa-f:.]+$/ || length(s) > 45) return 0
  t = s
  return gsub(/::/, "", t) <= 1
}
function is_cidr(s,   i, pfx) {
  i = index(s, "/")
  if (i == 0) return 0
  pfx = substr(s, i + 1)
  return is_ipv4(substr(s, 1, i - 1)) && pfx ~ /^[0-9][0-9]?$/ && pfx + 0 >= 1 && pfx + 0 <= 32
}
function is_dnsname(s,   n, l, i) {
  if (length(s) > 253 || s == "") return 0
  n = split(s, l, ".")
  for (i = 1; i <= n; i++)
    if (l[i] !~ /^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?$/ || length(l[i]) > 63) return 0
  return 1
}
function is_hostname(s) {
  return length(s) <= 64 && s !~ /[A-Z]/ && is_dnsname(s)
}
function is_ifname(s) {
  return length(s) <= 15 && s ~ /^[A-Za-z0-9_.-]+$/ && s != "." && s != ".."
}
function is_sshkey(s) {
  return s ~ /^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp256|ecdsa-sha2-nistp384|ecdsa-sha2-nistp521|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+\/]+=?=?( [^\n\r]*)?$/
}

# --- output ---------------------------------------------------------------------------------

function finish(   i, name, f, lines, desc) {
  if (hostname != "") {
    print hostname > (out "/hostname")
    close(out "/hostname")
    print "applied hostname " hostname
  }
  lines = 0
  desc = ""
  for (i = 1; i <= nifaces; i++) {
    name = ifaces[i]
    f = out "/network.conf"
    if (iface_dhcp[name] == "true") {
      if (name in iface_addr) problem("interface." show(name) ".address", iface_addr_line[name], "dhcp = true for this interface")
      if (name in iface_gw) problem("interface." show(name) ".gateway", iface_gw_line[name], "dhcp = true for this interface")
      print name " dhcp" > f
      desc = desc ", " name " dhcp"
    } else if (name in iface_addr) {
      print name " static " iface_addr[name] " " (name in iface_gw ? iface_gw[name] : "-") > f
      desc = desc ", " name " " iface_addr[name] (name in iface_gw ? " via " iface_gw[name] : "")
    } else if (iface_dhcp[name] == "false") {
      problem("interface." show(name), iface_line[name], "dhcp = false and no valid address: the interface is not configured")
      continue
    } else if (name in iface_gw) {
      problem("interface." show(name) ".gateway", iface_gw_line[name], "a gateway without a valid address: the interface is not configured")
      continue
    } else {
      # An empty table, or one whose settings were all refused: DHCP.
      print name " dhcp" > f
      desc = desc ", " name " dhcp"
    }
    lines++
  }
  if (lines) { close(out "/network.conf"); print "applied interfaces " substr(desc, 3) }
  if (ndns) {
    for (i = 1; i <= ndns; i++) print "nameserver " dns[i] > (out "/resolv.conf")
    close(out "/resolv.conf")
    print "applied dns " ndns
  }
  if (nntp) {
    for (i = 1; i <= nntp; i++) print ntp[i] > (out "/ntp-servers")
    close(out "/ntp-servers")
    print "applied ntp " nntp
  }
  if (nssh) {
    for (i = 1; i <= nssh; i++) print sshkeys[i] > (out "/authorized_keys")
    close(out "/authorized_keys")
    print "applied ssh " nssh
  }
  if (have_kubesolo) {
    printf "%s", kubesolo_config > (out "/config.yaml")
    close(out "/config.yaml")
    print "applied kubesolo-config"
  }
  f = out "/update.conf"
  lines = 0
  if ("server" in upd) { print "server = " upd["server"] > f; lines++ }
  if ("channel" in upd) { print "channel = " upd["channel"] > f; lines++ }
  for (i = 1; i <= nupdkeys; i++) { print "public-key = " updkeys[i] > f; lines++ }
  if ("health-port" in upd) { print "health-port = " upd["health-port"] > f; lines++ }
  if ("health-socket" in upd) { print "health-socket = " upd["health-socket"] > f; lines++ }
  if ("health-timeout" in upd) { print "health-timeout = " upd["health-timeout"] > f; lines++ }
  if ("health-process" in upd) { print "health-process = " upd["health-process"] > f; lines++ }
  if (lines) { close(f); print "applied update " lines }
}
