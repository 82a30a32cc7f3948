#!/usr/bin/env bash
# A working vswitch lab on built-in defaults: starts vswitchd, creates an
# internal network, three endpoint namespaces, and sends traffic through the
# switch (ping, IPv6 ping, iperf3). Leaves the lab up for you to explore.
#
#   scripts/lab.sh          bring the lab up (again: it is idempotent)
#   scripts/lab.sh status   show what is running
#   scripts/lab.sh down     remove the lab: endpoints, network, namespaces, daemon
#
# The daemon uses its defaults: state in /var/lib/vswitch, socket
# /run/vswitch/vswitchd.sock, log /run/vswitch/vswitchd.log.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

NET=lab
SUBNET=10.42.0.0/24
SUBNET6=fd42:1ab::/64
NAMESPACES=(lab-a lab-b lab-c)
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
    mkdir -p -m 0700 "$RUN_DIR"
    say "starting vswitchd (log: $LOG)"
    setsid "$VSWITCHD" >>"$LOG" 2>&1 < /dev/null &
    echo $! > "$PIDFILE"
    wait_for 10 daemon_up || die "vswitchd did not start; see $LOG"
}

ep_ip() { ctl endpoint inspect "$1" --json | python3 -c 'import json,sys; e=json.load(sys.stdin); print(e[sys.argv[1]])' "$2"; }

up() {
    need_root
    install_deps
    ensure_bpffs
    build
    start_daemon
    if ! ctl network inspect "$NET" >/dev/null 2>&1; then
        ctl network create -d internal --subnet "$SUBNET" --subnet "$SUBNET6" "$NET"
    fi
    for ns in "${NAMESPACES[@]}"; do
        ip netns list | grep -qw "^$ns" || ip netns add "$ns"
        ctl endpoint inspect "$ns" >/dev/null 2>&1 || ctl endpoint create --network "$NET" --netns "$ns" "$ns"
    done
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
    ip netns exec "$b" iperf3 -s -1 -B "$bip" >/dev/null 2>&1 &
    local srv=$!
    wait_for 5 bash -c "ip netns exec $b ss -Hltn 'sport = :5201' | grep -q 5201"
    ip netns exec "$a" iperf3 -c "$bip" -t 3 -J | python3 -c '
import json, sys
r = json.load(sys.stdin)
if "error" in r: sys.exit("iperf3: " + r["error"])
print("    TCP %.2f Gbit/s through vswitch" % (r["end"]["sum_received"]["bits_per_second"] / 1e9))'
    wait "$srv" 2>/dev/null || true
    echo
    ctl stats
    cat <<MSG

The lab is up. Try:
  $VSWITCHCTL port ls
  $VSWITCHCTL fdb show $NET
  ip netns exec lab-c ping $(ep_ip lab-a IPAddress)
  $0 down        # remove it
MSG
}

status() {
    if daemon_up; then
        ctl network ls; echo; ctl endpoint ls; echo; ctl port ls
    else
        echo "vswitchd is not running"
    fi
}

down() {
    need_root
    if daemon_up; then
        for ns in "${NAMESPACES[@]}"; do
            ctl endpoint inspect "$ns" >/dev/null 2>&1 && ctl endpoint rm "$ns"
        done
        ctl network inspect "$NET" >/dev/null 2>&1 && ctl network rm "$NET"
    fi
    for ns in "${NAMESPACES[@]}"; do
        ip netns list | grep -qw "^$ns" && ip netns del "$ns"
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
    -h|--help|help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' ;;
    *) die "unknown command '$1' (expected up, status or down)" ;;
esac
