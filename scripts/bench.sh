#!/usr/bin/env bash
# The benchmark suite: every case a topology in namespaces of its own, built
# for vswitch and for its competitors (the Linux bridge always, with kernel
# VXLAN devices on the overlay case; Open vSwitch's userspace datapath with
# afxdp ports on the same-host case), all measured in the same run with the
# same tests, and reported as ratios to the bridge: a table on stdout, a CSV
# and a PNG chart in --out. The older bench-*.sh scripts each look at one
# question in more depth; this one is the overview. Everything it creates
# has $$ in its name and is removed on exit, failure or Ctrl-C.
set -euo pipefail

ALL_CASES=fast,acl,tap,uplink,nat,capture,overlay

usage() {
    cat <<'EOF'
Usage: scripts/bench.sh [--cases LIST] [--duration N] [--repeat N] [--out DIR]
                        [--smoke] [--build]

Runs the benchmark suite: vswitch against the Linux bridge (and Open vSwitch)
on the same topologies, in the same run. Needs root; installs what it needs.

Cases (--cases, comma-separated; default all):
  fast    two endpoints on one internal network, veth backend (the eBPF fast
          path); competitors: Linux bridge, Open vSwitch userspace datapath
          with afxdp ports (ovs-vswitchd datapath_type=netdev)
  acl     the same with an HNS ACL on the server endpoint allowing the traffic
  tap     the same as fast with the TAP backend
  uplink  an endpoint and an "outside" namespace through a veth uplink
          (-d transparent -o interface=...), both directions (out: the
          endpoint is the client; in: the outside host is), with a veth and a
          TAP endpoint; competitor: the uplink and the endpoint's veth in a
          Linux bridge
  nat     endpoint -> outside through -d nat; competitor: Linux bridge with
          iptables MASQUERADE
  capture the fast case's topology measured three times: no capture, a
          'vswitchctl capture' of the server endpoint with a filter nothing
          matches ('udp port 1'), and one of everything (pcap to
          /dev/null); each capture runs only while its path is measured;
          competitor: Linux bridge
  overlay two hosts (namespaces, each with a veth uplink into a fabric
          bridge) and an endpoint on each, the client on host A: vswitchd on
          both hosts, -d overlay (VXLAN, UDP 4789) with static mappings and
          veth endpoints; competitor: on the same hosts and uplinks, a
          kernel VXLAN device (UDP 4790, static FDB and neighbour entries)
          in a Linux bridge with the endpoint's veth. Endpoints of both have
          the uplink's MTU less 50
When the vswitchctl at hand has no --backend, the veth rows run on TAP and
say "tap (veth backend not available)".

Measures (each path, each round, every test DURATION s):
  TCP1, TCP4  iperf3 TCP, 1 and 4 streams, Gbit/s received (the first
              second omitted as warm-up when DURATION >= 5)
  pps         64-byte frames (UDP, one flow) per second received on the
              receiver's eth0, from trafgen (netsniff-ng): one process on one
              core, PACKET_MMAP, no qdisc. "sent" is what left the sender's
              eth0; the receiver drops the packets at arrival (iptables raw),
              so its socket lookup is not measured. When sent ~ received the
              path kept up with what one core could push through it
              (software switching in the kernel runs on the sender's core)
  p50, p99    UDP request/response round-trip time (sockperf ping-pong, one
              message in flight), microseconds
  conn/s      new TCP connections per second (connect, 1 byte each way,
              reset; scripts/connrate.c)
  CPU         the switch daemon's user+system CPU during the TCP1 test, % of
              one core (vswitchd, on overlay both hosts' added up;
              ovs-vswitchd for OVS; "-" for the bridge, whose work is kernel
              softirq time of the traffic's own cores)
  retr        TCP retransmits of the TCP1 test (iperf3's sender count): a
              value, not a ratio

Reading the ratios: each is the competitor's value over the Linux bridge's on
the same case; for TCP, pps and conn/s higher is better, for p50 and p99
(vswitch/bridge) lower is better. The target column names what the project
aims for; a ratio below target is shown as BELOW and changes no exit status.
Targets: fast TCP1 >= 1.0x, pps >= 1.5x, p50 <= 1.0x; acl TCP1 >= 0.95x of
the unpoliced fast path (vswitch acl / vswitch fast); uplink TCP1 both
directions >= 0.95x with a veth endpoint, >= 0.7x with a TAP endpoint;
capture: no capture TCP1 >= 1.0x bridge (nothing spent when nobody
captures), a capture matching nothing TCP1 >= 0.9x of no capture; overlay
TCP1 and TCP4 >= 0.9x bridge.

Options:
  --cases LIST   cases to run (default all; with --smoke: fast)
  --duration N   seconds per test (default 5; 1 with --smoke)
  --repeat N     rounds, interleaved over the paths; medians reported (default 1)
  --out DIR      where bench.csv, bench.png, bench.txt and the raw results go
                 (default target/bench/<date>-<time> in the repository)
  --smoke        1-second tests, the fast case unless --cases is given, for CI:
                 exits non-zero when something is broken (a path of vswitch or
                 the bridge moved nothing), never for a low ratio
  --build        run 'cargo build --release --workspace' even when the
                 binaries exist (default: only when they are missing)
  -h, --help     show this help

Exit status: 0 ok (whatever the ratios), 1 setup or measurement failed, 3 a
vswitch or bridge path moved no data. An OVS row that cannot run says why in
its note and does not change the exit status.

CSV columns: case, competitor, backend, measure, unit, value, bridge (the
bridge's value on the case), ratio, target, target_met, note (retr: no
ratio).

Topology (names contain the script's PID <P>; addresses only inside the
script's namespaces; 10.61.0.0/16 same-host, 10.62.0.0/16 uplink,
172.31.1.0/24 behind 10.63.1.0/24 nat, 10.64.0.0/16 on overlay's provider
addresses 192.168.64.0/24; eth0 in every endpoint namespace):
  vswitchd: one private instance in vsu<P>-vh, which also holds the uplinks
  bridge:   vsu<P>-b1 --veth-- [br0 in vsu<P>-br] --veth-- vsu<P>-b2
  ovs:      vsu<P>-o1 --veth-- [ovs-vswitchd in vsu<P>-ov, afxdp] --veth-- vsu<P>-o2
            (private ovsdb-server and ovs-vswitchd, db and run dir under
            /tmp, running only while their path is measured: the pmd thread
            spins a core)
  fast/acl/tap/capture: vsu<P>-{f,a,t,c}1 -- vswitchd -- vsu<P>-{f,a,t,c}2
  uplink:   bridge: vsu<P>-ue --veth-- [br0 + uplink in vsu<P>-uh] --veth-- vsu<P>-uo
            vswitch: vsu<P>-{v,p}e -- vswitchd + uplink vsu<P>{v,p}u -- vsu<P>-{v,p}o
  nat:      vsu<P>-me --veth-- [br0, MASQUERADE in vsu<P>-mh] --veth-- vsu<P>-mo
            vsu<P>-ne -- vswitchd -d nat, uplink vsu<P>nu -- vsu<P>-no
  overlay:  host A is vsu<P>-vh (uplink vsu<P>oa, 192.168.64.1), host B
            vsu<P>-hb (a second private vswitchd; uplink vsu<P>ob, .2), the
            uplinks in br0 of vsu<P>-of
            bridge:  vsu<P>-xa --veth-- [ovbr + ovx (VXLAN 4790) in A] ==
                     [ovbr + ovx in B] --veth-- vsu<P>-xb
            vswitch: vsu<P>-va -- vswitchd A (VXLAN 4789) == vswitchd B -- vsu<P>-vb
EOF
}

# shellcheck source=scripts/bench-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

DURATION=5
REPEAT=1
CASES=""
OUT=""
SMOKE=0
FORCE_BUILD=0
DURATION_GIVEN=0
CT_MAX=4194304

while [ $# -gt 0 ]; do
    case "$1" in
        --duration) [ $# -ge 2 ] || die "--duration needs a value"; posint "$1" "$2"; DURATION=$2; DURATION_GIVEN=1; shift 2 ;;
        --repeat) [ $# -ge 2 ] || die "--repeat needs a value"; posint "$1" "$2"; REPEAT=$2; shift 2 ;;
        --cases) [ $# -ge 2 ] || die "--cases needs a value"; CASES=$2; shift 2 ;;
        --out) [ $# -ge 2 ] || die "--out needs a value"; OUT=$2; shift 2 ;;
        --smoke) SMOKE=1; shift ;;
        --build) FORCE_BUILD=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument '$1'" ;;
    esac
done
if [ "$SMOKE" -eq 1 ]; then
    [ "$DURATION_GIVEN" -eq 1 ] || DURATION=1
    [ -n "$CASES" ] || CASES=fast
fi
[ -n "$CASES" ] || CASES=$ALL_CASES
declare -A RUN=()
IFS=, read -ra _cases <<<"$CASES"
for c in "${_cases[@]}"; do
    [[ ",$ALL_CASES," == *",$c,"* ]] || die "--cases: unknown case '$c' (known: $ALL_CASES)"
    RUN[$c]=1
done
# The first second of a TCP test is slow start and ARP.
OMIT=0
[ "$DURATION" -ge 5 ] && OMIT=1
CONN_DURATION=$DURATION

[ "$(id -u)" -eq 0 ] || die "run as root (e.g. sudo $0): the suite creates network namespaces, veths, bridges, iptables rules and endpoints"

# ---------------------------------------------------------------- tools ----

need_bench_tools
need_cmd cc gcc
need_cmd nsenter util-linux
need_cmd iptables iptables
need_cmd ethtool ethtool
need_cmd sockperf sockperf
need_cmd trafgen netsniff-ng
need_cmd gnuplot gnuplot-nox
[ -z "${RUN[capture]:-}" ] || need_cmd tcpdump tcpdump
# Open vSwitch is a competitor, not a requirement: without it the OVS row
# says why.
OVS_REASON=""
if [ -n "${RUN[fast]:-}" ]; then
    if ! command -v ovs-vswitchd >/dev/null 2>&1; then
        # policy-rc.d 101: the package must not start the system's own OVS.
        guard=""
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            guard=/usr/sbin/policy-rc.d
            printf '#!/bin/sh\nexit 101\n' >"$guard" && chmod 755 "$guard"
        fi
        say "installing openvswitch-switch (the OVS competitor; no service started)"
        (export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq openvswitch-switch >/dev/null) ||
            OVS_REASON="openvswitch-switch could not be installed"
        [ -z "$guard" ] || rm -f "$guard"
    fi
fi

ensure_binaries "$FORCE_BUILD"
ensure_bpffs

# ---------------------------------------------------- state and cleanup ----

bench_init vsu vswitch-bench-suite
[ -n "$OUT" ] || OUT="$REPO/target/bench/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

OVS_DIR="$WORK/ovs"
OVSDB_PID="" OVS_PID=""
DAEMON_LOGS+=("$OVS_DIR/ovs-vswitchd.log")

# Host B of the overlay case: a second private vswitchd (host A's is the one
# in NS_VH) and what was made through it.
SOCK_B="$WORK/vswitchd-b.sock" STATE_B="$WORK/state-b" DLOG_B="$WORK/vswitchd-b.log"
DAEMON_B_PID=""
CREATED_EP_B=() CREATED_NET_B=()
DAEMON_LOGS+=("$DLOG_B")
ctl_b() { "$VSWITCHCTL" --socket "$SOCK_B" "$@"; }

# Removes host B's endpoints and networks, stops its vswitchd and removes
# its pins (as cleanup does for DAEMON_PID).
daemon_b_down() {
    local i pins=""
    [ -n "$DAEMON_B_PID" ] || return 0
    if kill -0 "$DAEMON_B_PID" 2>/dev/null; then
        pins=$(ctl_b datapath show --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["PinDir"])' 2>/dev/null)
        for ((i = ${#CREATED_EP_B[@]} - 1; i >= 0; i--)); do
            ctl_b endpoint rm "${CREATED_EP_B[i]}" >/dev/null 2>&1 || echo "warning: could not remove endpoint ${CREATED_EP_B[i]} (host B)" >&2
        done
        for ((i = ${#CREATED_NET_B[@]} - 1; i >= 0; i--)); do
            ctl_b network rm "${CREATED_NET_B[i]}" >/dev/null 2>&1 || echo "warning: could not remove network ${CREATED_NET_B[i]} (host B)" >&2
        done
    fi
    stop_pid "$DAEMON_B_PID"
    case "$pins" in /sys/fs/bpf/vswitch/fastpath-*) rm -rf "$pins" ;; esac
}

# Run by cleanup: the raw results are kept, OVS is stopped by its PIDs.
cleanup_suite() {
    mkdir -p "$OUT/raw"
    cp "$WORK"/*.json "$WORK"/*.pps "$WORK"/*.lat "$WORK"/*.conn "$WORK"/*.cpu "$WORK"/*.log \
        "$OUT/raw/" 2>/dev/null || true
    [ -z "$OVS_PID" ] || stop_pid "$OVS_PID"
    [ -z "$OVSDB_PID" ] || stop_pid "$OVSDB_PID"
    [ -z "${CAPTURE_PID:-}" ] || stop_pid "$CAPTURE_PID"
    daemon_b_down
}
CLEANUP_EXTRA=cleanup_suite

build_connrate

# The endpoint backends this vswitchctl knows: with a socket that does not
# exist, a known flag gets as far as connecting.
if "$VSWITCHCTL" --socket "$WORK/none.sock" endpoint create --backend veth --network n --netns n n \
    2>"$WORK/backend-probe.err" >/dev/null || grep -q "cannot connect" "$WORK/backend-probe.err"; then
    HAVE_BACKEND=1
else
    HAVE_BACKEND=0
    say "vswitchctl has no --backend ($(head -n 1 "$WORK/backend-probe.err")): veth rows run on TAP"
fi

# backend_label BACKEND: what an endpoint asked for BACKEND really is.
backend_label() {
    if [ "$1" = veth ] && [ "$HAVE_BACKEND" -eq 0 ]; then echo "tap (veth backend not available)"; else echo "$1"; fi
}

# ep_create_via CTL LIST NET NS ADDR NAME BACKEND: an endpoint made through
# CTL (ctl, ctl_b), its name recorded in the array named LIST for cleanup.
ep_create_via() {
    local via=$1
    local -n created=$2
    shift 2
    local args=(endpoint create --network "$1" --netns "$2" --ip "$3")
    [ "$HAVE_BACKEND" -eq 0 ] || args+=(--backend "$5")
    add_ns "$2"
    "$via" "${args[@]}" "$4" >/dev/null
    created+=("$4")
}

# ep_create NET NS ADDR NAME BACKEND: a vswitch endpoint, recorded.
ep_create() { ep_create_via ctl CREATED_EP "$@"; }

# veth_into OUTER_NS OUTER_NAME NS ADDR: a veth from OUTER_NS to eth0 (ADDR/24)
# in a new namespace NS.
veth_into() {
    add_ns "$3"
    ip -n "$1" link add "$2" type veth peer name eth0 netns "$3"
    ip -n "$1" link set "$2" up
    ip -n "$3" addr add "$4/24" dev eth0
    ip -n "$3" link set eth0 up
}

# new_bridge NS [PORT PEER_NS ADDR]...: a namespace NS with br0 up, and for
# each PORT a veth in br0 to eth0 (ADDR/24) of a new namespace PEER_NS.
new_bridge() {
    local ns=$1
    shift
    add_ns "$ns"
    ip -n "$ns" link add br0 type bridge
    ip -n "$ns" link set br0 up
    while [ $# -ge 3 ]; do
        veth_into "$ns" "$1" "$2" "$3"
        ip -n "$ns" link set "$1" master br0
        shift 3
    done
}

# The paths: PATH_IDS in measuring order; for each, the namespaces and the
# address of the test, and the daemon whose CPU is read.
PATH_IDS=()
declare -A CLIENT SERVER ADDR CPU_OF
# add_path ID CLIENT_NS SERVER_NS SERVER_ADDR CPU(vswitchd|ovs|overlay|none)
# (overlay: both hosts' vswitchd)
add_path() {
    PATH_IDS+=("$1")
    CLIENT[$1]=$2 SERVER[$1]=$3 ADDR[$1]=$4 CPU_OF[$1]=$5
}
# The report's rows: case, competitor, backend, path, bridge path, note.
ROWS="$WORK/rows.tsv"
: >"$ROWS"
row() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$ROWS"; }

say "running: cases $CASES, ${DURATION}s per test, $REPEAT round(s)$([ "$SMOKE" -eq 1 ] && echo ', smoke'); results in $OUT"

NS_VH="$P-vh"
add_ns "$NS_VH"
say "starting a private vswitchd in $NS_VH (state and socket in $WORK)"
start_vswitchd "$NS_VH" --conntrack-max "$CT_MAX" --conntrack-max-per-port "$CT_MAX"

# ------------------------------------------------------- same-host cases ----

if [ -n "${RUN[fast]:-}${RUN[acl]:-}${RUN[tap]:-}${RUN[capture]:-}" ]; then
    say "same-host bridge: $P-b1 <-> br0 in $P-br <-> $P-b2 (10.61.1.0/24)"
    new_bridge "$P-br" p1 "$P-b1" 10.61.1.11 p2 "$P-b2" 10.61.1.12
    add_path sh-bridge "$P-b1" "$P-b2" 10.61.1.12 none
fi

# same_host CASE SHORT SUBNET_N BACKEND [PATH]: an internal network and two
# endpoints of BACKEND; the path PATH (default sh-CASE).
same_host() {
    local case=$1 s=$2 n=$3 backend=$4 path=${5:-sh-$1}
    say "$case: $P-${s}1 <-> vswitchd ($backend endpoints, internal network 10.61.$n.0/24) <-> $P-${s}2"
    ctl network create -d internal --subnet "10.61.$n.0/24" "${P}$s" >/dev/null
    CREATED_NET+=("${P}$s")
    ep_create "${P}$s" "$P-${s}1" "10.61.$n.11" "${P}${s}1" "$backend"
    ep_create "${P}$s" "$P-${s}2" "10.61.$n.12" "${P}${s}2" "$backend"
    add_path "$path" "$P-${s}1" "$P-${s}2" "10.61.$n.12" vswitchd
}

if [ -n "${RUN[fast]:-}" ]; then
    same_host fast f 3 veth
    row fast "linux bridge" veth sh-bridge sh-bridge ""
    row fast "open vswitch (afxdp)" veth sh-ovs sh-bridge ""
    row fast vswitch "$(backend_label veth)" sh-fast sh-bridge ""
fi
if [ -n "${RUN[acl]:-}" ]; then
    same_host acl a 4 veth
    # Allows what the tests send to the server; a Block that matches none of
    # it makes the rule list more than one Allow.
    cat >"$WORK/acl.json" <<'JSON'
[{"Type": "ACL", "Settings": {"Id": "bench-tcp", "Action": "Allow", "Direction": "In",
   "Protocols": "6", "LocalPorts": "5201,7000", "Priority": 100}},
 {"Type": "ACL", "Settings": {"Id": "bench-udp", "Action": "Allow", "Direction": "In",
   "Protocols": "17", "LocalPorts": "9,11111", "Priority": 110}},
 {"Type": "ACL", "Settings": {"Id": "bench-block", "Action": "Block", "Direction": "In",
   "Protocols": "6", "LocalPorts": "22", "Priority": 120}}]
JSON
    ctl policy add --endpoint "${P}a2" --file "$WORK/acl.json" >/dev/null
    row acl "linux bridge" veth sh-bridge sh-bridge ""
    row acl "vswitch + ACL" "$(backend_label veth)" sh-acl sh-bridge ""
fi
if [ -n "${RUN[tap]:-}" ]; then
    same_host tap t 5 tap
    row tap "linux bridge" veth sh-bridge sh-bridge ""
    row tap vswitch tap sh-tap sh-bridge ""
fi

# The capture paths: the same two endpoints, measured without a capture
# (cap-off) and under one (cap-nomatch, cap-all), which capture_up starts
# before the path is measured and capture_down stops after.
CAPTURE_PID=""
declare -A CAPTURE_FILTER=([cap-nomatch]="udp port 1" [cap-all]="")
if [ -n "${RUN[capture]:-}" ]; then
    same_host capture c 6 veth cap-off
    add_path cap-nomatch "$P-c1" "$P-c2" 10.61.6.12 vswitchd
    add_path cap-all "$P-c1" "$P-c2" 10.61.6.12 vswitchd
    row capture "linux bridge" veth sh-bridge sh-bridge ""
    row capture "vswitch, no capture" "$(backend_label veth)" cap-off sh-bridge ""
    row capture "vswitch, capture no match" "$(backend_label veth)" cap-nomatch sh-bridge ""
    row capture "vswitch, capture all" "$(backend_label veth)" cap-all sh-bridge ""
fi

# capture_up ID: 'vswitchctl capture' of the capture case's server endpoint
# with ID's filter, pcap to /dev/null, until capture_down; returns once
# tcpdump listens. (vswitchctl becomes tcpdump: the PID is tcpdump's.)
capture_up() {
    local filter=()
    [ -z "${CAPTURE_FILTER[$1]}" ] || read -ra filter <<<"${CAPTURE_FILTER[$1]}"
    # Not through ctl (a function): $! must be vswitchctl's own PID.
    "$VSWITCHCTL" --socket "$SOCK" capture -w /dev/null "${P}c2" "${filter[@]}" \
        >/dev/null 2>"$WORK/$1.capture.log" &
    CAPTURE_PID=$!
    wait_for 10 grep -q "listening on" "$WORK/$1.capture.log" ||
        die "capture for $1 did not start: $(cat "$WORK/$1.capture.log")"
}

capture_down() {
    [ -z "$CAPTURE_PID" ] || stop_pid "$CAPTURE_PID"
    CAPTURE_PID=""
}

# ------------------------------------------------------ open vswitch ----

OVSCTL=(ovs-vsctl --db="unix:$OVS_DIR/db.sock" --timeout=10)

# Starts ovs-vswitchd in $P-ov against the private ovsdb-server; its PID in
# OVS_PID. Returns non-zero (OVS_REASON says why) when it does not come up
# or its ports do not forward.
ovs_up() {
    local deadline
    OVS_RUNDIR=$OVS_DIR OVS_LOGDIR=$OVS_DIR OVS_DBDIR=$OVS_DIR \
        setsid nsenter --net="/run/netns/$P-ov" ovs-vswitchd "unix:$OVS_DIR/db.sock" \
        --pidfile="$OVS_DIR/ovs-vswitchd.pid" --unixctl="$OVS_DIR/ovs-vswitchd.ctl" \
        --log-file="$OVS_DIR/ovs-vswitchd.log" >>"$OVS_DIR/ovs-vswitchd.out" 2>&1 </dev/null &
    OVS_PID=$!
    deadline=$((SECONDS + 15))
    until ip netns exec "$P-o1" ping -c 1 -W 1 -q 10.61.2.12 >/dev/null 2>&1; do
        if ! kill -0 "$OVS_PID" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
            OVS_REASON="ovs-vswitchd with afxdp ports did not forward within 15 s: $(grep -E 'ERR|WARN' "$OVS_DIR/ovs-vswitchd.log" | tail -n 2 | tr '\n' ' ')"
            return 1
        fi
    done
}

ovs_down() {
    [ -z "$OVS_PID" ] || stop_pid "$OVS_PID"
    OVS_PID=""
}

# The OVS topology and its ovsdb-server; OVS_REASON says why when it cannot be.
ovs_setup() {
    say "same-host open vswitch: $P-o1 <-> ovs-vswitchd (netdev datapath, afxdp ports) in $P-ov <-> $P-o2 (10.61.2.0/24)"
    add_ns "$P-ov"
    veth_into "$P-ov" p1 "$P-o1" 10.61.2.11
    veth_into "$P-ov" p2 "$P-o2" 10.61.2.12
    # An XDP program on p1/p2 turns the frames into xdp_buffs: a checksum
    # left to the hardware (CHECKSUM_PARTIAL) would never be filled in, so
    # the endpoints compute theirs (as OVS's afxdp documentation says).
    ip netns exec "$P-o1" ethtool -K eth0 tx off >/dev/null
    ip netns exec "$P-o2" ethtool -K eth0 tx off >/dev/null
    mkdir -p "$OVS_DIR"
    ovsdb-tool create "$OVS_DIR/conf.db" /usr/share/openvswitch/vswitch.ovsschema ||
        { OVS_REASON="ovsdb-tool create failed"; return 1; }
    OVS_RUNDIR=$OVS_DIR OVS_LOGDIR=$OVS_DIR OVS_DBDIR=$OVS_DIR \
        setsid ovsdb-server "$OVS_DIR/conf.db" --remote="punix:$OVS_DIR/db.sock" \
        --pidfile="$OVS_DIR/ovsdb-server.pid" --unixctl="$OVS_DIR/ovsdb-server.ctl" \
        --log-file="$OVS_DIR/ovsdb-server.log" >"$OVS_DIR/ovsdb-server.out" 2>&1 </dev/null &
    OVSDB_PID=$!
    wait_for 10 test -S "$OVS_DIR/db.sock" || { OVS_REASON="ovsdb-server did not start"; return 1; }
    "${OVSCTL[@]}" --no-wait init
    "${OVSCTL[@]}" --no-wait add-br br0 -- set bridge br0 datapath_type=netdev \
        -- add-port br0 p1 -- set interface p1 type=afxdp \
        -- add-port br0 p2 -- set interface p2 type=afxdp ||
        { OVS_REASON="ovs-vsctl add-br/add-port failed"; return 1; }
    ovs_up || return 1
    ovs_down
}

if [ -n "${RUN[fast]:-}" ]; then
    if [ -z "$OVS_REASON" ] && ovs_setup; then
        add_path sh-ovs "$P-o1" "$P-o2" 10.61.2.12 ovs
    else
        ovs_down
        say "open vswitch row not measured: $OVS_REASON"
    fi
fi

# ---------------------------------------------------------- uplink case ----

if [ -n "${RUN[uplink]:-}" ]; then
    say "uplink bridge: $P-ue (10.62.1.10) <-> br0 + uplink in $P-uh <-> $P-uo (10.62.1.100)"
    new_bridge "$P-uh" pu "$P-uo" 10.62.1.100 pe "$P-ue" 10.62.1.10
    add_path up-bridge-out "$P-ue" "$P-uo" 10.62.1.100 none
    add_path up-bridge-in "$P-uo" "$P-ue" 10.62.1.10 none
    n=2
    for backend in veth tap; do
        s=${backend:0:1}
        [ "$s" = t ] && s=p
        # The uplink's name carries the PID: vswitchd pins its XDP program
        # under /sys/fs/bpf/vswitch/<ifname>, one directory for every
        # namespace.
        say "uplink $backend: $P-${s}e (10.62.$n.10, $backend) <-> vswitchd, uplink ${P}${s}u (transparent) <-> $P-${s}o (10.62.$n.100)"
        veth_into "$NS_VH" "${P}${s}u" "$P-${s}o" "10.62.$n.100"
        ctl network create -d transparent --subnet "10.62.$n.0/24" -o interface="${P}${s}u" "${P}u$s" >/dev/null
        CREATED_NET+=("${P}u$s")
        ep_create "${P}u$s" "$P-${s}e" "10.62.$n.10" "${P}u${s}e" "$backend"
        add_path "up-$backend-out" "$P-${s}e" "$P-${s}o" "10.62.$n.100" vswitchd
        add_path "up-$backend-in" "$P-${s}o" "$P-${s}e" "10.62.$n.10" vswitchd
        for dir in out in; do
            row "uplink-$dir-$backend" "linux bridge" veth "up-bridge-$dir" "up-bridge-$dir" ""
            row "uplink-$dir-$backend" vswitch "$(backend_label "$backend")" "up-$backend-$dir" "up-bridge-$dir" ""
        done
        n=$((n + 1))
    done
fi

# ------------------------------------------------------------- nat case ----

if [ -n "${RUN[nat]:-}" ]; then
    say "nat masquerade: $P-me (172.31.1.10) <-> br0 (172.31.1.1, MASQUERADE) in $P-mh <-> $P-mo (10.63.1.2)"
    new_bridge "$P-mh" pe "$P-me" 172.31.1.10
    ip -n "$P-mh" addr add 172.31.1.1/24 dev br0
    veth_into "$P-mh" "${P}mu" "$P-mo" 10.63.1.2
    ip -n "$P-mh" addr add 10.63.1.1/24 dev "${P}mu"
    ip -n "$P-mh" route add default via 10.63.1.2
    ip -n "$P-me" route add default via 172.31.1.1
    ip netns exec "$P-mh" sysctl -q -w net.ipv4.ip_forward=1
    ip netns exec "$P-mh" iptables -t nat -A POSTROUTING -s 172.31.1.0/24 ! -o br0 -j MASQUERADE ||
        die "iptables MASQUERADE in $P-mh failed"
    say "nat vswitch: $P-ne (172.31.1.10) <-> vswitchd -d nat, uplink ${P}nu (10.63.1.1) <-> $P-no (10.63.1.2)"
    veth_into "$NS_VH" "${P}nu" "$P-no" 10.63.1.2
    ip -n "$NS_VH" addr add 10.63.1.1/24 dev "${P}nu"
    ip -n "$NS_VH" route add default via 10.63.1.2
    ctl network create -d nat --subnet 172.31.1.0/24 --gateway 172.31.1.1 -o interface="${P}nu" "${P}n" >/dev/null
    CREATED_NET+=("${P}n")
    ep_create "${P}n" "$P-ne" 172.31.1.10 "${P}ne" tap
    add_path nat-masq "$P-me" "$P-mo" 10.63.1.2 none
    add_path nat-vswitch "$P-ne" "$P-no" 10.63.1.2 vswitchd
    row nat "linux bridge + MASQUERADE" veth nat-masq nat-masq ""
    row nat "vswitch -d nat" tap nat-vswitch nat-masq ""
fi

# --------------------------------------------------------- overlay case ----

# ep_create_b NET NS ADDR NAME BACKEND: ep_create on host B.
ep_create_b() { ep_create_via ctl_b CREATED_EP_B "$@"; }

# ep_mac CTL NAME: the MAC of endpoint NAME, asked through CTL (ctl, ctl_b).
ep_mac() { "$1" endpoint inspect "$2" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["MacAddress"])'; }
# link_mtu NS DEV, link_mac NS DEV
link_mtu() { ip -n "$1" -j link show dev "$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["mtu"])'; }
link_mac() { ip -n "$1" -j link show dev "$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["address"])'; }

if [ -n "${RUN[overlay]:-}" ]; then
    NS_HB="$P-hb" NS_OF="$P-of"
    declare -A HOST_NS=([a]="$NS_VH" [b]="$NS_HB") PA=([a]=192.168.64.1 [b]=192.168.64.2)
    say "overlay fabric: br0 in $NS_OF; host A $NS_VH (uplink ${P}oa, ${PA[a]}), host B $NS_HB (uplink ${P}ob, ${PA[b]})"
    add_ns "$NS_HB"
    add_ns "$NS_OF"
    ip -n "$NS_OF" link add br0 type bridge
    ip -n "$NS_OF" link set br0 up
    for h in a b; do
        ns=${HOST_NS[$h]}
        # The uplink's name carries the PID, as on the uplink case.
        ip -n "$ns" link add "${P}o$h" type veth peer name "f$h" netns "$NS_OF"
        ip -n "$NS_OF" link set "f$h" master br0
        ip -n "$NS_OF" link set "f$h" up
        ip -n "$ns" addr add "${PA[$h]}/24" dev "${P}o$h"
        ip -n "$ns" link set "${P}o$h" up
    done
    OV_MTU=$(($(link_mtu "$NS_VH" "${P}oa") - 50))

    say "overlay bridge: $P-xa (10.64.1.11) <-> ovbr + ovx (VXLAN 4101, UDP 4790) on A <-> fabric <-> B <-> $P-xb (10.64.1.12), MTU $OV_MTU"
    declare -A XADDR=([a]=10.64.1.11 [b]=10.64.1.12) XMAC=()
    for h in a b; do
        ns=${HOST_NS[$h]}
        ip -n "$ns" link add ovx type vxlan id 4101 dstport 4790 local "${PA[$h]}" nolearning dev "${P}o$h"
        ip -n "$ns" link add ovbr type bridge
        ip -n "$ns" link set ovx master ovbr
        veth_into "$ns" ovp "$P-x$h" "${XADDR[$h]}"
        ip -n "$ns" link set ovp mtu "$OV_MTU" master ovbr
        ip -n "$P-x$h" link set eth0 mtu "$OV_MTU"
        ip -n "$ns" link set ovx up
        ip -n "$ns" link set ovbr up
        XMAC[$h]=$(link_mac "$P-x$h" eth0)
    done
    # Static entries, as the switch has them from its mappings: the remote
    # endpoint's MAC behind the remote PA (VXLAN FDB) and on the VXLAN port
    # (bridge FDB), its address at that MAC (no ARP across the fabric).
    for h in a b; do
        o=$([ "$h" = a ] && echo b || echo a)
        ns=${HOST_NS[$h]}
        ip netns exec "$ns" bridge fdb append "${XMAC[$o]}" dev ovx dst "${PA[$o]}"
        ip netns exec "$ns" bridge fdb add "${XMAC[$o]}" dev ovx master static
        ip -n "$P-x$h" neigh replace "${XADDR[$o]}" lladdr "${XMAC[$o]}" dev eth0 nud permanent
    done
    [ "$(link_mtu "$NS_VH" ovx)" -eq "$OV_MTU" ] || die "overlay bridge: ovx has MTU $(link_mtu "$NS_VH" ovx), not $OV_MTU"
    add_path ov-bridge "$P-xa" "$P-xb" 10.64.1.12 none

    say "overlay vswitch: $P-va (10.64.2.11) <-> vswitchd A, -d overlay vsid 4102 (UDP 4789) <-> fabric <-> vswitchd B <-> $P-vb (10.64.2.12)"
    say "starting a second private vswitchd in $NS_HB (host B; state and socket in $WORK)"
    mkdir -m 0700 "$STATE_B"
    setsid nsenter --net="/run/netns/$NS_HB" "$VSWITCHD" --state-dir "$STATE_B" --socket "$SOCK_B" \
        --log-level warn --detach-on-exit --conntrack-max "$CT_MAX" --conntrack-max-per-port "$CT_MAX" \
        >"$DLOG_B" 2>&1 </dev/null &
    DAEMON_B_PID=$!
    wait_daemon "$DAEMON_B_PID" "$SOCK_B" "$DLOG_B"
    ctl network create -d overlay --subnet 10.64.2.0/24 -o vsid=4102 -o interface="${P}oa" "${P}o" >/dev/null
    CREATED_NET+=("${P}o")
    ctl_b network create -d overlay --subnet 10.64.2.0/24 -o vsid=4102 -o interface="${P}ob" "${P}o" >/dev/null
    CREATED_NET_B+=("${P}o")
    ep_create "${P}o" "$P-va" 10.64.2.11 "${P}va" veth
    ep_create_b "${P}o" "$P-vb" 10.64.2.12 "${P}vb" veth
    ctl network mapping add "${P}o" --ip 10.64.2.12 --mac "$(ep_mac ctl_b "${P}vb")" --pa "${PA[b]}" >/dev/null
    ctl_b network mapping add "${P}o" --ip 10.64.2.11 --mac "$(ep_mac ctl "${P}va")" --pa "${PA[a]}" >/dev/null
    for ns in "$P-va" "$P-vb"; do
        [ "$(link_mtu "$ns" eth0)" -eq "$OV_MTU" ] || die "overlay vswitch: eth0 in $ns has MTU $(link_mtu "$ns" eth0), not $OV_MTU"
    done
    add_path ov-vswitch "$P-va" "$P-vb" 10.64.2.12 overlay
    row overlay "linux bridge + vxlan" veth ov-bridge ov-bridge ""
    row overlay vswitch "$(backend_label veth)" ov-vswitch ov-bridge ""
fi

# ------------------------------------------------------------ readiness ----

declare -A SERVING=()
for id in "${PATH_IDS[@]}"; do
    ns=${SERVER[$id]}
    if [ -z "${SERVING[$ns]:-}" ]; then
        # The nat outside hosts listen on their own address only.
        start_servers "$ns" "${ADDR[$id]}" -B "${ADDR[$id]}"
        start_sockperf "$ns" "${ADDR[$id]}"
        drop_udp_sink "$ns"
        SERVING[$ns]=1
    fi
    [ "$id" = sh-ovs ] || wait_path "${CLIENT[$id]}" "${ADDR[$id]}"
done

# ------------------------------------------------------------------ run ----

# measure ID ROUND: every test on path ID.
measure() {
    local id=$1 r=$2 c=${CLIENT[$1]} s=${SERVER[$1]} a=${ADDR[$1]} pid
    case ${CPU_OF[$id]} in
        ovs) pid=$OVS_PID ;;
        overlay) pid="$DAEMON_PID $DAEMON_B_PID" ;;
        *) pid=$DAEMON_PID ;;
    esac
    kill -0 "$DAEMON_PID" 2>/dev/null || die "vswitchd is no longer running"
    [ -z "$DAEMON_B_PID" ] || kill -0 "$DAEMON_B_PID" 2>/dev/null || die "vswitchd of host B is no longer running"
    run_iperf "$id.tcp1" "$c" "$a" "$r" "$pid" -P 1
    run_iperf "$id.tcp4" "$c" "$a" "$r" "$pid" -P 4
    run_pps "$id" "$c" "$s" "$a" "$r"
    run_latency "$id" "$c" "$a" "$r"
    run_conn "$id" "$c" "$a" "$r" "$pid"
}

for ((r = 1; r <= REPEAT; r++)); do
    # Interleaved rounds spread any drift of the machine over all paths.
    for id in "${PATH_IDS[@]}"; do
        if [ "$id" = sh-ovs ]; then
            if ! ovs_up; then
                say "open vswitch: $OVS_REASON"
                rm -f "$WORK"/sh-ovs.*
                ovs_down
                continue
            fi
        fi
        [ -z "${CAPTURE_FILTER[$id]+set}" ] || capture_up "$id"
        measure "$id" "$r"
        [ "$id" != sh-ovs ] || ovs_down
        capture_down
        say "round $r/$REPEAT: $id done"
    done
done

ctl stats --json >"$WORK/stats.json"
[ -z "$DAEMON_B_PID" ] || ctl_b stats --json >"$WORK/stats-b.json"

# -------------------------------------------------------------- report ----

# A path that did not run says why in its rows.
if [ -n "${RUN[fast]:-}" ] && [ ! -e "$WORK/sh-ovs.tcp1.1.json" ]; then
    sed -i "s|\tsh-ovs\tsh-bridge\t\$|\tsh-ovs\tsh-bridge\tnot measured: ${OVS_REASON//|/ }|" "$ROWS"
fi

set +e
report "$WORK" "$OUT" "$REPEAT" "$DURATION" "$OMIT" "$CLK_TCK" "$SMOKE" <"$REPO/scripts/bench_suite.py"
report_rc=$?
set -e
[ "$report_rc" -eq 0 ] || exit "$report_rc"
