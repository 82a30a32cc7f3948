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

# shellcheck source=scripts/bench-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

DURATION=10
CONN_DURATION=5
REPEAT=1
SMOKE=0
ENFORCE=0
FORCE_BUILD=0
NAT_PORTS=""
CT_MAX=4194304

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

need_bench_tools
need_cmd iptables iptables
need_cmd nsenter util-linux
need_cmd cc gcc

ensure_binaries "$FORCE_BUILD"
ensure_bpffs

# ---------------------------------------------------- state and cleanup ----

bench_init vsn vswitch-bench-nat

SUBNET=172.31.1.0/24 GATEWAY=172.31.1.1 IP_EP=172.31.1.10
IP_UP=10.58.1.1 IP_OUT=10.58.1.2
NS_MH="$P-mh" NS_ME="$P-me" NS_MO="$P-mo"
NS_VH="$P-vh" NS_VE="$P-ve" NS_VO="$P-vo"
# vswitchd pins its XDP program under /sys/fs/bpf/vswitch/<ifname>, one
# directory for every namespace: the uplink's name carries the PID.
UP_M="${P}mu" UP_V="${P}vu"
NET="${P}nat" EP="${P}ep"

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
    wait_daemon "$DAEMON_PID" "$SOCK" "$DLOG"
}

build_connrate

# ------------------------------------------------------------ readiness ----

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
    start_servers "$out_ns" "$IP_OUT" -B "$IP_OUT"
    wait_path "$ep_ns" "$IP_OUT"
    check_translated "$ep_ns" "$out_ns"
done
say "both endpoints reach $IP_OUT as $IP_UP"

# ------------------------------------------------------------------ run ----

PATHS=(masq vswitch)
declare -A CLIENT_NS=([masq]="$NS_ME" [vswitch]="$NS_VE")
for ((r = 1; r <= REPEAT; r++)); do
    # Interleaved rounds spread any drift of the machine over both paths.
    for path in "${PATHS[@]}"; do
        run_iperf "$path" "${CLIENT_NS[$path]}" "$IP_OUT" "$r" "$DAEMON_PID"
        run_iperf "${path}_rev" "${CLIENT_NS[$path]}" "$IP_OUT" "$r" "$DAEMON_PID" -R
        run_conn "$path" "${CLIENT_NS[$path]}" "$IP_OUT" "$r" "$DAEMON_PID"
    done
    say "round $r/$REPEAT done"
done

ctl stats --json >"$WORK/stats.json"
ip netns exec "$NS_MH" iptables -t nat -L POSTROUTING -v -n -x >"$WORK/masq-rule.txt" 2>&1 || true

# -------------------------------------------------------------- report ----

set +e
report "$WORK" "$REPEAT" "$DURATION" "$OMIT" "$CONN_DURATION" "$CLK_TCK" "$SMOKE" "$ENFORCE" \
    "$NET" "$POOL" <<'PYEOF'
import json, sys
from bench_report import check_targets, conn, drops_by_reason, finish, ratio, tcp

(work, repeat, duration, omit, conn_duration, clk_tck, smoke, enforce, net, pool) = sys.argv[1:]
repeat, duration, omit, conn_duration = int(repeat), int(duration), int(omit), int(conn_duration)
clk_tck = int(clk_tck)
smoke, enforce = smoke == "1", enforce == "1"

res = {}
for path in ("masq", "vswitch"):
    gbps, retr, cpu = tcp(work, path, repeat, clk_tck)
    rev, rev_retr, _ = tcp(work, f"{path}_rev", repeat, clk_tck)
    cps, fails, conn_cpu = conn(work, path, repeat, clk_tck)
    res[path] = {"gbps": gbps, "retr": retr, "cpu": cpu, "rev": rev, "rev_retr": rev_retr,
                 "cps": cps, "fails": fails, "conn_cpu": conn_cpu}

with open(f"{work}/stats.json") as f:
    stats = json.load(f)
net_drops = drops_by_reason(stats, net)

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
      + (", ".join(f"{k} {n}" for k, n in sorted(net_drops.items())) or "none"))

targets = [
    ("tcp_ratio", "vswitch / MASQUERADE, TCP", ratio(v["gbps"], m["gbps"]), 0.8),
    ("conn_ratio", "vswitch / MASQUERADE, conn/s", ratio(v["cps"], m["cps"]), 0.5),
]
print()
met = check_targets(targets, 32)
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
out["vswitch_drops"] = net_drops
out.update({"duration_s": duration, "conn_duration_s": conn_duration, "repeat": repeat, "smoke": smoke})
finish(failed, out)
PYEOF
report_rc=$?
set -e
[ "$report_rc" -eq 0 ] || exit "$report_rc"
