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
#
# The overlay lab (VXLAN between hosts) is separate from that one and runs
# beside it: ovl-fabric's bridge br0 stands for the physical network;
# ovl-etcd runs etcd (Debian's etcd-server) on it at 192.168.50.100; the
# hosts ovl-host-a (192.168.50.1) and ovl-host-b (.2) each run their own
# vswitchd with --etcd, --host-id and --provider-address, their uplink eth1
# into the fabric. The overlay network ov1 (vsid 4096, 10.9.0.0/24 and
# fd00:9::/64) is created on host-a and reaches host-b through etcd, as do
# the CA->PA mappings of the veth endpoints ovl-a1 (on host-a) and ovl-b1
# (on host-b); the lab pings ovl-b1 from ovl-a1 (IPv4, IPv6) and runs
# iperf3 between them. Everything it keeps is under /run/vswitch-overlay
# (each host's state, socket, log and PID file; etcd's data).
#
#   scripts/lab.sh overlay [up]     bring the overlay lab up (idempotent)
#   scripts/lab.sh overlay status   show what runs: etcd, the daemons, networks, mappings
#   scripts/lab.sh overlay down     remove it: endpoints, network, daemons, etcd, namespaces
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
    IPERF_SRV=$srv
    wait_for 5 bash -c "ip netns exec $server ss -Hltn 'sport = :5201' | grep -q 5201"
    ip netns exec "$client" iperf3 -c "$addr" -t "$secs" -J | python3 -c '
import json, sys
r = json.load(sys.stdin)
if "error" in r: sys.exit("iperf3: " + r["error"])
print("    TCP %.2f Gbit/s %s" % (r["end"]["sum_received"]["bits_per_second"] / 1e9, sys.argv[1]))' "$label"
    wait "$srv" 2>/dev/null || true
    IPERF_SRV=""
}
IPERF_SRV=""

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

# ------------------------------------------------------ the overlay lab ----

OVL_RUN=/run/vswitch-overlay
OVL_FABRIC=ovl-fabric
OVL_ETCD_NS=ovl-etcd
OVL_ETCD_ADDR=192.168.50.100
OVL_ETCD_URL=http://$OVL_ETCD_ADDR:2379
ETCD=/usr/bin/etcd
OVL_HOSTS=(host-a host-b)
declare -A OVL_PA=([host-a]=192.168.50.1 [host-b]=192.168.50.2)
# Each host's endpoint (and its namespace) and addresses.
declare -A OVL_EP=([host-a]=ovl-a1 [host-b]=ovl-b1)
declare -A OVL_EP_IPS=([host-a]="10.9.0.10 fd00:9::10" [host-b]="10.9.0.20 fd00:9::20")
OVL_NET=ov1
OVL_VSID=4096
OVL_SUBNETS=(10.9.0.0/24 fd00:9::/64)
# The uplink in every namespace on the fabric.
OVL_UPLINK=eth1

ovl_ns() { echo "ovl-$1"; }
ovl_ctl() { local host=$1; shift; "$VSWITCHCTL" --socket "$OVL_RUN/$host/vswitchd.sock" "$@"; }
ovl_daemon_up() { ovl_ctl "$1" network ls >/dev/null 2>&1; }
ovl_ep_ip() { ovl_ctl "$1" endpoint inspect "$2" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]] or "")' "$3"; }
# The number of entries of HOST's table that came from another host.
ovl_remote() {
    ovl_ctl "$1" network mappings "$OVL_NET" --json 2>/dev/null |
        python3 -c 'import json,sys; print(sum(1 for m in json.load(sys.stdin) if m["Source"] == "remote"))'
}
ovl_has_remote() { [ "$(ovl_remote "$1")" -ge "$2" ]; }
ovl_net_gone() { ! ovl_ctl "$1" network inspect "$OVL_NET" >/dev/null 2>&1; }

# alive PIDFILE COMM: the process of PIDFILE runs and is COMM.
alive() {
    local pid
    [ -f "$1" ] || return 1
    pid=$(cat "$1")
    kill -0 "$pid" 2>/dev/null && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}

# stop_pidfile PIDFILE COMM: stops the process of PIDFILE if it is COMM.
stop_pidfile() {
    local pid
    if alive "$1" "$2"; then
        pid=$(cat "$1")
        say "stopping $2 ($pid)"
        kill "$pid"
        wait_for 10 bash -c "! kill -0 $pid" || die "$2 ($pid) did not stop"
    fi
    rm -f "$1"
}

# ovl_dir DIR: DIR under OVL_RUN, both root's only.
ovl_dir() { mkdir -p "$OVL_RUN" "$1" && chmod 0700 "$OVL_RUN" "$1"; }

ovl_add_ns() {
    ns_exists "$1" && return
    ip netns add "$1"
    ip -n "$1" link set lo up
}

# ovl_node NS ADDR: namespace NS with its uplink eth1 into the fabric, at ADDR.
ovl_node() {
    local ns=$1 addr=$2 port=p-${1#ovl-}
    ovl_add_ns "$ns"
    ip -n "$ns" link show dev "$OVL_UPLINK" >/dev/null 2>&1 && return
    ip -n "$ns" link add "$OVL_UPLINK" type veth peer name "$port" netns "$OVL_FABRIC"
    ip -n "$OVL_FABRIC" link set "$port" master "$BRIDGE"
    ip -n "$OVL_FABRIC" link set "$port" up
    ip -n "$ns" addr add "$addr/24" dev "$OVL_UPLINK"
    ip -n "$ns" link set "$OVL_UPLINK" up
}

etcd_healthy() {
    ip netns exec "$OVL_ETCD_NS" python3 -c 'import sys, urllib.request
urllib.request.urlopen(sys.argv[1] + "/health", timeout=1).read()' "$OVL_ETCD_URL"
}

start_etcd() {
    local dir=$OVL_RUN/etcd
    if alive "$dir/etcd.pid" etcd; then
        say "etcd already running ($(cat "$dir/etcd.pid"))"
        return
    fi
    ovl_dir "$dir"
    say "starting etcd in $OVL_ETCD_NS at $OVL_ETCD_URL (data and log: $dir)"
    # nsenter execs etcd: $! is its PID.
    setsid nsenter --net="/run/netns/$OVL_ETCD_NS" "$ETCD" --name=ovl --data-dir="$dir/data" \
        --listen-client-urls="$OVL_ETCD_URL" --advertise-client-urls="$OVL_ETCD_URL" \
        --listen-peer-urls=http://127.0.0.1:2380 --initial-advertise-peer-urls=http://127.0.0.1:2380 \
        --initial-cluster=ovl=http://127.0.0.1:2380 --log-level=error >>"$dir/etcd.log" 2>&1 </dev/null &
    echo $! >"$dir/etcd.pid"
    wait_for 20 etcd_healthy || die "etcd did not answer within 20 s; see $dir/etcd.log"
}

# HOST's vswitchd in its namespace, with its own state dir and socket.
start_host_daemon() {
    local host=$1 dir=$OVL_RUN/$1
    if ovl_daemon_up "$host"; then
        say "vswitchd of $host already running ($(cat "$dir/vswitchd.pid" 2>/dev/null))"
        return
    fi
    ovl_dir "$dir"
    say "starting vswitchd in $(ovl_ns "$host") (--host-id $host, --provider-address ${OVL_PA[$host]}; log: $dir/vswitchd.log)"
    setsid nsenter --net="/run/netns/$(ovl_ns "$host")" "$VSWITCHD" --state-dir "$dir/state" \
        --socket "$dir/vswitchd.sock" --etcd "$OVL_ETCD_URL" --host-id "$host" \
        --provider-address "${OVL_PA[$host]}" >>"$dir/vswitchd.log" 2>&1 </dev/null &
    echo $! >"$dir/vswitchd.pid"
    wait_for 15 ovl_daemon_up "$host" || die "vswitchd of $host did not start; see $dir/vswitchd.log"
}

# On a failed 'overlay up': what went wrong, then everything removed.
ovl_failed() {
    local rc=$? f
    [ "$rc" -ne 0 ] || return 0
    set +e
    trap - EXIT
    [ -z "$IPERF_SRV" ] || kill "$IPERF_SRV" 2>/dev/null
    for f in "$OVL_RUN"/*/vswitchd.log "$OVL_RUN/etcd/etcd.log"; do
        [ -s "$f" ] || continue
        echo "---- last lines of $f ----" >&2
        tail -n 10 "$f" >&2
    done
    say "overlay lab failed (exit $rc): removing what it made"
    (ovl_down)
    exit "$rc"
}

ovl_up() {
    need_root
    install_deps
    ensure_bpffs
    build
    [ -x "$ETCD" ] || die "$ETCD is missing: install etcd-server"
    trap ovl_failed EXIT
    local host ep ip args a b a4 b4 b6
    say "overlay lab: $OVL_FABRIC (bridge $BRIDGE) <- $OVL_UPLINK of $OVL_ETCD_NS ($OVL_ETCD_ADDR), $(ovl_ns host-a) (${OVL_PA[host-a]}), $(ovl_ns host-b) (${OVL_PA[host-b]})"
    ovl_add_ns "$OVL_FABRIC"
    if ! ip -n "$OVL_FABRIC" link show dev "$BRIDGE" >/dev/null 2>&1; then
        ip -n "$OVL_FABRIC" link add "$BRIDGE" type bridge
        ip -n "$OVL_FABRIC" link set "$BRIDGE" up
    fi
    ovl_node "$OVL_ETCD_NS" "$OVL_ETCD_ADDR"
    for host in "${OVL_HOSTS[@]}"; do ovl_node "$(ovl_ns "$host")" "${OVL_PA[$host]}"; done
    start_etcd
    for host in "${OVL_HOSTS[@]}"; do start_host_daemon "$host"; done

    # Created once, on host-a; host-b learns it from etcd.
    if ovl_ctl host-a network inspect "$OVL_NET" >/dev/null 2>&1; then
        say "network $OVL_NET already there"
    else
        args=(network create -d overlay -o vsid="$OVL_VSID")
        for ip in "${OVL_SUBNETS[@]}"; do args+=(--subnet "$ip"); done
        say "vswitchctl ${args[*]} $OVL_NET (on host-a)"
        ovl_ctl host-a "${args[@]}" "$OVL_NET" >/dev/null
    fi
    wait_for 10 ovl_ctl host-b network inspect "$OVL_NET" || die "network $OVL_NET did not reach host-b through etcd within 10 s"
    say "$OVL_NET is on host-b too (through etcd)"
    for host in "${OVL_HOSTS[@]}"; do
        ep=${OVL_EP[$host]}
        if ovl_ctl "$host" endpoint inspect "$ep" >/dev/null 2>&1; then
            say "endpoint $ep already on $host"
            continue
        fi
        ovl_add_ns "$ep"
        args=(endpoint create --network "$OVL_NET" --netns "$ep" --backend veth)
        for ip in ${OVL_EP_IPS[$host]}; do
            case $ip in *:*) args+=(--ipv6 "$ip") ;; *) args+=(--ip "$ip") ;; esac
        done
        say "endpoint $ep on $host (${OVL_EP_IPS[$host]}, veth)"
        ovl_ctl "$host" "${args[@]}" "$ep" >/dev/null
    done
    # Each endpoint's IPv4 and IPv6 mapping, published by its host.
    for host in "${OVL_HOSTS[@]}"; do
        wait_for 10 ovl_has_remote "$host" 2 || die "$host's table did not get the other host's mappings within 10 s"
    done
    echo
    for host in "${OVL_HOSTS[@]}"; do
        say "vswitchctl network mappings $OVL_NET (on $host)"
        ovl_ctl "$host" network mappings "$OVL_NET"
        echo
    done

    a=${OVL_EP[host-a]} b=${OVL_EP[host-b]}
    b4=$(ovl_ep_ip host-b "$b" IPAddress) b6=$(ovl_ep_ip host-b "$b" IPv6Address)
    a4=$(ovl_ep_ip host-a "$a" IPAddress)
    say "MTU of $a's eth0: $(ip netns exec "$a" cat /sys/class/net/eth0/mtu) ($OVL_UPLINK's $(ip netns exec "$(ovl_ns host-a)" cat "/sys/class/net/$OVL_UPLINK/mtu") less VXLAN's 50)"
    say "ping $a (host-a) -> $b (host-b, $b4)"
    wait_for 5 ip netns exec "$a" ping -c1 -W1 "$b4" || die "$a cannot reach $b4"
    ip netns exec "$a" ping -c 3 -i 0.2 "$b4" | tail -2
    if [ -n "$b6" ]; then
        say "ping -6 $a -> $b ($b6)"
        wait_for 5 ip netns exec "$a" ping -6 -c1 -W1 "$b6" || die "$a cannot reach $b6"
        ip netns exec "$a" ping -6 -c 3 -i 0.2 "$b6" | tail -2
    fi
    say "ping $b -> $a ($a4)"
    ip netns exec "$b" ping -c 2 -i 0.2 "$a4" | tail -2
    say "iperf3 $a -> $b, 2 s"
    iperf "$a" "$b" "$b4" 2 "through VXLAN, host-a -> host-b"
    trap - EXIT
    cat <<MSG

The overlay lab is up. Try:
  $VSWITCHCTL --socket $OVL_RUN/host-a/vswitchd.sock network mappings $OVL_NET
  $VSWITCHCTL --socket $OVL_RUN/host-b/vswitchd.sock stats tunnel:$OVL_NET
  ip netns exec $b ping $a4
  ip netns exec $OVL_FABRIC tcpdump -i $BRIDGE -n udp port 4789     # VXLAN on the wire
  $0 overlay down        # remove it
MSG
}

ovl_status() {
    local host ns made=()
    for ns in "$OVL_FABRIC" "$OVL_ETCD_NS" "$(ovl_ns host-a)" "$(ovl_ns host-b)" "${OVL_EP[@]}"; do
        if ns_exists "$ns"; then made+=("$ns"); fi
    done
    echo "namespaces: ${made[*]:-none}"
    if alive "$OVL_RUN/etcd/etcd.pid" etcd; then
        echo "etcd: running ($(cat "$OVL_RUN/etcd/etcd.pid")) in $OVL_ETCD_NS at $OVL_ETCD_URL$(etcd_healthy >/dev/null 2>&1 || echo ', not answering')"
    else
        echo "etcd: not running"
    fi
    for host in "${OVL_HOSTS[@]}"; do
        echo
        if ovl_daemon_up "$host"; then
            echo "$host: vswitchd running ($(cat "$OVL_RUN/$host/vswitchd.pid" 2>/dev/null)) in $(ovl_ns "$host"), PA ${OVL_PA[$host]}"
            ovl_ctl "$host" network ls; echo; ovl_ctl "$host" endpoint ls
            if ovl_ctl "$host" network inspect "$OVL_NET" >/dev/null 2>&1; then
                echo; ovl_ctl "$host" network mappings "$OVL_NET"
            fi
        else
            echo "$host: vswitchd is not running"
        fi
    done
}

ovl_down() {
    need_root
    local host ep pins=() p ns
    for host in "${OVL_HOSTS[@]}"; do
        ovl_daemon_up "$host" || continue
        ep=${OVL_EP[$host]}
        if ovl_ctl "$host" endpoint inspect "$ep" >/dev/null 2>&1; then ovl_ctl "$host" endpoint rm "$ep"; fi
    done
    # Removed on host-a, the network goes from every host through etcd;
    # a host that did not hear of it removes its own.
    if ovl_daemon_up host-a && ovl_ctl host-a network inspect "$OVL_NET" >/dev/null 2>&1; then
        ovl_ctl host-a network rm "$OVL_NET"
    fi
    if ovl_daemon_up host-b; then
        wait_for 5 ovl_net_gone host-b || ovl_ctl host-b network rm "$OVL_NET"
    fi
    # The daemons' kernel fast paths are pinned; the lab's go with it.
    for host in "${OVL_HOSTS[@]}"; do
        ovl_daemon_up "$host" || continue
        p=$(ovl_ctl "$host" datapath show --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["PinDir"])') || true
        case "$p" in /sys/fs/bpf/vswitch/fastpath-*) pins+=("$p") ;; esac
    done
    for host in "${OVL_HOSTS[@]}"; do stop_pidfile "$OVL_RUN/$host/vswitchd.pid" vswitchd; done
    for p in "${pins[@]}"; do rm -rf "$p"; done
    stop_pidfile "$OVL_RUN/etcd/etcd.pid" etcd
    for ns in "${OVL_EP[@]}" "$(ovl_ns host-a)" "$(ovl_ns host-b)" "$OVL_ETCD_NS" "$OVL_FABRIC"; do
        if ns_exists "$ns"; then ip netns del "$ns"; fi
    done
    rm -rf "$OVL_RUN"
    say "overlay lab removed"
}

overlay() {
    case "${1:-up}" in
        up) ovl_up ;;
        down) ovl_down ;;
        status) ovl_status ;;
        *) die "unknown overlay command '$1' (expected up, status or down)" ;;
    esac
}

case "${1:-up}" in
    up) up ;;
    down) down ;;
    status) status ;;
    overlay) overlay "${2:-up}" ;;
    -h|--help|help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0" ;;
    *) die "unknown command '$1' (expected up, status, down or overlay)" ;;
esac
