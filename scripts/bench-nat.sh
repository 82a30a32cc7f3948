#!/usr/bin/env bash
# What the nat driver costs against what Docker does on Linux (issue 7): an
# endpoint namespace behind a host namespace that translates it to the
# host's uplink address, towards an outside namespace, built twice in one
# run:
#
#   masq     a Linux bridge holding the gateway, the endpoint on a veth, and
#            iptables MASQUERADE in the host namespace (ip_forward=1 there):
#              iptables -t nat -A POSTROUTING -s SUBNET ! -o BRIDGE -j MASQUERADE
#   vswitch  vswitchd running in the host namespace, a -d nat network on the
#            uplink, the endpoint a TAP
#
# Measures iperf3 TCP endpoint -> outside (and outside -> endpoint with -R,
# for information) and new TCP connections per second endpoint -> outside,
# and reports the ratios issue 7 sets targets for: vswitch/masq TCP (>= 0.8)
# and connections per second (>= 0.5). Prints a table and, as the last line
# of stdout, one JSON object. Everything it creates has $$ in its name and
# is removed on exit, failure or Ctrl-C.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/bench-nat.sh [--duration N] [--conn-duration N] [--repeat N]
                            [--nat-ports LO-HI] [--smoke] [--enforce] [--build]

Measures the nat driver against a Linux bridge with iptables MASQUERADE (what
Docker does on Linux), on the same topology in the same run: iperf3 TCP and
new TCP connections per second from an endpoint namespace to an outside
namespace, translated to the host namespace's uplink address. Needs root.

Options:
  --duration N       seconds per iperf3 test (default 10; the first second is
                     omitted as TCP warm-up when N >= 5)
  --conn-duration N  seconds per connection-rate test (default 5)
  --repeat N         run every path N times, interleaved, and report the
                     median (default 1)
  --nat-ports LO-HI  the vswitch network's -o nat_ports. The default pool is
                     what lies above the host namespace's ephemeral range
                     (61000-65535); a pool below it needs the range moved, so
                     with this option the host namespace's
                     net.ipv4.ip_local_port_range becomes 61000-65535 and
                     LO-HI must lie below 61000
  --smoke            2-second tests, no thresholds: checks that the benchmark
                     itself works (for CI)
  --enforce          exit 3 when a ratio misses its target
  --build            run 'cargo build --release --workspace' even when the
                     binaries exist (default: only when they are missing)
  -h, --help         show this help

Output: a table on stdout, the ratios against their targets, then one JSON
line, e.g.
  {"masq_gbps": 20.1, "vswitch_gbps": 14.2, "masq_rev_gbps": 19.0, ...,
   "masq_cps": 15000, "vswitch_cps": 9000, "tcp_ratio": 0.71,
   "conn_ratio": 0.6, "targets_met": false, ...}
tcp_ratio and conn_ratio are vswitch/masq for TCP endpoint -> outside and for
connections per second.
Exit status: 0 ok, 1 setup or measurement failed, 3 a path moved no data or
completed no connection (not with --smoke), or with --enforce a ratio below
its target.

Topology, built twice (all names contain the script's PID <P>; the same
addresses on both, each inside its own namespaces: endpoint 172.31.1.10,
gateway 172.31.1.1, host uplink 10.58.1.1, outside 10.58.1.2; the outside
namespace has no route to 172.31.1.0/24):
  masq:    vsn<P>-me eth0 --veth-- [br0 172.31.1.1 in vsn<P>-mh, MASQUERADE]
           vsn<P>-mh vsn<P>mu 10.58.1.1 --veth-- eth0 10.58.1.2 vsn<P>-mo
  vswitch: vsn<P>-ve eth0 (TAP) -- [vswitchd in vsn<P>-vh, -d nat] --
           vsn<P>-vh vsn<P>vu 10.58.1.1 (the uplink) --veth-- eth0 10.58.1.2 vsn<P>-vo
Both veths keep their default offloads. Servers in the outside namespaces:
iperf3 on 5201, a connection server on 7000. The connection test is a small
C program (built here with cc): connect, one byte each way, close with a
reset (no TIME_WAIT), in a loop; a connection not done within 1 s fails.
vswitchd runs with --conntrack-max 4194304 (and per port), so the table's
size is not what is measured. The default NAT pool holds 4,536 ports: a
connection test makes several times that many, so a pool that ran out would
show as failures and as nat_exhausted on the drops line.
EOF
}

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION=10
CONN_DURATION=5
REPEAT=1
SMOKE=0
ENFORCE=0
FORCE_BUILD=0
NAT_PORTS=""
CT_MAX=4194304

posint() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 expects a positive whole number, got '$2'"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --duration) [ $# -ge 2 ] || die "--duration needs a value"; posint "$1" "$2"; DURATION=$2; shift 2 ;;
        --conn-duration) [ $# -ge 2 ] || die "--conn-duration needs a value"; posint "$1" "$2"; CONN_DURATION=$2; shift 2 ;;
        --repeat) [ $# -ge 2 ] || die "--repeat needs a value"; posint "$1" "$2"; REPEAT=$2; shift 2 ;;
        --nat-ports)
            [ $# -ge 2 ] || die "--nat-ports needs a value"
            [[ "$2" =~ ^([0-9]+)-([0-9]+)$ ]] || die "--nat-ports expects LO-HI, got '$2'"
            { [ "${BASH_REMATCH[1]}" -ge 1024 ] && [ "${BASH_REMATCH[1]}" -le "${BASH_REMATCH[2]}" ] &&
                [ "${BASH_REMATCH[2]}" -lt 61000 ]; } || die "--nat-ports LO-HI needs 1024 <= LO <= HI < 61000, got '$2'"
            NAT_PORTS=$2; shift 2 ;;
        --smoke) SMOKE=1; shift ;;
        --enforce) ENFORCE=1; shift ;;
        --build) FORCE_BUILD=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument '$1'" ;;
    esac
done
if [ "$SMOKE" -eq 1 ]; then
    DURATION=2
    CONN_DURATION=2
fi
OMIT=0
[ "$DURATION" -ge 5 ] && OMIT=1

[ "$(id -u)" -eq 0 ] || die "run as root (e.g. sudo $0): the benchmark creates network namespaces, veths, a bridge, iptables rules and TAP endpoints"

# ---------------------------------------------------------------- tools ----

need_cmd() {
    local cmd=$1 pkg=$2
    command -v "$cmd" >/dev/null 2>&1 && return
    say "installing $pkg (for $cmd)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "$pkg" >/dev/null
    command -v "$cmd" >/dev/null 2>&1 || die "$cmd still missing after installing $pkg"
}
need_cmd iperf3 iperf3
need_cmd ip iproute2
need_cmd ss iproute2
need_cmd iptables iptables
need_cmd python3 python3
need_cmd setsid util-linux
need_cmd nsenter util-linux
need_cmd timeout coreutils
need_cmd cc gcc

if [ "$FORCE_BUILD" -eq 1 ] || [ ! -x "$VSWITCHD" ] || [ ! -x "$VSWITCHCTL" ]; then
    command -v cargo >/dev/null || export PATH="$HOME/.cargo/bin:$PATH"
    command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain or build the binaries first"
    say "building release binaries (cargo build --release --workspace in $REPO)"
    (cd "$REPO" && env -u CARGO_TARGET_DIR cargo build --release --workspace --quiet)
    { [ -x "$VSWITCHD" ] && [ -x "$VSWITCHCTL" ]; } || die "build finished but $VSWITCHD or $VSWITCHCTL is missing"
fi
ensure_bpffs

# ---------------------------------------------------- state and cleanup ----

P="vsn$$"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/vswitch-bench-nat-$$.XXXXXX")
SOCK="$WORK/vswitchd.sock"
STATE="$WORK/state"
DLOG="$WORK/vswitchd.log"

SUBNET=172.31.1.0/24 GATEWAY=172.31.1.1 IP_EP=172.31.1.10
IP_UP=10.58.1.1 IP_OUT=10.58.1.2
NS_MH="$P-mh" NS_ME="$P-me" NS_MO="$P-mo"
NS_VH="$P-vh" NS_VE="$P-ve" NS_VO="$P-vo"
# vswitchd pins its XDP program under /sys/fs/bpf/vswitch/<ifname>, one
# directory for every namespace: the uplink's name carries the PID.
UP_M="${P}mu" UP_V="${P}vu"
NET="${P}nat" EP="${P}ep"

CREATED_NS=()
CREATED_EP=()
CREATED_NET=()
SERVER_PIDS=()
DAEMON_PID=""
CLEANED=0

ctl() { "$VSWITCHCTL" --socket "$SOCK" "$@"; }

stop_pid() {
    local pid=$1
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 5))
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.05; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    [ "$CLEANED" -eq 1 ] && return
    CLEANED=1
    set +e
    trap '' INT TERM
    local i
    for i in "${SERVER_PIDS[@]}"; do stop_pid "$i"; done
    if [ -n "$DAEMON_PID" ] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        for ((i = ${#CREATED_EP[@]} - 1; i >= 0; i--)); do
            ctl endpoint rm "${CREATED_EP[i]}" >/dev/null 2>&1 || echo "warning: could not remove endpoint ${CREATED_EP[i]}" >&2
        done
        for ((i = ${#CREATED_NET[@]} - 1; i >= 0; i--)); do
            ctl network rm "${CREATED_NET[i]}" >/dev/null 2>&1 || echo "warning: could not remove network ${CREATED_NET[i]}" >&2
        done
    fi
    [ -n "$DAEMON_PID" ] && stop_pid "$DAEMON_PID"
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 3 ] && [ -s "$DLOG" ]; then
        echo "---- last lines of $(basename "$DLOG") ----" >&2
        tail -n 20 "$DLOG" >&2
    fi
    # Deleting a namespace deletes its veths, bridge, TAPs and iptables
    # rules (and with the uplink, any XDP program still attached to it).
    for ((i = ${#CREATED_NS[@]} - 1; i >= 0; i--)); do
        ip netns del "${CREATED_NS[i]}" 2>/dev/null || echo "warning: could not delete namespace ${CREATED_NS[i]}" >&2
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

add_ns() {
    ip netns add "$1"
    CREATED_NS+=("$1")
    ip -n "$1" link set lo up
}

start_daemon() {
    mkdir -m 0700 "$STATE"
    # nsenter execs the daemon (no fork: $! is its PID) in the host
    # namespace's network namespace and keeps the root mount namespace, so
    # its XDP program is pinned in the real bpffs. setsid: a Ctrl-C on the
    # terminal must not reach the daemon before cleanup has removed the
    # endpoint through it. --detach-on-exit: a clean stop leaves no XDP
    # program behind.
    setsid nsenter --net="/run/netns/$NS_VH" "$VSWITCHD" --state-dir "$STATE" --socket "$SOCK" \
        --log-level warn --detach-on-exit \
        --conntrack-max "$CT_MAX" --conntrack-max-per-port "$CT_MAX" >"$DLOG" 2>&1 </dev/null &
    DAEMON_PID=$!
    local deadline=$((SECONDS + 15))
    until kill -0 "$DAEMON_PID" 2>/dev/null && ctl network ls >/dev/null 2>&1; do
        kill -0 "$DAEMON_PID" 2>/dev/null || die "vswitchd exited during start: $(tail -n 5 "$DLOG")"
        [ "$SECONDS" -lt "$deadline" ] || die "vswitchd did not answer on $SOCK within 15 s"
        sleep 0.05
    done
}

# ------------------------------------------------- the connection tool ----

CONNRATE="$WORK/connrate"
cat >"$WORK/connrate.c" <<'CEOF'
/* connrate server ADDR PORT: accept, echo one byte, close, forever.
 * connrate client ADDR PORT SECONDS: connect, one byte each way, close with
 * a reset (SO_LINGER 0: no TIME_WAIT, so source ports never run out), in a
 * loop for SECONDS; prints {"connections": N, "failures": N, "seconds": S}.
 * A connection that does not complete within 1 s counts as a failure. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    struct sockaddr_in sa;
    struct timeval tv = { 1, 0 };
    char byte = 'x';
    int one = 1;

    if (argc < 4 || (strcmp(argv[1], "client") == 0 && argc < 5)) {
        fprintf(stderr, "usage: connrate server ADDR PORT | client ADDR PORT SECONDS\n");
        return 2;
    }
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)atoi(argv[3]));
    if (inet_pton(AF_INET, argv[2], &sa.sin_addr) != 1) {
        fprintf(stderr, "connrate: bad IPv4 address %s\n", argv[2]);
        return 2;
    }
    if (strcmp(argv[1], "server") == 0) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(s, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(s, 4096) != 0) {
            perror("connrate: bind/listen");
            return 1;
        }
        for (;;) {
            int c = accept(s, NULL, NULL);
            if (c < 0)
                continue;
            setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
            if (read(c, &byte, 1) == 1 && write(c, &byte, 1) != 1)
                perror("connrate: write");
            close(c);
        }
    }
    {
        struct linger lg = { 1, 0 };
        double start = now(), end = start + atof(argv[4]);
        long ok = 0, failed = 0;
        while (now() < end) {
            int s = socket(AF_INET, SOCK_STREAM, 0);
            if (s < 0) {
                perror("connrate: socket");
                return 1;
            }
            /* SO_SNDTIMEO bounds connect() too. */
            setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
            setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
            setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
            if (connect(s, (struct sockaddr *)&sa, sizeof sa) == 0 && write(s, &byte, 1) == 1 &&
                read(s, &byte, 1) == 1)
                ok++;
            else
                failed++;
            close(s);
        }
        printf("{\"connections\": %ld, \"failures\": %ld, \"seconds\": %.3f}\n", ok, failed,
               now() - start);
    }
    return 0;
}
CEOF
cc -O2 -Wall -Werror -o "$CONNRATE" "$WORK/connrate.c" || die "cannot build the connection-rate tool"

# ------------------------------------------------------------ readiness ----

start_servers() {
    local ns=$1 pid deadline
    ip netns exec "$ns" iperf3 -s -p 5201 -B "$IP_OUT" >"$WORK/iperf3-$ns.log" 2>&1 </dev/null &
    SERVER_PIDS+=($!)
    ip netns exec "$ns" "$CONNRATE" server "$IP_OUT" 7000 >"$WORK/connrate-$ns.log" 2>&1 </dev/null &
    SERVER_PIDS+=($!)
    pid=$!
    deadline=$((SECONDS + 10))
    until [ -n "$(ip netns exec "$ns" ss -Hltn 'sport = :5201')" ] && [ -n "$(ip netns exec "$ns" ss -Hltn 'sport = :7000')" ]; do
        kill -0 "$pid" 2>/dev/null || die "connection server in $ns exited: $(cat "$WORK/connrate-$ns.log")"
        [ "$SECONDS" -lt "$deadline" ] || die "servers in $ns not listening within 10 s"
        sleep 0.05
    done
}

# Waits until NS reaches the outside machine: the first packet towards a
# next hop not resolved yet may be dropped while the kernel resolves it.
wait_path() {
    local ns=$1 deadline=$((SECONDS + 10))
    until ip netns exec "$ns" ping -c 1 -W 1 -q "$IP_OUT" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || die "$ns cannot reach $IP_OUT within 10 s"
        sleep 0.1
    done
}

# Checks that the outside machine sees the endpoint of NS as the uplink's
# address: its answer to a TCP connection names the peer.
check_translated() {
    local ns=$1 onns=$2 seen
    ip netns exec "$onns" python3 -c '
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7001)); s.listen(1); s.settimeout(10)
c, peer = s.accept(); c.sendall(peer[0].encode()); c.close()' "$IP_OUT" >"$WORK/peer-$ns" 2>&1 &
    local srv=$! deadline=$((SECONDS + 10))
    until [ -n "$(ip netns exec "$onns" ss -Hltn 'sport = :7001')" ]; do
        [ "$SECONDS" -lt "$deadline" ] || die "peer check server in $onns did not start"
        sleep 0.05
    done
    seen=$(ip netns exec "$ns" python3 -c '
import socket, sys
s = socket.create_connection((sys.argv[1], 7001), timeout=5); print(s.recv(64).decode())' "$IP_OUT") ||
        die "$ns cannot open a TCP connection to $IP_OUT"
    wait "$srv" 2>/dev/null || true
    [ "$seen" = "$IP_UP" ] || die "the outside machine saw $ns's connection from '$seen', not the uplink's $IP_UP"
}

# ---------------------------------------------------------- measurement ----

CLK_TCK=$(getconf CLK_TCK)
daemon_ticks() {
    local stat
    stat=$(cat "/proc/$DAEMON_PID/stat" 2>/dev/null) || die "vswitchd (pid $DAEMON_PID) is no longer running"
    awk '{ print $14 + $15 }' <<<"$stat"
}

# run_tcp NAME CLIENT_NS ROUND [iperf3 args]: iperf3 into
# $WORK/NAME.ROUND.json, vswitchd's CPU ticks during it into
# $WORK/NAME.ROUND.cpu.
run_tcp() {
    local name=$1 ns=$2 round=$3 out="$WORK/$1.$3.json" t0 t1
    shift 3
    t0=$(daemon_ticks)
    if ! timeout --foreground $((DURATION + OMIT + 30)) ip netns exec "$ns" \
        iperf3 -c "$IP_OUT" -p 5201 -t "$DURATION" -O "$OMIT" -J "$@" >"$out" 2>"$WORK/$name.$round.err"; then
        die "iperf3 $name (round $round) failed: $(python3 -c 'import json,sys
try: print(json.load(open(sys.argv[1])).get("error","no error in JSON"))
except Exception: print(open(sys.argv[2]).read().strip() or "no output")' "$out" "$WORK/$name.$round.err")"
    fi
    t1=$(daemon_ticks)
    echo "$((t1 - t0))" >"$WORK/$name.$round.cpu"
}

# run_conn NAME CLIENT_NS ROUND: connection rate into $WORK/NAME.ROUND.conn.
run_conn() {
    local name=$1 ns=$2 round=$3 t0 t1
    t0=$(daemon_ticks)
    timeout --foreground $((CONN_DURATION + 30)) ip netns exec "$ns" \
        "$CONNRATE" client "$IP_OUT" 7000 "$CONN_DURATION" >"$WORK/$name.$round.conn" 2>"$WORK/$name.$round.connerr" ||
        die "connection test $name (round $round) failed: $(cat "$WORK/$name.$round.connerr")"
    t1=$(daemon_ticks)
    echo "$((t1 - t0))" >"$WORK/$name.$round.conncpu"
}

say "running: ${DURATION}s per iperf3 test, ${CONN_DURATION}s per connection test, $REPEAT round(s)$([ "$SMOKE" -eq 1 ] && echo ', smoke')"

# ------------------------------------------------------------- topology ----

# wire HOST_NS UPLINK OUT_NS: the host's uplink and the outside machine.
wire() {
    local host=$1 up=$2 out=$3
    add_ns "$out"
    ip -n "$host" link add "$up" type veth peer name eth0 netns "$out"
    ip -n "$host" addr add "$IP_UP/24" dev "$up"
    ip -n "$host" link set "$up" up
    ip -n "$out" addr add "$IP_OUT/24" dev eth0
    ip -n "$out" link set eth0 up
    ip -n "$host" route add default via "$IP_OUT"
}

say "masq path: $NS_ME ($IP_EP) <-> br0 ($GATEWAY, MASQUERADE) in $NS_MH <-> $UP_M ($IP_UP) <-> $NS_MO ($IP_OUT)"
add_ns "$NS_MH"
wire "$NS_MH" "$UP_M" "$NS_MO"
ip -n "$NS_MH" link add br0 type bridge
ip -n "$NS_MH" addr add "$GATEWAY/24" dev br0
ip -n "$NS_MH" link set br0 up
add_ns "$NS_ME"
ip -n "$NS_MH" link add pe type veth peer name eth0 netns "$NS_ME"
ip -n "$NS_MH" link set pe master br0 up
ip -n "$NS_ME" addr add "$IP_EP/24" dev eth0
ip -n "$NS_ME" link set eth0 up
ip -n "$NS_ME" route add default via "$GATEWAY"
ip netns exec "$NS_MH" sysctl -q -w net.ipv4.ip_forward=1
ip netns exec "$NS_MH" iptables -t nat -A POSTROUTING -s "$SUBNET" ! -o br0 -j MASQUERADE ||
    die "iptables MASQUERADE in $NS_MH failed (a kernel without nf_nat or nf_tables?)"

say "vswitch path: $NS_VE ($IP_EP, TAP) <-> vswitchd -d nat in $NS_VH <-> $UP_V ($IP_UP) <-> $NS_VO ($IP_OUT)"
add_ns "$NS_VH"
wire "$NS_VH" "$UP_V" "$NS_VO"
NET_ARGS=()
if [ -n "$NAT_PORTS" ]; then
    # The pool must not overlap the host's ephemeral ports: move those up.
    ip netns exec "$NS_VH" sysctl -q -w net.ipv4.ip_local_port_range="61000 65535"
    NET_ARGS=(-o "nat_ports=$NAT_PORTS")
fi
say "starting a private vswitchd in $NS_VH (state and socket in $WORK)"
start_daemon
ctl network create -d nat --subnet "$SUBNET" --gateway "$GATEWAY" -o interface="$UP_V" "${NET_ARGS[@]}" "$NET" >/dev/null
CREATED_NET+=("$NET")
add_ns "$NS_VE"
ctl endpoint create --network "$NET" --netns "$NS_VE" --ip "$IP_EP" "$EP" >/dev/null
CREATED_EP+=("$EP")
POOL=$(ctl network inspect "$NET" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["Options"].get("nat_ports", "default"))')

for pair in "$NS_ME:$NS_MO" "$NS_VE:$NS_VO"; do
    ep_ns=${pair%%:*} out_ns=${pair##*:}
    start_servers "$out_ns"
    wait_path "$ep_ns"
    check_translated "$ep_ns" "$out_ns"
done
say "both endpoints reach $IP_OUT as $IP_UP"

# ------------------------------------------------------------------ run ----

PATHS=(masq vswitch)
declare -A CLIENT_NS=([masq]="$NS_ME" [vswitch]="$NS_VE")
for ((r = 1; r <= REPEAT; r++)); do
    # Interleaved rounds spread any drift of the machine over both paths.
    for path in "${PATHS[@]}"; do
        run_tcp "$path" "${CLIENT_NS[$path]}" "$r"
        run_tcp "${path}_rev" "${CLIENT_NS[$path]}" "$r" -R
        run_conn "$path" "${CLIENT_NS[$path]}" "$r"
    done
    say "round $r/$REPEAT done"
done

ctl stats --json >"$WORK/stats.json"
ip netns exec "$NS_MH" iptables -t nat -L POSTROUTING -v -n -x >"$WORK/masq-rule.txt" 2>&1 || true

# -------------------------------------------------------------- report ----

set +e
python3 - "$WORK" "$REPEAT" "$DURATION" "$OMIT" "$CONN_DURATION" "$CLK_TCK" "$SMOKE" "$ENFORCE" \
    "$NET" "$POOL" <<'PYEOF'
import json, statistics, sys

(work, repeat, duration, omit, conn_duration, clk_tck, smoke, enforce, net, pool) = sys.argv[1:]
repeat, duration, omit, conn_duration = int(repeat), int(duration), int(omit), int(conn_duration)
clk_tck = int(clk_tck)
smoke, enforce = smoke == "1", enforce == "1"

def median(xs):
    return statistics.median(xs) if xs else 0.0

def tcp(name):
    gbps, retr, cpu = [], [], []
    for r in range(1, repeat + 1):
        with open(f"{work}/{name}.{r}.json") as f:
            end = json.load(f)["end"]
        gbps.append(end["sum_received"]["bits_per_second"] / 1e9)
        retr.append(end["sum_sent"].get("retransmits", 0))
        with open(f"{work}/{name}.{r}.cpu") as f:
            cpu.append(int(f.read()) / clk_tck)
    return median(gbps), median(retr), median(cpu)

def conn(name):
    cps, fails, cpu = [], [], []
    for r in range(1, repeat + 1):
        with open(f"{work}/{name}.{r}.conn") as f:
            c = json.load(f)
        cps.append(c["connections"] / c["seconds"])
        fails.append(c["failures"])
        with open(f"{work}/{name}.{r}.conncpu") as f:
            cpu.append(int(f.read()) / clk_tck)
    return median(cps), sum(fails), median(cpu)

res = {}
for path in ("masq", "vswitch"):
    gbps, retr, cpu = tcp(path)
    rev, rev_retr, _ = tcp(f"{path}_rev")
    cps, fails, conn_cpu = conn(path)
    res[path] = {"gbps": gbps, "retr": retr, "cpu": cpu, "rev": rev, "rev_retr": rev_retr,
                 "cps": cps, "fails": fails, "conn_cpu": conn_cpu}

with open(f"{work}/stats.json") as f:
    stats = json.load(f)
drops = {}
for p in stats:
    if p.get("Network") == net:
        for reason, n in p.get("Drops", {}).items():
            if n:
                drops[reason] = drops.get(reason, 0) + n

def ratio(a, b):
    return a / b if b > 0 else 0.0

m, v = res["masq"], res["vswitch"]
secs = duration + omit
print()
print(f"endpoint -> outside through a translating host: iperf3 TCP {duration} s"
      f"{' (+1 s omitted)' if omit else ''}, new TCP connections for {conn_duration} s, median of {repeat}")
print(f"{'path':<26} {'Gbit/s':>7} {'ratio':>6} {'retrans':>8} {'-R Gbit/s':>10} {'ratio':>6} "
      f"{'conn/s':>8} {'ratio':>6} {'failed':>7} {'vswitchd CPU (TCP)':>19}")
labels = {"masq": "linux bridge + MASQUERADE", "vswitch": "vswitch -d nat"}
for name in ("masq", "vswitch"):
    r = res[name]
    cpu = "-" if name == "masq" else f"{r['cpu']:6.2f} s ({100 * r['cpu'] / secs:3.0f}%)"
    print(f"{labels[name]:<26} {r['gbps']:7.2f} {ratio(r['gbps'], m['gbps']):6.2f} {r['retr']:8.0f} "
          f"{r['rev']:10.2f} {ratio(r['rev'], m['rev']):6.2f} {r['cps']:8.0f} {ratio(r['cps'], m['cps']):6.2f} "
          f"{r['fails']:7d} {cpu:>19}")
print("(ratio: to the MASQUERADE path; -R: outside -> endpoint; vswitchd CPU: its user+system time "
      "during the endpoint -> outside iperf3 test, % of one core)")
print(f"vswitch NAT pool: {pool}; drops on the nat network: "
      + (", ".join(f"{k} {n}" for k, n in sorted(drops.items())) or "none"))

targets = [
    ("tcp_ratio", "vswitch / MASQUERADE, TCP", ratio(v["gbps"], m["gbps"]), 0.8),
    ("conn_ratio", "vswitch / MASQUERADE, conn/s", ratio(v["cps"], m["cps"]), 0.5),
]
print()
met = True
for key, what, value, target in targets:
    ok = value >= target
    met = met and ok
    print(f"{what:<32} {value:5.2f}  (target >= {target:.2f})  {'ok' if ok else 'BELOW'}")
print()

failed = []
if not smoke:
    for name, r in res.items():
        if r["gbps"] <= 0 or r["rev"] <= 0:
            failed.append(f"{labels[name]} moved no TCP data")
        if r["cps"] <= 0:
            failed.append(f"{labels[name]} completed no connection")
    if enforce and not met:
        failed.append("a ratio is below its target (--enforce)")
for msg in failed:
    print(f"FAIL: {msg}", file=sys.stderr)

out = {}
for name, r in res.items():
    out[f"{name}_gbps"] = round(r["gbps"], 3)
    out[f"{name}_rev_gbps"] = round(r["rev"], 3)
    out[f"{name}_retransmits"] = r["retr"]
    out[f"{name}_cps"] = round(r["cps"])
    out[f"{name}_conn_failures"] = r["fails"]
out["vswitch_cpu_s"] = round(v["cpu"], 2)
out["vswitch_conn_cpu_s"] = round(v["conn_cpu"], 2)
for key, _, value, _ in targets:
    out[key] = round(value, 3)
out["rev_ratio"] = round(ratio(v["rev"], m["rev"]), 3)
out["targets_met"] = met
out["nat_pool"] = pool
out["vswitch_drops"] = drops
out.update({"duration_s": duration, "conn_duration_s": conn_duration, "repeat": repeat, "smoke": smoke})
print(json.dumps(out))
sys.exit(3 if failed else 0)
PYEOF
report_rc=$?
set -e
[ "$report_rc" -eq 0 ] || exit "$report_rc"
