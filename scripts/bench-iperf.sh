#!/usr/bin/env bash
# iperf3 TCP through vswitch and through a Linux bridge, in one run, on the
# same topology shape, reported as ratios. Two comparisons:
#
# TAP (namespace to namespace, one switch between them):
#   bridge              two veth pairs into a Linux bridge (in a namespace of
#                       its own, so nothing is added to the root namespace)
#   vswitch             two vswitch TAP endpoints on a private network with the
#                       default options (IFF_VNET_HDR: TSO/checksum offload on)
#   vswitch-nooffload   the same with -o offload=off (MTU-sized frames, no GSO)
#
# Uplink (endpoint to an "outside" namespace, through one veth, the uplink):
#   bridge              the uplink and the endpoint's veth in a Linux bridge
#                       (the classic equivalent of l2bridge/transparent)
#   l2bridge            the same uplink attached by vswitch (its default I/O
#                       for a veth uplink: TC steering to a punt TAP),
#                       -d l2bridge, the endpoint a TAP
#   transparent         the same with -d transparent
#   veth                -d transparent, the endpoint a veth (--backend veth:
#                       the kernel fast path delivers to it)
#
# Prints a table per comparison (Gbit/s, ratio to the bridge, vswitchd CPU
# time) and, as the last line of stdout, one JSON object for scripts.
# Everything it creates has $$ in its name and is removed on exit, failure
# or Ctrl-C.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/bench-iperf.sh [--tap | --uplink] [--duration N] [--repeat N]
                              [--streams N] [--smoke] [--min-ratio R] [--build]

Measures iperf3 TCP throughput through vswitch against a Linux bridge, in the
same run, and reports vswitch/bridge ratios. Needs root. By default runs both
comparisons:
  TAP     namespace to namespace: Linux bridge, vswitch (TAP offloads on),
          vswitch with -o offload=off
  uplink  endpoint namespace to an outside namespace through one veth: Linux
          bridge with the veth enslaved, vswitch -d l2bridge and -d transparent
          with -o interface=<the veth> (TAP endpoints), and -d transparent
          with a veth endpoint

Options:
  --tap          run only the TAP comparison
  --uplink       run only the uplink comparison
  --duration N   seconds per iperf3 test (default 10; the first second is
                 omitted from the result as TCP warm-up when N >= 5)
  --repeat N     run each path N times, interleaved, and report the median
                 (default 1)
  --streams N    parallel TCP streams, iperf3 -P (default 1)
  --smoke        2-second tests and no thresholds: checks that the benchmark
                 itself works (for CI)
  --min-ratio R  fail (exit 3) when TAP vswitch/bridge with offloads is below
                 R (default 0.10; ignored with --smoke and --uplink)
  --build        run 'cargo build --release --workspace' even when the
                 binaries exist (default: only when they are missing)
  -h, --help     show this help

Output: a table per comparison on stdout, then one JSON line, e.g.
  {"bridge_gbps": 16.6, "vswitch_gbps": 5.1, "vswitch_nooffload_gbps": 1.2,
   "ratio": 0.31, "ratio_nooffload": 0.07, ..., "uplink_bridge_gbps": 20.1,
   "uplink_l2bridge_gbps": 1.3, "uplink_transparent_gbps": 1.3,
   "uplink_ratio": 0.06, ...}
Keys of a comparison that was not run are null. ratio and uplink_ratio are
vswitch (offloads on, resp. l2bridge) over the Linux bridge.
Exit status: 0 ok, 1 setup or measurement failed, 3 below --min-ratio (or a
path moved no data).

Topology (all names contain the script's PID <P>; subnets 10.55.{1,2,3}.0/24
and 10.56.0.0/24, addressed only inside the script's own namespaces):
  TAP comparison:
  bridge:  vsb<P>-b1 eth0 --veth-- [br0 in vsb<P>-br] --veth-- eth0 vsb<P>-b2
  vswitch: vsb<P>-o1 eth0 (TAP) -- vswitchd -- (TAP) eth0 vsb<P>-o2
  no offl: vsb<P>-n1 eth0 (TAP) -- vswitchd -- (TAP) eth0 vsb<P>-n2
  (vswitchd: a private instance in the root namespace)
  uplink comparison (iperf3 client in the endpoint, server in vsb<P>-out):
  vsb<P>-out eth0 10.56.0.100 --veth-- [br0 in vsb<P>-fab] --veth-- vsb<P>up
  in vsb<P>-host (the uplink; its peer in vsb<P>-fab keeps its default
  offloads), then per path, both directions (-R: outside -> endpoint):
  bridge:      vsb<P>up and a veth to vsb<P>-ub eth0 (10.56.0.10) in lbr
  l2bridge:    vsb<P>up -- vswitchd -- (TAP) eth0 vsb<P>-ul (10.56.0.10)
  transparent: vsb<P>up -- vswitchd -- (TAP) eth0 vsb<P>-ut (10.56.0.10)
  veth:        vsb<P>up -- vswitchd -- (veth) eth0 vsb<P>-uv (10.56.0.10)
  (vswitchd: a second private instance, run inside vsb<P>-host; the uplink is
  moved between the paths every round, so only one uses it at a time)
State and sockets of both vswitchd instances live under /tmp.
EOF
}

# shellcheck source=scripts/bench-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

DURATION=10
REPEAT=1
STREAMS=1
SMOKE=0
MIN_RATIO=0.10
FORCE_BUILD=0
MODE=all

while [ $# -gt 0 ]; do
    case "$1" in
        --duration) [ $# -ge 2 ] || die "--duration needs a value"; posint "$1" "$2"; DURATION=$2; shift 2 ;;
        --repeat) [ $# -ge 2 ] || die "--repeat needs a value"; posint "$1" "$2"; REPEAT=$2; shift 2 ;;
        --streams) [ $# -ge 2 ] || die "--streams needs a value"; posint "$1" "$2"; STREAMS=$2; shift 2 ;;
        --min-ratio)
            [ $# -ge 2 ] || die "--min-ratio needs a value"
            [[ "$2" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--min-ratio expects a number such as 0.25, got '$2'"
            MIN_RATIO=$2; shift 2 ;;
        --tap | --uplink)
            [ "$MODE" = all ] || [ "$MODE" = "${1#--}" ] || die "--tap and --uplink exclude each other (give neither to run both)"
            MODE=${1#--}; shift ;;
        --smoke) SMOKE=1; shift ;;
        --build) FORCE_BUILD=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument '$1'" ;;
    esac
done
[ "$SMOKE" -eq 1 ] && DURATION=2
# The first second of a TCP test is slow start and ARP; leave it out when the
# test is long enough for the rest to be representative.
OMIT=0
[ "$DURATION" -ge 5 ] && OMIT=1
RUN_TAP=0 RUN_UPLINK=0
[ "$MODE" = uplink ] || RUN_TAP=1
[ "$MODE" = tap ] || RUN_UPLINK=1

[ "$(id -u)" -eq 0 ] || die "run as root (e.g. sudo $0): the benchmark creates network namespaces, veths, a bridge and TAP endpoints"

# ---------------------------------------------------------------- tools ----

need_bench_tools

ensure_binaries "$FORCE_BUILD"

# ---------------------------------------------------- state and cleanup ----

bench_init vsb vswitch-bench
# The TAP comparison's vswitchd (root namespace) is bench-lib.sh's: SOCK,
# STATE, DLOG, DAEMON_PID. The uplink comparison's runs inside the host
# namespace.
USOCK="$WORK/uplink-vswitchd.sock"
USTATE="$WORK/uplink-state"
UDLOG="$WORK/uplink-vswitchd.log"
DAEMON_LOGS+=("$UDLOG")
UDAEMON_PID=""
# The uplink network and endpoint that exist right now (one at a time: the
# paths take turns on the uplink).
UP_NET_LIVE=""
UP_EP_LIVE=""

uctl() { "$VSWITCHCTL" --socket "$USOCK" "$@"; }

# Run by cleanup: removes what the uplink daemon holds and stops it.
cleanup_uplink() {
    if [ -n "$UDAEMON_PID" ] && kill -0 "$UDAEMON_PID" 2>/dev/null; then
        if [ -n "$UP_EP_LIVE" ]; then
            uctl endpoint rm "$UP_EP_LIVE" >/dev/null 2>&1 || echo "warning: could not remove endpoint $UP_EP_LIVE" >&2
        fi
        if [ -n "$UP_NET_LIVE" ]; then
            uctl network rm "$UP_NET_LIVE" >/dev/null 2>&1 || echo "warning: could not remove network $UP_NET_LIVE" >&2
        fi
    fi
    if [ -n "$UDAEMON_PID" ]; then stop_pid "$UDAEMON_PID"; fi
}
CLEANUP_EXTRA=cleanup_uplink

# start_daemon VAR STATE_DIR SOCKET LOG [NETNS]: starts a private vswitchd,
# in NETNS when given, stores its PID in VAR and waits until it answers.
start_daemon() {
    local var=$1 state=$2 sock=$3 log=$4 ns=${5:-} pid
    mkdir -m 0700 "$state"
    local cmd=("$VSWITCHD" --state-dir "$state" --socket "$sock" --log-level warn)
    # In a namespace of ours: the uplink is an interface in vswitchd's own
    # namespace. ip netns exec execs the daemon (no fork), so $! is its PID.
    # --detach-on-exit: a clean stop leaves no steering program on the uplink.
    [ -z "$ns" ] || cmd=(ip netns exec "$ns" "${cmd[@]}" --detach-on-exit)
    # setsid: a Ctrl-C on the terminal must not reach the daemon before
    # cleanup has removed the endpoints through it.
    setsid "${cmd[@]}" >"$log" 2>&1 </dev/null &
    pid=$!
    printf -v "$var" '%s' "$pid"
    wait_daemon "$pid" "$sock"
}

# ------------------------------------------------------------ readiness ----

# Starts an iperf3 server in NS and waits until it listens on 5201.
start_server() {
    local ns=$1
    ip netns exec "$ns" iperf3 -s -p 5201 >"$WORK/server-$ns.log" 2>&1 </dev/null &
    SERVER_PIDS+=($!)
    wait_listening "$ns" -Hltn 5201 "$!" "$WORK/server-$ns.log" "iperf3 server"
}

# ---------------------------------------------------------- measurement ----

# run_one NAME CLIENT_NS SERVER_ADDR ROUND DAEMON_PID [IPERF3_ARG...]:
# run_iperf with --streams parallel streams.
run_one() {
    kill -0 "$5" 2>/dev/null || die "vswitchd is no longer running"
    run_iperf "${@:1:5}" -P "$STREAMS" "${@:6}"
}

say "running: ${DURATION}s per test, $STREAMS stream(s), $REPEAT round(s)$([ "$SMOKE" -eq 1 ] && echo ', smoke')"

# -------------------------------------------------------- TAP comparison ----

NS_BR="$P-br"
NS_B1="$P-b1" NS_B2="$P-b2"
NS_O1="$P-o1" NS_O2="$P-o2"
NS_N1="$P-n1" NS_N2="$P-n2"
IP_B1=10.55.1.11 IP_B2=10.55.1.12
IP_O1=10.55.2.11 IP_O2=10.55.2.12
IP_N1=10.55.3.11 IP_N2=10.55.3.12
NET_O="${P}o" NET_N="${P}n"

if [ "$RUN_TAP" -eq 1 ]; then
    say "bridge topology: $NS_B1 <-> br0 in $NS_BR <-> $NS_B2 (10.55.1.0/24)"
    add_ns "$NS_BR"
    ip -n "$NS_BR" link add br0 type bridge
    ip -n "$NS_BR" link set br0 up
    n=1
    for pair in "$NS_B1:$IP_B1" "$NS_B2:$IP_B2"; do
        ns=${pair%%:*} addr=${pair#*:}
        add_ns "$ns"
        # Both ends are created inside namespaces of ours: the bridge side in
        # $NS_BR, the peer directly in the endpoint namespace as eth0.
        ip -n "$NS_BR" link add "p$n" type veth peer name eth0 netns "$ns"
        ip -n "$NS_BR" link set "p$n" master br0 up
        ip -n "$ns" addr add "$addr/24" dev eth0
        ip -n "$ns" link set eth0 up
        n=$((n + 1))
    done

    say "starting a private vswitchd (state and socket in $WORK)"
    start_daemon DAEMON_PID "$STATE" "$SOCK" "$DLOG"

    say "vswitch topologies: $NET_O (offload on, 10.55.2.0/24), $NET_N (offload=off, 10.55.3.0/24)"
    ctl network create -d private --subnet 10.55.2.0/24 "$NET_O" >/dev/null
    CREATED_NET+=("$NET_O")
    ctl network create -d private --subnet 10.55.3.0/24 -o offload=off "$NET_N" >/dev/null
    CREATED_NET+=("$NET_N")
    for spec in "$NET_O:$NS_O1:$IP_O1:${P}o1" "$NET_O:$NS_O2:$IP_O2:${P}o2" \
        "$NET_N:$NS_N1:$IP_N1:${P}n1" "$NET_N:$NS_N2:$IP_N2:${P}n2"; do
        IFS=: read -r net ns addr ep <<<"$spec"
        add_ns "$ns"
        ctl endpoint create --network "$net" --netns "$ns" --ip "$addr" "$ep" >/dev/null
        CREATED_EP+=("$ep")
    done

    for ns in "$NS_B2" "$NS_O2" "$NS_N2"; do start_server "$ns"; done
    wait_path "$NS_B1" "$IP_B2"
    wait_path "$NS_O1" "$IP_O2"
    wait_path "$NS_N1" "$IP_N2"

    for ((r = 1; r <= REPEAT; r++)); do
        # Interleaved rounds spread any drift of the machine over all paths.
        run_one bridge "$NS_B1" "$IP_B2" "$r" "$DAEMON_PID"
        run_one vswitch "$NS_O1" "$IP_O2" "$r" "$DAEMON_PID"
        run_one vswitch_nooffload "$NS_N1" "$IP_N2" "$r" "$DAEMON_PID"
        say "TAP round $r/$REPEAT done"
    done

    ctl stats --json >"$WORK/stats.json"
fi

# ----------------------------------------------------- uplink comparison ----

NS_FAB="$P-fab" NS_OUT="$P-out" NS_HOST="$P-host"
NS_UB="$P-ub" NS_UL="$P-ul" NS_UT="$P-ut" NS_UV="$P-uv"
# The uplink's name carries the PID too: vswitchd pins its XDP program under
# /sys/fs/bpf/vswitch/<ifname>, one directory for every namespace.
UPLINK="${P}up"
IP_OUT=10.56.0.100 IP_UEP=10.56.0.10
NET_UL="${P}ul" NET_UT="${P}ut" NET_UV="${P}uv"
EP_UL="${P}ule" EP_UT="${P}ute" EP_UV="${P}uve"

# uplink_vswitch NAME DRIVER NET EP NS ROUND [BACKEND]: attaches the uplink
# with a vswitch network of DRIVER, an endpoint in NS (a TAP unless BACKEND
# says otherwise), measures, and removes both again, so the uplink is free
# for the next path. The stats of the network are kept in
# $WORK/NAME.ROUND.stats (they go with the network).
uplink_vswitch() {
    local name=$1 driver=$2 net=$3 ep=$4 ns=$5 round=$6 backend=${7:-tap}
    uctl network create -d "$driver" --subnet 10.56.0.0/24 -o interface="$UPLINK" "$net" >/dev/null
    UP_NET_LIVE=$net
    uctl endpoint create --network "$net" --netns "$ns" --ip "$IP_UEP" --backend "$backend" "$ep" >/dev/null
    UP_EP_LIVE=$ep
    # Every path uses 10.56.0.10 behind a different MAC (the endpoint's own,
    # the uplink's for l2bridge): forget the previous path's ARP answer.
    ip -n "$NS_OUT" neigh flush all
    wait_path "$ns" "$IP_OUT"
    run_one "$name" "$ns" "$IP_OUT" "$round" "$UDAEMON_PID"
    run_one "${name}_rev" "$ns" "$IP_OUT" "$round" "$UDAEMON_PID" -R
    uctl stats --json >"$WORK/$name.$round.stats"
    uctl endpoint rm "$ep" >/dev/null
    UP_EP_LIVE=""
    uctl network rm "$net" >/dev/null
    UP_NET_LIVE=""
}

if [ "$RUN_UPLINK" -eq 1 ]; then
    say "uplink topology: $NS_OUT ($IP_OUT) <-> br0 in $NS_FAB <-> $UPLINK in $NS_HOST"
    add_ns "$NS_FAB"
    ip -n "$NS_FAB" link add br0 type bridge
    ip -n "$NS_FAB" link set br0 up
    add_ns "$NS_OUT"
    ip -n "$NS_FAB" link add pout type veth peer name eth0 netns "$NS_OUT"
    ip -n "$NS_FAB" link set pout master br0 up
    ip -n "$NS_OUT" addr add "$IP_OUT/24" dev eth0
    ip -n "$NS_OUT" link set eth0 up
    add_ns "$NS_HOST"
    ip -n "$NS_FAB" link add pup type veth peer name "$UPLINK" netns "$NS_HOST"
    # The peer keeps its default offloads (TX checksum, TX VLAN), as a lab
    # user's veth would.
    ip -n "$NS_FAB" link set pup master br0 up
    ip -n "$NS_HOST" link set "$UPLINK" up

    say "linux bridge path: $NS_UB ($IP_UEP) <-> lbr in $NS_HOST, with $UPLINK when its turn comes"
    ip -n "$NS_HOST" link add lbr type bridge
    ip -n "$NS_HOST" link set lbr up
    add_ns "$NS_UB"
    ip -n "$NS_HOST" link add pub type veth peer name eth0 netns "$NS_UB"
    ip -n "$NS_HOST" link set pub master lbr up
    ip -n "$NS_UB" addr add "$IP_UEP/24" dev eth0
    ip -n "$NS_UB" link set eth0 up

    say "starting a private vswitchd in $NS_HOST (state and socket in $WORK)"
    start_daemon UDAEMON_PID "$USTATE" "$USOCK" "$UDLOG" "$NS_HOST"
    add_ns "$NS_UL"
    add_ns "$NS_UT"
    add_ns "$NS_UV"

    start_server "$NS_OUT"
    for ((r = 1; r <= REPEAT; r++)); do
        ip -n "$NS_HOST" link set "$UPLINK" master lbr
        ip -n "$NS_OUT" neigh flush all
        wait_path "$NS_UB" "$IP_OUT"
        run_one uplink_bridge "$NS_UB" "$IP_OUT" "$r" "$UDAEMON_PID"
        run_one uplink_bridge_rev "$NS_UB" "$IP_OUT" "$r" "$UDAEMON_PID" -R
        ip -n "$NS_HOST" link set "$UPLINK" nomaster
        uplink_vswitch uplink_l2bridge l2bridge "$NET_UL" "$EP_UL" "$NS_UL" "$r"
        uplink_vswitch uplink_transparent transparent "$NET_UT" "$EP_UT" "$NS_UT" "$r"
        uplink_vswitch uplink_veth transparent "$NET_UV" "$EP_UV" "$NS_UV" "$r" veth
        say "uplink round $r/$REPEAT done"
    done
fi

# -------------------------------------------------------------- report ----

set +e
report "$WORK" "$REPEAT" "$DURATION" "$OMIT" "$STREAMS" "$CLK_TCK" "$SMOKE" "$MIN_RATIO" \
    "$NET_O" "$NET_N" "$RUN_TAP" "$RUN_UPLINK" "$NET_UL" "$NET_UT" "$NET_UV" <<'PYEOF'
import glob, json, sys
from bench_report import drops_by_reason, finish, ratio as ratio_of, tcp

(work, repeat, duration, omit, streams, clk_tck, smoke, min_ratio, net_o, net_n,
 run_tap, run_uplink, net_ul, net_ut, net_uv) = sys.argv[1:]
repeat, duration, omit, streams, clk_tck = int(repeat), int(duration), int(omit), int(streams), int(clk_tck)
smoke, min_ratio = smoke == "1", float(min_ratio)
run_tap, run_uplink = run_tap == "1", run_uplink == "1"

def result(name):
    return tcp(work, name, repeat, clk_tck)

def drops(stats, net):
    return sum(drops_by_reason(stats, net).values())

secs = duration + omit  # the daemon's CPU is counted over the whole test
def cpu(c):
    return f"{c:6.2f} s ({100 * c / secs:3.0f}%)"
def title(what):
    print(f"iperf3 TCP {what}, {duration} s{' (+1 s omitted)' if omit else ''}, {streams} stream(s), "
          f"median of {repeat}")
    print(f"{'path':<20} {'Gbit/s':>8} {'ratio':>7} {'retrans':>8} {'vswitchd CPU':>16} {'drops':>6}")

failed = []
out = {}
if run_tap:
    with open(f"{work}/stats.json") as f:
        stats = json.load(f)
    br, vs, vn = result("bridge"), result("vswitch"), result("vswitch_nooffload")
    ratio, ratio_n = ratio_of(vs[0], br[0]), ratio_of(vn[0], br[0])
    print()
    title("namespace -> namespace (TAP endpoints)")
    print(f"{'linux bridge':<20} {br[0]:8.2f} {1.0:7.2f} {br[1]:8.0f} {'-':>16} {'-':>6}")
    print(f"{'vswitch':<20} {vs[0]:8.2f} {ratio:7.2f} {vs[1]:8.0f} {cpu(vs[2]):>16} {drops(stats, net_o):6d}")
    print(f"{'vswitch offload=off':<20} {vn[0]:8.2f} {ratio_n:7.2f} {vn[1]:8.0f} {cpu(vn[2]):>16} {drops(stats, net_n):6d}")
    if not smoke:
        for name, g in (("bridge", br[0]), ("vswitch", vs[0]), ("vswitch offload=off", vn[0])):
            if g <= 0:
                failed.append(f"{name} moved no data")
        if ratio < min_ratio:
            failed.append(f"vswitch/bridge ratio {ratio:.2f} is below --min-ratio {min_ratio}")
    out.update({
        "bridge_gbps": round(br[0], 3),
        "vswitch_gbps": round(vs[0], 3),
        "vswitch_nooffload_gbps": round(vn[0], 3),
        "ratio": round(ratio, 3),
        "ratio_nooffload": round(ratio_n, 3),
        "vswitchd_cpu_s": round(vs[2], 2),
        "vswitchd_nooffload_cpu_s": round(vn[2], 2),
    })
else:
    out.update(dict.fromkeys(("bridge_gbps", "vswitch_gbps", "vswitch_nooffload_gbps", "ratio",
                              "ratio_nooffload", "vswitchd_cpu_s", "vswitchd_nooffload_cpu_s")))

if run_uplink:
    # Each round's networks are removed after their test, with their
    # counters: add up the drops of every round.
    def uplink_drops(name, net):
        total = 0
        for path in sorted(glob.glob(f"{work}/{name}.*.stats")):
            with open(path) as f:
                total += drops(json.load(f), net)
        return total
    ub, ul, ut, uv = (result("uplink_bridge"), result("uplink_l2bridge"),
                      result("uplink_transparent"), result("uplink_veth"))
    ratio_l, ratio_t, ratio_v = (ratio_of(ul[0], ub[0]), ratio_of(ut[0], ub[0]),
                                 ratio_of(uv[0], ub[0]))
    rb, rl, rt, rv = (result("uplink_bridge_rev"), result("uplink_l2bridge_rev"),
                      result("uplink_transparent_rev"), result("uplink_veth_rev"))
    rratio_l, rratio_t, rratio_v = (ratio_of(rl[0], rb[0]), ratio_of(rt[0], rb[0]),
                                    ratio_of(rv[0], rb[0]))
    # Drops are counted over both directions of a round.
    for what, (b, l, t, v), (rl_, rt_, rv_) in (
            ("endpoint -> outside through a veth uplink", (ub, ul, ut, uv),
             (ratio_l, ratio_t, ratio_v)),
            ("outside -> endpoint through a veth uplink", (rb, rl, rt, rv),
             (rratio_l, rratio_t, rratio_v))):
        print()
        title(what)
        print(f"{'linux bridge':<20} {b[0]:8.2f} {1.0:7.2f} {b[1]:8.0f} {'-':>16} {'-':>6}")
        print(f"{'vswitch l2bridge':<20} {l[0]:8.2f} {rl_:7.2f} {l[1]:8.0f} {cpu(l[2]):>16} "
              f"{uplink_drops('uplink_l2bridge', net_ul):6d}")
        print(f"{'vswitch transparent':<20} {t[0]:8.2f} {rt_:7.2f} {t[1]:8.0f} {cpu(t[2]):>16} "
              f"{uplink_drops('uplink_transparent', net_ut):6d}")
        print(f"{'vswitch veth endpt':<20} {v[0]:8.2f} {rv_:7.2f} {v[1]:8.0f} {cpu(v[2]):>16} "
              f"{uplink_drops('uplink_veth', net_uv):6d}")
    if not smoke:
        for name, g in (("uplink bridge", ub[0]), ("uplink l2bridge", ul[0]),
                        ("uplink transparent", ut[0]), ("uplink veth", uv[0]),
                        ("uplink bridge -R", rb[0]), ("uplink l2bridge -R", rl[0]),
                        ("uplink transparent -R", rt[0]), ("uplink veth -R", rv[0])):
            if g <= 0:
                failed.append(f"{name} moved no data")
    out.update({
        "uplink_bridge_gbps": round(ub[0], 3),
        "uplink_l2bridge_gbps": round(ul[0], 3),
        "uplink_transparent_gbps": round(ut[0], 3),
        "uplink_ratio": round(ratio_l, 3),
        "uplink_ratio_transparent": round(ratio_t, 3),
        "uplink_l2bridge_cpu_s": round(ul[2], 2),
        "uplink_transparent_cpu_s": round(ut[2], 2),
        "uplink_veth_gbps": round(uv[0], 3),
        "uplink_ratio_veth": round(ratio_v, 3),
        "uplink_rev_bridge_gbps": round(rb[0], 3),
        "uplink_rev_l2bridge_gbps": round(rl[0], 3),
        "uplink_rev_transparent_gbps": round(rt[0], 3),
        "uplink_rev_ratio": round(rratio_l, 3),
        "uplink_rev_ratio_transparent": round(rratio_t, 3),
        "uplink_rev_veth_gbps": round(rv[0], 3),
        "uplink_rev_ratio_veth": round(rratio_v, 3),
    })
else:
    out.update(dict.fromkeys(("uplink_bridge_gbps", "uplink_l2bridge_gbps", "uplink_transparent_gbps",
                              "uplink_ratio", "uplink_ratio_transparent", "uplink_l2bridge_cpu_s",
                              "uplink_transparent_cpu_s", "uplink_rev_bridge_gbps",
                              "uplink_rev_l2bridge_gbps", "uplink_rev_transparent_gbps",
                              "uplink_rev_ratio", "uplink_rev_ratio_transparent",
                              "uplink_veth_gbps", "uplink_ratio_veth", "uplink_rev_veth_gbps",
                              "uplink_rev_ratio_veth")))

print("(vswitchd CPU: its user+system time during the test, % of one core)")
print()
out.update({"duration_s": duration, "streams": streams, "repeat": repeat, "smoke": smoke})
finish(failed, out)
PYEOF
report_rc=$?
set -e
[ "$report_rc" -eq 0 ] || exit "$report_rc"
