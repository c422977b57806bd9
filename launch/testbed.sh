#!/usr/bin/env bash
# A multi-host test-bed on one Linux machine: N network namespaces ("hosts") on one bridge.
#
#   launch/testbed.sh up N [--rate 100mbit] [--delay 5ms]   create (or reshape) hosts 0..N-1
#   launch/testbed.sh down                                  remove everything it made
#   launch/testbed.sh status                                list it
#
# Host i is the namespace ${PREFIX}h<i>, with loopback up and eth0 = 198.18.0.<i+1>/24 (198.18.0.0/15 is
# reserved for network benchmarks, RFC 2544). eth0 is one end of a veth pair whose other end,
# ${PREFIX}v<i>, is a port of the bridge ${PREFIX}br in the root namespace. The bridge and the root-side
# ends carry no address at all (no IPv4, no IPv6 link-local), and the root namespace's routes are not
# touched: the hosts reach each other, and nothing else reaches them.
#
# --rate shapes every host's link in both directions with tc's token bucket filter (tbf): on eth0
# (host -> bridge) and on ${PREFIX}v<i> (bridge -> host). --delay adds a one-way delay on each host's
# outgoing side with tc netem (host-to-host one way = DELAY, round trip = 2 x DELAY); without netem in
# the kernel it is refused, never faked.
#
# Run a command on a host:  ip netns exec ${PREFIX}h0 COMMAND
# On every host, the names ${PREFIX}h<i> resolve to the hosts' addresses (/etc/netns/<host>/hosts, which
# `ip netns exec` shows as /etc/hosts: the machine's /etc/hosts plus these names).
#
# Settings (environment):
#   TESTBED_PREFIX  name prefix of every object (default dsb; [a-z][a-z0-9]{0,7}); down and status see
#                   only objects with this prefix, so several test-beds can coexist
#
# `up` is idempotent: run again it converges to the requested hosts and shaping (extra hosts are
# removed, existing ones kept, so processes on them keep running). If it fails, it removes what it made.
# Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN): without it, one line and exit 2.
set -Eeuo pipefail

PROG=testbed.sh
SUBNET=198.18.0
PREFIX=${TESTBED_PREFIX:-dsb}
BRIDGE=${PREFIX}br
MAX_HOSTS=200

die() { echo "$PROG: $*" >&2; exit 2; }

usage() {
  echo "usage: $PROG up N [--rate RATE] [--delay DELAY] | down | status" >&2
  exit 2
}

[[ "$PREFIX" =~ ^[a-z][a-z0-9]{0,7}$ ]] || die "TESTBED_PREFIX must match [a-z][a-z0-9]{0,7}, got '$PREFIX'"

# Rates as tc writes them (50mbit, 1gbit, 800kbit, 10mbps): echo the rate in bytes per second.
rate_bytes() {
  local value unit
  [[ "$1" =~ ^([0-9]+(\.[0-9]+)?)(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)$ ]] || return 1
  value=${BASH_REMATCH[1]}
  unit=${BASH_REMATCH[3]}
  awk -v v="$value" -v u="$unit" 'BEGIN {
    m["bit"] = 1 / 8; m["kbit"] = 1e3 / 8; m["mbit"] = 1e6 / 8; m["gbit"] = 1e9 / 8
    m["bps"] = 1; m["kbps"] = 1e3; m["mbps"] = 1e6; m["gbps"] = 1e9
    b = v * m[u]; if (b < 1000) exit 1; printf "%d\n", b }'
}

# Delays as tc writes them: 5ms, 200us, 0.5s.
valid_delay() { [[ "$1" =~ ^[0-9]+(\.[0-9]+)?(us|ms|s)$ ]]; }

host_ns() { echo "${PREFIX}h$1"; }
host_veth() { echo "${PREFIX}v$1"; }
host_addr() { echo "$SUBNET.$(( $1 + 1 ))"; }

# Our namespaces, by index, ascending.
our_hosts() {
  ip netns list 2>/dev/null | awk '{print $1}' | { grep -E "^${PREFIX}h[0-9]+$" || true; } \
    | sed "s/^${PREFIX}h//" | sort -n
}

# Our root-side veth ends (also those whose namespace is gone).
our_veths() {
  ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' \
    | { grep -E "^${PREFIX}v[0-9]+$" || true; }
}

need_root() {
  [[ "$(id -u)" -eq 0 ]] || die "needs root (network namespaces, a bridge and tc): run it as root or with sudo"
  command -v ip >/dev/null 2>&1 || die "needs 'ip' and 'tc' from iproute2 (apt-get install iproute2)"
  command -v tc >/dev/null 2>&1 || die "needs 'tc' from iproute2 (apt-get install iproute2)"
}

# Can this machine run netem? Probed in a throw-away namespace, never on the root namespace's links.
netem_works() {
  local probe=${PREFIX}probe ok=1
  ip netns add "$probe" 2>/dev/null || return 1
  if ! ip netns exec "$probe" tc qdisc add dev lo root netem delay 1ms 2>/dev/null; then
    if command -v modprobe >/dev/null 2>&1 && modprobe sch_netem 2>/dev/null; then
      ip netns exec "$probe" tc qdisc add dev lo root netem delay 1ms 2>/dev/null || ok=0
    else
      ok=0
    fi
  fi
  ip netns del "$probe" 2>/dev/null || true
  [[ "$ok" -eq 1 ]]
}

# Shape one link end: tbf at RATE (bytes/s given as RATE_B), with netem DELAY in front if asked.
shape() {
  local ns=$1 dev=$2 rate=$3 rate_b=$4 delay=$5 burst
  local -a tcx=(tc)
  [[ -n "$ns" ]] && tcx=(ip netns exec "$ns" tc)
  "${tcx[@]}" qdisc del dev "$dev" root 2>/dev/null || true
  if [[ -n "$rate" ]]; then
    # burst: 10 ms of traffic, at least 64 KiB (one GSO packet); queue: up to 50 ms of traffic
    burst=$(( rate_b / 100 > 65536 ? rate_b / 100 : 65536 ))
    if [[ -n "$delay" ]]; then
      "${tcx[@]}" qdisc add dev "$dev" root handle 1: netem delay "$delay"
      "${tcx[@]}" qdisc add dev "$dev" parent 1:1 handle 10: tbf rate "$rate" burst "$burst" latency 50ms
    else
      "${tcx[@]}" qdisc add dev "$dev" root handle 1: tbf rate "$rate" burst "$burst" latency 50ms
    fi
  elif [[ -n "$delay" ]]; then
    "${tcx[@]}" qdisc add dev "$dev" root handle 1: netem delay "$delay"
  fi
}

# No IPv6 on a link of ours (set before the link goes up): no link-local address and no multicast
# route appears in the root namespace. Falls back to no link-local address where IPv6 cannot be
# disabled per link; nothing to do where the kernel has no IPv6 at all.
no_ipv6() {
  local ns=$1 dev=$2 knob="/proc/sys/net/ipv6/conf/$2/disable_ipv6"
  if [[ -n "$ns" ]]; then
    ip netns exec "$ns" sh -c "echo 1 > $knob" 2>/dev/null && return 0
    ip -n "$ns" link set dev "$dev" addrgenmode none 2>/dev/null || true
  else
    { echo 1 > "$knob"; } 2>/dev/null && return 0
    ip link set dev "$dev" addrgenmode none 2>/dev/null || true
  fi
}

# Every host resolves every host's name (<prefix>h<i>): /etc/netns/<ns>/hosts, which `ip netns exec`
# shows as /etc/hosts on that host, is the machine's /etc/hosts plus the test-bed's names.
write_hosts_files() {
  local n=$1 i k
  for (( i = 0; i < n; i++ )); do
    mkdir -p "/etc/netns/$(host_ns "$i")"
    {
      cat /etc/hosts 2>/dev/null || echo "127.0.0.1 localhost"
      echo "# test-bed $PREFIX (launch/testbed.sh)"
      for (( k = 0; k < n; k++ )); do echo "$(host_addr "$k") $(host_ns "$k")"; done
    } > "/etc/netns/$(host_ns "$i")/hosts.tmp"
    mv "/etc/netns/$(host_ns "$i")/hosts.tmp" "/etc/netns/$(host_ns "$i")/hosts"
  done
}

remove_host() {
  local ns veth
  ns=$(host_ns "$1")
  veth=$(host_veth "$1")
  rm -rf "/etc/netns/${ns:?}"
  if ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$ns"; then
    local pids
    pids=$(ip netns pids "$ns" 2>/dev/null | wc -l)
    if [[ "$pids" -gt 0 ]]; then
      echo "$PROG: warning: $pids process(es) still run in $ns; they lose its network" >&2
    fi
    ip netns del "$ns"
  fi
  # the namespace's end takes its peer along, asynchronously: either may already be gone
  ip link del "$veth" 2>/dev/null || true
}

cmd_down() {
  need_root
  local i dir
  for i in $(our_hosts); do remove_host "$i"; done
  for dir in /etc/netns/"$PREFIX"h*; do  # hosts files of namespaces already gone
    if [[ -d "$dir" && "$(basename "$dir")" =~ ^${PREFIX}h[0-9]+$ ]]; then rm -rf "${dir:?}"; fi
  done
  local veth tries
  for (( tries = 0; tries < 50; tries++ )); do  # links of deleted namespaces go away asynchronously
    [[ -z "$(our_veths)" ]] && break
    for veth in $(our_veths); do ip link del "$veth" 2>/dev/null || true; done
    sleep 0.1
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  if [[ -n "$(our_veths)" ]] || ip link show "$BRIDGE" >/dev/null 2>&1; then
    echo "$PROG: could not remove every link of test-bed $PREFIX (see: ip link | grep $PREFIX)" >&2
    return 1
  fi
}

ensure_host() {
  local i=$1 ns veth addr
  ns=$(host_ns "$i")
  veth=$(host_veth "$i")
  addr=$(host_addr "$i")
  if ! ip netns list | awk '{print $1}' | grep -qx "$ns"; then
    ip netns add "$ns"
  fi
  ip -n "$ns" link set lo up
  if ! ip -n "$ns" link show eth0 >/dev/null 2>&1; then
    ip link del "$veth" 2>/dev/null || true
    ip link add "$veth" type veth peer name eth0 netns "$ns"
    no_ipv6 "" "$veth"
    no_ipv6 "$ns" eth0
  fi
  ip link set "$veth" master "$BRIDGE"
  ip link set "$veth" up
  ip -n "$ns" addr replace "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up
}

cmd_up() {
  local n rate="" delay="" rate_b=0
  [[ $# -ge 1 ]] || usage
  n=$1
  shift
  [[ "$n" =~ ^[0-9]+$ && "$n" -ge 1 && "$n" -le $MAX_HOSTS ]] \
    || die "N must be an integer in [1, $MAX_HOSTS], got '$n'"
  while [[ $# -gt 0 ]]; do
    case $1 in
      --rate)
        [[ $# -ge 2 ]] || die "--rate needs a value like 100mbit"
        rate=$2
        rate_b=$(rate_bytes "$rate") || die "--rate must be a tc rate of at least 8kbit (e.g. 100mbit, 1gbit), got '$rate'"
        shift 2 ;;
      --delay)
        [[ $# -ge 2 ]] || die "--delay needs a value like 5ms"
        delay=$2
        valid_delay "$delay" || die "--delay must be a tc time (e.g. 5ms, 200us), got '$delay'"
        shift 2 ;;
      *) die "unknown argument '$1' (usage: $PROG up N [--rate RATE] [--delay DELAY])" ;;
    esac
  done
  need_root
  # the rights to make namespaces (root in a container may lack CAP_SYS_ADMIN / CAP_NET_ADMIN)
  local probe=${PREFIX}probe
  ip netns del "$probe" 2>/dev/null || true
  ip netns add "$probe" 2>/dev/null || die "cannot create network namespaces here (ip netns add failed: no CAP_SYS_ADMIN?)"
  ip netns del "$probe"
  if [[ -n "$delay" ]] && ! netem_works; then
    die "--delay needs tc netem, which this kernel lacks (sch_netem not available); nothing was changed"
  fi

  trap 'echo "$PROG: up failed; removing the test-bed" >&2; trap - ERR; cmd_down; exit 1' ERR
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge forward_delay 0 stp_state 0
    no_ipv6 "" "$BRIDGE"
  fi
  # bridged frames skip iptables (a host firewall's FORWARD policy must not drop test-bed traffic)
  ip link set "$BRIDGE" type bridge nf_call_iptables 0 nf_call_ip6tables 0 2>/dev/null || true
  ip link set "$BRIDGE" up
  local i
  for i in $(our_hosts); do
    if [[ "$i" -ge "$n" ]]; then remove_host "$i"; fi
  done
  write_hosts_files "$n"
  for (( i = 0; i < n; i++ )); do
    ensure_host "$i"
    shape "" "$(host_veth "$i")" "$rate" "$rate_b" ""        # bridge -> host
    shape "$(host_ns "$i")" eth0 "$rate" "$rate_b" "$delay"  # host -> bridge
  done
  trap - ERR
  echo "test-bed up: $n host(s) ${PREFIX}h0..${PREFIX}h$(( n - 1 )), $SUBNET.1..$SUBNET.$n/24 on bridge $BRIDGE" \
    "(rate ${rate:-unshaped}, delay ${delay:-none})"
}

qdisc_summary() {
  # "tbf rate 50Mbit ..." / "netem ... delay 5ms" / "none"
  local out
  out=$("$@" 2>/dev/null | awk '$2 == "tbf" || $2 == "netem" {
      for (k = 1; k <= NF; k++) if ($k == "rate" || $k == "delay") s = s (s ? ", " : "") $2 " " $k " " $(k + 1)
    } END { print s }')
  echo "${out:-none}"
}

cmd_status() {
  local hosts i ns addr
  hosts=$(our_hosts)
  if ! ip link show "$BRIDGE" >/dev/null 2>&1 && [[ -z "$hosts" ]]; then
    echo "test-bed $PREFIX: down"
    return 0
  fi
  echo "test-bed $PREFIX: bridge $BRIDGE $(ip link show "$BRIDGE" >/dev/null 2>&1 && echo present || echo missing)"
  for i in $hosts; do
    ns=$(host_ns "$i")
    addr=$(ip -n "$ns" -o -4 addr show dev eth0 2>/dev/null | awk '{print $4}')
    echo "$ns ${addr:-no-address} out: $(qdisc_summary ip netns exec "$ns" tc qdisc show dev eth0)" \
      "in: $(qdisc_summary tc qdisc show dev "$(host_veth "$i")")"
  done
}

[[ $# -ge 1 ]] || usage
command=$1
shift
case $command in
  up) cmd_up "$@" ;;
  down) [[ $# -eq 0 ]] || usage; cmd_down ;;
  status) [[ $# -eq 0 ]] || usage; need_root; cmd_status ;;
  *) usage ;;
esac
