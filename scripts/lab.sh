#!/usr/bin/env bash
# A working vswitch lab on built-in defaults: starts vswitchd, creates an
# internal network, three endpoint namespaces, and sends traffic through the
# switch (ping, IPv6 ping, iperf3). Then uplinks: a namespace with a Linux
# bridge stands for the physical network, this host's uplinks lab-up0 and
# lab-up1 are veths into it, and lab-outside is a machine on it with no
# vswitch. An l2bridge network (10.77.0.0/24, 2 endpoints) runs on lab-up0
# and a transparent one (10.78.0.0/24, 1 endpoint) on lab-up1; lab-outside
# pings them, runs iperf3 to them, and shows its neighbour table: one MAC for
# every l2bridge endpoint, each transparent endpoint with its own. A nat
# network on lab-up2 translates its endpoint (lab-n1) to this host's
# 10.77.0.3, maps 10.77.0.3:8080 to lab-n1:80, and carries an HNS ACL.
# Leaves the lab up for you to explore. The topology is examples/lab.yaml,
# brought up with 'vswitchctl apply -f' (which changes nothing when it is
# all there) and removed with 'vswitchctl delete -f'; this script adds the
# daemon and the traffic.
#
#   scripts/lab.sh          bring the lab up (again: it is idempotent)
#   scripts/lab.sh status   show what is running
#   scripts/lab.sh down     remove the lab: endpoints, networks, namespaces, links, daemon
#
# The daemon uses its defaults: state in /var/lib/vswitch, socket
# /run/vswitch/vswitchd.sock, log /run/vswitch/vswitchd.log.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

LAB_FILE=$REPO/examples/lab.yaml
# What examples/lab.yaml makes, by name, for the traffic below and for
# removing a lab half built by an older version of this script.
NET=lab
NAMESPACES=(lab-a lab-b lab-c)
# The uplink lab. The root namespace (this host) gets the uplinks and its
# own address on the l2bridge subnet; lab-outside is the router at .1.
FABRIC=lab-fabric
OUTSIDE=lab-outside
BRIDGE=br0
UPLINKS=(lab-up0 lab-up1 lab-up2)
HOST_ADDR=10.77.0.2/24
# The nat network's uplink address: what lab-outside sees its endpoint as.
NAT_ADDR=10.77.0.3/24
NAT_NET=lab-nat
NAT_EP=lab-n1
L2_NET=lab-l2bridge
TR_NET=lab-transparent
# endpoint (and its namespace):network:address
UPLINK_EPS=("lab-l2a:$L2_NET:10.77.0.10" "lab-l2b:$L2_NET:10.77.0.11" "lab-tr:$TR_NET:10.78.0.10")
RUN_DIR=/run/vswitch
PIDFILE=$RUN_DIR/vswitchd.pid
LOG=$RUN_DIR/vswitchd.log

ctl() { "$VSWITCHCTL" "$@"; }
daemon_up() { ctl network ls >/dev/null 2>&1; }

start_daemon() {
    if daemon_up; then
        say "vswitchd already running"
        return
    fi
    mkdir -p "$RUN_DIR" && chmod 0700 "$RUN_DIR"
    say "starting vswitchd (log: $LOG)"
    setsid "$VSWITCHD" >>"$LOG" 2>&1 < /dev/null &
    echo $! > "$PIDFILE"
    wait_for 10 daemon_up || die "vswitchd did not start; see $LOG"
}

ep_ip() { ctl endpoint inspect "$1" --json | python3 -c 'import json,sys; e=json.load(sys.stdin); print(e[sys.argv[1]])' "$2"; }
ns_exists() { [ -e "/run/netns/$1" ]; }
link_exists() { ip link show dev "$1" >/dev/null 2>&1; }

# iperf3 CLIENT_NS SERVER_NS ADDR SECONDS LABEL: one TCP run, rate printed.
iperf() {
    local client=$1 server=$2 addr=$3 secs=$4 label=$5
    ip netns exec "$server" iperf3 -s -1 -B "$addr" >/dev/null 2>&1 &
    local srv=$!
    wait_for 5 bash -c "ip netns exec $server ss -Hltn 'sport = :5201' | grep -q 5201"
    ip netns exec "$client" iperf3 -c "$addr" -t "$secs" -J | python3 -c '
import json, sys
r = json.load(sys.stdin)
if "error" in r: sys.exit("iperf3: " + r["error"])
print("    TCP %.2f Gbit/s %s" % (r["end"]["sum_received"]["bits_per_second"] / 1e9, sys.argv[1]))' "$label"
    wait "$srv" 2>/dev/null || true
}

uplink_lab() {
    say "uplink lab: $FABRIC (bridge $BRIDGE) <- ${UPLINKS[*]} (this host), $OUTSIDE"
    local spec ep net addr
    echo
    ctl port ls
    echo

    ip -n "$OUTSIDE" neigh flush dev eth0
    for spec in "${UPLINK_EPS[@]}"; do
        IFS=: read -r ep net addr <<<"$spec"
        say "ping $OUTSIDE -> $ep ($addr, $net)"
        wait_for 5 ip netns exec "$OUTSIDE" ping -c1 -W1 "$addr" || die "$OUTSIDE cannot reach $addr"
        ip netns exec "$OUTSIDE" ping -c 3 -i 0.2 "$addr" | tail -2
    done
    say "ping $OUTSIDE -> this host's own address on ${UPLINKS[0]} (${HOST_ADDR%/*})"
    ip netns exec "$OUTSIDE" ping -c 2 -i 0.2 "${HOST_ADDR%/*}" | tail -2
    say "iperf3 $OUTSIDE -> lab-l2a (l2bridge) and lab-tr (transparent), 2 s each"
    iperf "$OUTSIDE" lab-l2a "$(ep_ip lab-l2a IPAddress)" 2 "to an l2bridge endpoint"
    iperf "$OUTSIDE" lab-tr "$(ep_ip lab-tr IPAddress)" 2 "to a transparent endpoint"

    nat_lab
    echo
    say "$OUTSIDE's neighbour table: l2bridge endpoints share one MAC, transparent ones have their own"
    ip -n "$OUTSIDE" neigh show dev eth0 | grep -E '^10\.7[78]\.' | sort -V | sed 's/^/    /'
    printf '    %-24s %s\n' "uplink ${UPLINKS[0]}" "$(cat "/sys/class/net/${UPLINKS[0]}/address")" \
        "uplink ${UPLINKS[1]}" "$(cat "/sys/class/net/${UPLINKS[1]}/address")"
    for spec in "${UPLINK_EPS[@]}"; do
        IFS=: read -r ep net addr <<<"$spec"
        printf '    %-24s %s\n' "endpoint $ep ($net)" "$(ep_ip "$ep" MacAddress)"
    done
}

# A nat network (WinNAT): its endpoint reaches lab-outside from this host's
# address on lab-up2, and lab-outside reaches it through a port mapping.
nat_lab() {
    echo
    say "nat: $NAT_NET on ${UPLINKS[2]} (${NAT_ADDR%/*}), endpoint $NAT_EP with -p 8080:80/tcp and an HNS ACL"
    say "ping $NAT_EP -> $OUTSIDE (10.77.0.1), translated to ${NAT_ADDR%/*}"
    wait_for 5 ip netns exec "$NAT_EP" ping -c1 -W1 10.77.0.1 || die "$NAT_EP cannot reach $OUTSIDE"
    ip netns exec "$NAT_EP" ping -c 3 -i 0.2 10.77.0.1 | tail -2
    say "$OUTSIDE -> ${NAT_ADDR%/*}:8080, mapped to $NAT_EP:80"
    ip netns exec "$NAT_EP" python3 -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 80)); s.listen(1); s.settimeout(10)
c, peer = s.accept(); c.sendall(f"hello {peer[0]}, from inside the nat network\n".encode())
' &
    local server=$!
    wait_for 5 bash -c "ip netns exec $NAT_EP ss -Hltn 'sport = :80' | grep -q ." || true
    ip netns exec "$OUTSIDE" python3 -c '
import socket, sys
print("    " + socket.create_connection((sys.argv[1], 8080), timeout=5).recv(100).decode().strip())
' "${NAT_ADDR%/*}" || say "the mapped port did not answer"
    wait "$server" 2>/dev/null || true
    ctl policy ls --endpoint "$NAT_EP"
    ctl flows dump --endpoint "$NAT_EP" | sed -n '/Connections/,$p'
}

up() {
    need_root
    install_deps
    ensure_bpffs
    build
    start_daemon
    # Makes what is missing, changes what differs; "no change" the second time.
    say "vswitchctl apply -f $LAB_FILE"
    ctl apply -f "$LAB_FILE"
    echo
    ctl network ls
    echo
    ctl endpoint ls
    echo

    local a b b6 gw
    a=lab-a; b=lab-b
    b6=$(ep_ip "$b" IPv6Address)
    gw=$(ep_ip "$a" GatewayAddress)
    local bip; bip=$(ep_ip "$b" IPAddress)
    say "ping $a -> $b ($bip)"
    ip netns exec "$a" ping -c 3 -i 0.2 "$bip" | tail -2
    say "ping -6 $a -> $b ($b6)"
    ip netns exec "$a" ping -6 -c 3 -i 0.2 "$b6" | tail -2
    say "ping host -> $b through the host port (gateway $gw)"
    ping -c 2 -i 0.2 "$bip" | tail -2
    say "iperf3 $a -> $b, 3 s"
    iperf "$a" "$b" "$bip" 3 "through vswitch"
    echo
    uplink_lab
    echo
    ctl stats
    cat <<MSG

The lab is up. Try:
  $VSWITCHCTL port ls
  $VSWITCHCTL fdb show $NET
  ip netns exec lab-c ping $(ep_ip lab-a IPAddress)
  ip netns exec $OUTSIDE ping $(ep_ip lab-l2b IPAddress)      # l2bridge, through ${UPLINKS[0]}
  ip netns exec $NAT_EP ping 10.77.0.1                 # nat: $OUTSIDE sees ${NAT_ADDR%/*}
  $VSWITCHCTL trace --endpoint $NAT_EP --in --packet 'tcp,src=10.77.0.1,dst=${NAT_ADDR%/*},sport=40000,dport=8080'
  ip netns exec $FABRIC tcpdump -i $BRIDGE -e -n       # the wire
  $0 down        # remove it
MSG
}

status() {
    if daemon_up; then
        ctl network ls; echo; ctl endpoint ls; echo; ctl port ls
    else
        echo "vswitchd is not running"
    fi
    if ns_exists "$OUTSIDE"; then
        echo
        echo "$OUTSIDE's neighbours on the fabric:"
        ip -n "$OUTSIDE" neigh show dev eth0 | sed 's/^/    /'
    fi
}

down() {
    need_root
    local spec ep net addr uplink_eps=()
    for spec in "${UPLINK_EPS[@]}"; do
        IFS=: read -r ep net addr <<<"$spec"
        uplink_eps+=("$ep")
    done
    if daemon_up; then
        # Everything the file describes, and the namespaces and links
        # applying it made; then whatever an older lab left.
        ctl delete -f "$LAB_FILE" || say "delete -f $LAB_FILE failed; removing the lab by name"
        for ep in "${NAMESPACES[@]}" "${uplink_eps[@]}" "$NAT_EP"; do
            if ctl endpoint inspect "$ep" >/dev/null 2>&1; then ctl endpoint rm "$ep"; fi
        done
        # Removing the uplink networks detaches their XDP programs.
        for net in "$NET" "$L2_NET" "$TR_NET" "$NAT_NET"; do
            if ctl network inspect "$net" >/dev/null 2>&1; then ctl network rm "$net"; fi
        done
    fi
    for ep in "${NAMESPACES[@]}" "${uplink_eps[@]}" "$NAT_EP" "$OUTSIDE" "$FABRIC"; do
        if ns_exists "$ep"; then ip netns del "$ep"; fi
    done
    # Deleting the fabric took the veth pairs with it; this is for a lab
    # that was half built.
    local up
    for up in "${UPLINKS[@]}"; do
        if link_exists "$up"; then ip link del "$up"; fi
    done
    if [ -f "$PIDFILE" ]; then
        local pid; pid=$(cat "$PIDFILE")
        if kill -0 "$pid" 2>/dev/null && [ "$(cat /proc/"$pid"/comm)" = vswitchd ]; then
            say "stopping vswitchd ($pid)"
            kill "$pid"
            wait_for 10 bash -c "! kill -0 $pid" || die "vswitchd ($pid) did not stop"
        fi
        rm -f "$PIDFILE"
    fi
    say "lab removed"
}

case "${1:-up}" in
    up) up ;;
    down) down ;;
    status) status ;;
    -h|--help|help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//' ;;
    *) die "unknown command '$1' (expected up, status or down)" ;;
esac
