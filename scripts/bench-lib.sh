# The machinery the bench-*.sh scripts share: their tools, the record of what
# a run creates and its removal, a private vswitchd's start, servers, and the
# timed iperf3 and connection-rate tests. Source it; do not run it. It
# sources lib.sh.
#
# A script calls bench_init once it has parsed its arguments; from then on
# whatever it creates and records in CREATED_NS, CREATED_EP, CREATED_NET,
# SERVER_PIDS and DAEMON_PID is removed on exit, failure or Ctrl-C.
# run_iperf reads DURATION and OMIT, run_conn CONN_DURATION.
# shellcheck shell=bash

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# ---------------------------------------------------------------- tools ----

# Installs a Debian package only when the command it provides is missing.
need_cmd() {
    local cmd=$1 pkg=$2
    command -v "$cmd" >/dev/null 2>&1 && return
    say "installing $pkg (for $cmd)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "$pkg" >/dev/null
    command -v "$cmd" >/dev/null 2>&1 || die "$cmd still missing after installing $pkg"
}

# The tools every benchmark runs: iperf3, ip and ss, python3 (for the
# reports), setsid and timeout.
need_bench_tools() {
    need_cmd iperf3 iperf3
    need_cmd ip iproute2
    need_cmd ss iproute2
    need_cmd python3 python3
    need_cmd setsid util-linux
    need_cmd timeout coreutils
}

# ensure_binaries FORCE: builds vswitchd and vswitchctl when FORCE is 1 or
# either is missing.
ensure_binaries() {
    [ "$1" -eq 1 ] || [ ! -x "$VSWITCHD" ] || [ ! -x "$VSWITCHCTL" ] || return 0
    command -v cargo >/dev/null || export PATH="$HOME/.cargo/bin:$PATH"
    command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain or build the binaries first"
    say "building release binaries (cargo build --release --workspace in $REPO)"
    # Unset CARGO_TARGET_DIR so the binaries land in $REPO/target/release,
    # where lib.sh looks for them.
    (cd "$REPO" && env -u CARGO_TARGET_DIR cargo build --release --workspace --quiet)
    { [ -x "$VSWITCHD" ] && [ -x "$VSWITCHCTL" ]; } || die "build finished but $VSWITCHD or $VSWITCHCTL is missing"
}

# ---------------------------------------------------- state and cleanup ----

# Everything below is recorded right after it is created, and only what is
# recorded is removed.
CREATED_NS=()
CREATED_EP=()
CREATED_NET=()
SERVER_PIDS=()
DAEMON_PID=""
# Logs whose last lines a failed run shows (bench_init adds DLOG).
DAEMON_LOGS=()
# A function cleanup runs after the endpoints and networks of DAEMON_PID are
# removed and before it is stopped: what a script has beyond them.
CLEANUP_EXTRA=""
CLEANED=0

# bench_init PREFIX NAME: names of the run start with P=PREFIX<PID>; its
# files live in a new directory WORK (NAME-<PID>.XXXXXX under TMPDIR), with
# the state dir, socket and log of its vswitchd (STATE, SOCK, DLOG). Installs
# cleanup for exit, failure and Ctrl-C.
bench_init() {
    P="$1$$"
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/$2-$$.XXXXXX")
    SOCK="$WORK/vswitchd.sock"
    STATE="$WORK/state"
    DLOG="$WORK/vswitchd.log"
    DAEMON_LOGS+=("$DLOG")
    trap cleanup EXIT
    # Exiting from the signal trap runs the EXIT trap, so cleanup happens once.
    trap 'exit 130' INT
    trap 'exit 143' TERM HUP
}

ctl() { "$VSWITCHCTL" --socket "$SOCK" "$@"; }

# Sends SIGTERM to PID, waits up to 5 s for it to exit, then SIGKILLs it.
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
    # The daemon's kernel fast path outlives it by design (pinned); a
    # benchmark's daemon is gone for good, so its pins go too.
    local pins=""
    if [ -n "$DAEMON_PID" ] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        pins=$(ctl datapath show --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["PinDir"])' 2>/dev/null)
        for ((i = ${#CREATED_EP[@]} - 1; i >= 0; i--)); do
            ctl endpoint rm "${CREATED_EP[i]}" >/dev/null 2>&1 || echo "warning: could not remove endpoint ${CREATED_EP[i]}" >&2
        done
        for ((i = ${#CREATED_NET[@]} - 1; i >= 0; i--)); do
            ctl network rm "${CREATED_NET[i]}" >/dev/null 2>&1 || echo "warning: could not remove network ${CREATED_NET[i]}" >&2
        done
    fi
    [ -z "$CLEANUP_EXTRA" ] || "$CLEANUP_EXTRA"
    [ -n "$DAEMON_PID" ] && stop_pid "$DAEMON_PID"
    case "$pins" in /sys/fs/bpf/vswitch/fastpath-*) rm -rf "$pins" ;; esac
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 3 ]; then
        for i in "${DAEMON_LOGS[@]}"; do
            [ -s "$i" ] || continue
            echo "---- last lines of $(basename "$i") ----" >&2
            tail -n 20 "$i" >&2
        done
    fi
    # Deleting a namespace deletes what is in it: veths, bridges, TAPs,
    # iptables rules (and with an uplink veth, any XDP program still
    # attached to it).
    for ((i = ${#CREATED_NS[@]} - 1; i >= 0; i--)); do
        ip netns del "${CREATED_NS[i]}" 2>/dev/null || echo "warning: could not delete namespace ${CREATED_NS[i]}" >&2
    done
    rm -rf "$WORK"
}

add_ns() {
    ip netns add "$1"
    CREATED_NS+=("$1")
    ip -n "$1" link set lo up
}

# wait_daemon PID SOCKET [LOG]: waits up to 15 s until the vswitchd PID
# answers on SOCKET; dies if it exits first, quoting LOG's last lines when
# given.
wait_daemon() {
    local pid=$1 sock=$2 log=${3:-} deadline=$((SECONDS + 15))
    until kill -0 "$pid" 2>/dev/null && "$VSWITCHCTL" --socket "$sock" network ls >/dev/null 2>&1; do
        kill -0 "$pid" 2>/dev/null || die "vswitchd exited during start${log:+: $(tail -n 5 "$log")}"
        [ "$SECONDS" -lt "$deadline" ] || die "vswitchd did not answer on $sock within 15 s"
        sleep 0.05
    done
}

# start_vswitchd NS [VSWITCHD_ARG...]: a private vswitchd (STATE, SOCK,
# DLOG) in network namespace NS, its PID in DAEMON_PID, once it answers.
# nsenter execs the daemon (no fork: $! is its PID) and keeps the root mount
# namespace, so its eBPF objects are pinned in the real bpffs (ip netns exec
# would mount a sysfs without it). setsid: a Ctrl-C on the terminal must not
# reach the daemon before cleanup has removed the endpoints through it.
# --detach-on-exit: a clean stop leaves no XDP program on an uplink.
start_vswitchd() {
    local ns=$1
    shift
    mkdir -m 0700 "$STATE"
    setsid nsenter --net="/run/netns/$ns" "$VSWITCHD" --state-dir "$STATE" --socket "$SOCK" \
        --log-level warn --detach-on-exit "$@" >"$DLOG" 2>&1 </dev/null &
    DAEMON_PID=$!
    wait_daemon "$DAEMON_PID" "$SOCK" "$DLOG"
}

# ------------------------------------------------- the connection tool ----

# Builds scripts/connrate.c into CONNRATE (in WORK).
build_connrate() {
    CONNRATE="$WORK/connrate"
    cc -O2 -Wall -Werror -o "$CONNRATE" "$REPO/scripts/connrate.c" || die "cannot build the connection-rate tool"
}

# ------------------------------------------------------------ readiness ----

# start_servers NS ADDR [IPERF3_ARG...]: an iperf3 server on 5201 and a
# connection server on ADDR:7000 in NS, once both listen.
start_servers() {
    local ns=$1 addr=$2
    shift 2
    ip netns exec "$ns" iperf3 -s -p 5201 "$@" >"$WORK/iperf3-$ns.log" 2>&1 </dev/null &
    SERVER_PIDS+=($!)
    wait_listening "$ns" -Hltn 5201 "$!" "$WORK/iperf3-$ns.log" "iperf3 server"
    ip netns exec "$ns" "$CONNRATE" server "$addr" 7000 >"$WORK/connrate-$ns.log" 2>&1 </dev/null &
    SERVER_PIDS+=($!)
    wait_listening "$ns" -Hltn 7000 "$!" "$WORK/connrate-$ns.log" "connection server"
}

# wait_listening NS SS_FLAGS PORT PID LOG WHAT: waits up to 10 s until a
# socket of NS listens on PORT (ss SS_FLAGS: -Hltn TCP, -Hlun UDP); dies,
# quoting LOG, if WHAT (process PID) exits first.
wait_listening() {
    local ns=$1 flags=$2 port=$3 pid=$4 log=$5 what=$6 deadline=$((SECONDS + 10))
    until [ -n "$(ip netns exec "$ns" ss "$flags" "sport = :$port" 2>/dev/null)" ]; do
        kill -0 "$pid" 2>/dev/null || die "$what in $ns exited: $(cat "$log")"
        [ "$SECONDS" -lt "$deadline" ] || die "$what in $ns not listening on $port within 10 s"
        sleep 0.05
    done
}

# Waits until NS reaches ADDR (links up, ARP answered, path forwarding): the
# first packet towards a next hop not resolved yet may be dropped while the
# kernel resolves it.
wait_path() {
    local ns=$1 addr=$2 deadline=$((SECONDS + 10))
    until ip netns exec "$ns" ping -c 1 -W 1 -q "$addr" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || die "$ns cannot reach $addr within 10 s"
        sleep 0.1
    done
}

# ---------------------------------------------------------- measurement ----

CLK_TCK=$(getconf CLK_TCK)
# daemon_ticks "PID [PID...]": utime + stime of the daemons, all threads, in
# clock ticks, added up (an overlay has a vswitchd on each host). The command
# name is "(vswitchd)" without spaces, so the fields can be split on
# whitespace. Called in $(...): die prints its message, the failed
# assignment then stops the script through set -e.
daemon_ticks() {
    local pid stat sum=0
    for pid in $1; do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || die "vswitchd (pid $pid) is no longer running"
        sum=$((sum + $(awk '{ print $14 + $15 }' <<<"$stat")))
    done
    echo "$sum"
}

# run_iperf NAME CLIENT_NS SERVER_ADDR ROUND DAEMON_PID [IPERF3_ARG...]: one
# iperf3 test of DURATION s (-R: the server sends); writes
# $WORK/NAME.ROUND.json and $WORK/NAME.ROUND.cpu (CPU ticks of the vswitchd
# DAEMON_PID, or of the space-separated PIDs, during the test).
run_iperf() {
    local name=$1 ns=$2 addr=$3 round=$4 dpid=$5 out="$WORK/$1.$4.json" t0 t1
    shift 5
    t0=$(daemon_ticks "$dpid")
    # --foreground: iperf3 stays in our process group, so a Ctrl-C stops the
    # test at once instead of after it.
    if ! timeout --foreground $((DURATION + OMIT + 30)) ip netns exec "$ns" \
        iperf3 -c "$addr" -p 5201 -t "$DURATION" -O "$OMIT" -J "$@" >"$out" 2>"$WORK/$name.$round.err"; then
        die "iperf3 $name (round $round) failed: $(python3 -c 'import json,sys
try: print(json.load(open(sys.argv[1])).get("error","no error in JSON"))
except Exception: print(open(sys.argv[2]).read().strip() or "no output")' "$out" "$WORK/$name.$round.err")"
    fi
    t1=$(daemon_ticks "$dpid")
    echo "$((t1 - t0))" >"$WORK/$name.$round.cpu"
}

# run_conn NAME CLIENT_NS SERVER_ADDR ROUND DAEMON_PID: CONN_DURATION s of
# new connections to a connection server on SERVER_ADDR:7000; writes
# $WORK/NAME.ROUND.conn and $WORK/NAME.ROUND.conncpu (CPU ticks of the
# vswitchd DAEMON_PID during the test).
run_conn() {
    local name=$1 ns=$2 addr=$3 round=$4 dpid=$5 t0 t1
    t0=$(daemon_ticks "$dpid")
    timeout --foreground $((CONN_DURATION + 30)) ip netns exec "$ns" \
        "$CONNRATE" client "$addr" 7000 "$CONN_DURATION" >"$WORK/$name.$round.conn" 2>"$WORK/$name.$round.connerr" ||
        die "connection test $name (round $round) failed: $(cat "$WORK/$name.$round.connerr")"
    t1=$(daemon_ticks "$dpid")
    echo "$((t1 - t0))" >"$WORK/$name.$round.conncpu"
}

# The request/response and packet-rate tests below need sockperf and
# trafgen: need_cmd sockperf sockperf; need_cmd trafgen netsniff-ng.

# start_sockperf NS ADDR: a sockperf UDP server on ADDR:11111 in NS, once it
# listens.
start_sockperf() {
    local ns=$1 addr=$2
    ip netns exec "$ns" sockperf server -i "$addr" -p 11111 >"$WORK/sockperf-$ns.log" 2>&1 </dev/null &
    SERVER_PIDS+=($!)
    wait_listening "$ns" -Hlun 11111 "$!" "$WORK/sockperf-$ns.log" "sockperf server"
}

# run_latency NAME CLIENT_NS SERVER_ADDR ROUND: DURATION s of UDP ping-pong
# (one 14-byte request in flight, full round trips) against a start_sockperf
# server; writes sockperf's report to $WORK/NAME.ROUND.lat.
run_latency() {
    local name=$1 ns=$2 addr=$3 round=$4 out="$WORK/$1.$4.lat"
    timeout --foreground $((DURATION + 30)) ip netns exec "$ns" \
        sockperf ping-pong -i "$addr" -p 11111 -t "$DURATION" --full-rtt >"$out" 2>&1 ||
        die "sockperf $name (round $round) failed: $(tail -n 3 "$out")"
    grep -q 'percentile 50.000' "$out" || die "sockperf $name (round $round) reported no round trips: $(tail -n 3 "$out")"
}

# link_packets NS DIR: DIR (rx or tx) packets of eth0 in NS.
link_packets() {
    ip -n "$1" -j -s link show eth0 | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["stats64"][sys.argv[1]]["packets"])' "$2"
}

# drop_udp_sink NS: UDP to port 9 (the packet-rate test's) is dropped in NS
# on arrival, before routing: the receiver's own socket lookup and ICMP
# errors are not what the test measures. Goes with the namespace.
drop_udp_sink() {
    ip netns exec "$1" iptables -t raw -A PREROUTING -p udp --dport 9 -j DROP ||
        die "iptables raw rule in $1 failed"
}

# run_pps NAME TX_NS RX_NS DST_ADDR ROUND: DURATION s of 64-byte frames
# (UDP, 18 bytes of payload, one flow to DST_ADDR port 9) from trafgen on
# eth0 of TX_NS, one process on one core, to eth0's next hop; counts what
# eth0 of RX_NS received. Writes {"tx": N, "rx": N, "seconds": S} to
# $WORK/NAME.ROUND.pps. Call it after wait_path, so the next hop is resolved.
run_pps() {
    local name=$1 tx=$2 rx=$3 dst=$4 round=$5 cfg="$WORK/$1.trafgen" smac dmac src hop rc=0
    local rx0 tx0 rx1 tx1 t0 t1
    smac=$(ip -n "$tx" -j link show eth0 | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["address"])')
    read -r src hop < <(ip -n "$tx" -j route get "$dst" | python3 -c 'import json,sys
r = json.load(sys.stdin)[0]; print(r["prefsrc"], r.get("gateway", r["dst"]))')
    ip netns exec "$tx" ping -c 1 -W 1 -q "$dst" >/dev/null 2>&1 || true
    dmac=$(ip -n "$tx" -j neigh show "$hop" dev eth0 | python3 -c 'import json,sys
n = json.load(sys.stdin); print(n[0].get("lladdr", "") if n else "")')
    [ -n "$dmac" ] || die "pps $name: no neighbour entry for $hop in $tx"
    printf '{ eth(da=%s, sa=%s, type=0x0800), ipv4(saddr=%s, daddr=%s, ttl=64, df), udp(sport=4000, dport=9), fill(0x00, 18) }\n' \
        "$dmac" "$smac" "$src" "$dst" >"$cfg"
    rx0=$(link_packets "$rx" rx) tx0=$(link_packets "$tx" tx) t0=$(date +%s.%N)
    # -Q and --no-sock-mem: trafgen leaves IRQ affinity and the core socket
    # buffer sysctls of the machine alone.
    timeout --preserve-status -s INT "$DURATION" ip netns exec "$tx" \
        trafgen --no-sock-mem -Q -C -P 1 -o eth0 -i "$cfg" >"$WORK/$name.$round.trafgen.log" 2>&1 || rc=$?
    t1=$(date +%s.%N)
    [ "$rc" -eq 0 ] || [ "$rc" -eq 130 ] || die "trafgen $name (round $round) failed: $(tail -n 3 "$WORK/$name.$round.trafgen.log")"
    # What is still queued inside the switch arrives, then counts.
    sleep 0.3
    rx1=$(link_packets "$rx" rx) tx1=$(link_packets "$tx" tx)
    printf '{"tx": %s, "rx": %s, "seconds": %s}\n' "$((tx1 - tx0))" "$((rx1 - rx0))" \
        "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')" >"$WORK/$name.$round.pps"
}

# --------------------------------------------------------------- report ----

# report ARG...: runs the python3 program on stdin with ARGs, with
# scripts/bench_report.py importable (and no bytecode written beside it).
report() {
    PYTHONPATH="$REPO/scripts${PYTHONPATH:+:$PYTHONPATH}" PYTHONDONTWRITEBYTECODE=1 python3 - "$@"
}
