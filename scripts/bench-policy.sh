#!/usr/bin/env bash
# What ACL policy costs (issue 7): iperf3 TCP and new TCP connections per
# second between two namespaces, in one run, on four paths of the same shape:
#
#   bridge   two veth pairs into a Linux bridge (in a namespace of its own)
#   none     two vswitch TAP endpoints on a private network, no policy
#   one      the same with one ACL rule on each endpoint (Allow In)
#   many     the same with --rules ACL rules on each endpoint (default
#            10,000): varied shapes (local and remote ports, /32 and /24
#            remote and local addresses, UDP, ICMP, both directions), none
#            matching the test traffic, then the same Allow as "one"
#
# and reports the ratios issue 7 sets targets for: policed TCP against the
# bridge (one/bridge >= 0.8), 10,000 rules against 1 for TCP (>= 0.9) and for
# new connections per second (>= 0.5). Prints a table and, as the last line
# of stdout, one JSON object. Everything it creates has $$ in its name and is
# removed on exit, failure or Ctrl-C.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/bench-policy.sh [--duration N] [--conn-duration N] [--repeat N]
                               [--rules N] [--conntrack-max N] [--smoke]
                               [--enforce] [--build]

Measures what ACL policies cost: iperf3 TCP throughput and new TCP connections
per second between two namespaces through a Linux bridge and through vswitch
with no policy, with 1 ACL rule and with N ACL rules on both endpoints, in the
same run, and reports the ratios. Needs root.

Options:
  --duration N       seconds per iperf3 test (default 10; the first second is
                     omitted as TCP warm-up when N >= 5)
  --conn-duration N  seconds per connection-rate test (default 5)
  --repeat N         run every path N times, interleaved, and report the
                     median (default 1)
  --rules N          ACL rules per endpoint on the "many" path, the final
                     Allow included (default 10000)
  --conntrack-max N  vswitchd's --conntrack-max and --conntrack-max-per-port
                     (default 4194304). The daemon's default per-port limit
                     (32768) with a 10 s timeout for reset connections would
                     cap a connection-rate test at about 3,300 connections/s;
                     this measures the pipeline, not the table's size
  --smoke            2-second tests, 1,000 rules, no thresholds: checks that
                     the benchmark itself works (for CI)
  --enforce          exit 3 when a ratio misses its target
  --build            run 'cargo build --release --workspace' even when the
                     binaries exist (default: only when they are missing)
  -h, --help         show this help

Output: a table on stdout, the ratios against their targets, then one JSON
line, e.g.
  {"bridge_gbps": 16.6, "none_gbps": 13.0, "one_gbps": 12.8, "many_gbps": 12.5,
   "bridge_cps": 21000, ..., "policed_ratio": 0.77, "rules_tcp_ratio": 0.98,
   "rules_conn_ratio": 0.93, "targets_met": false, ...}
policed_ratio is one/bridge TCP, rules_tcp_ratio and rules_conn_ratio are
many/one for TCP and connections per second.
Exit status: 0 ok, 1 setup or measurement failed, 3 a path moved no data or
failed every connection (not with --smoke), or with --enforce a ratio below
its target.

Topology (all names contain the script's PID <P>; subnets 10.57.{1,2,3,4}.0/24,
addressed only inside the script's own namespaces; clients .11, servers .12):
  bridge: vsp<P>-b1 eth0 --veth-- [br0 in vsp<P>-br] --veth-- eth0 vsp<P>-b2
  none:   vsp<P>-n1 eth0 (TAP) -- vswitchd -- (TAP) eth0 vsp<P>-n2
  one:    vsp<P>-o1 eth0 (TAP) -- vswitchd -- (TAP) eth0 vsp<P>-o2
  many:   vsp<P>-m1 eth0 (TAP) -- vswitchd -- (TAP) eth0 vsp<P>-m2
  (vswitchd: one private instance in the root namespace, state under /tmp)
Servers: iperf3 on 5201 and a connection server on 7000 in each *2
namespace. Clients use source ports 40000-60999, which no generated rule
names. The connection test is a small C program (built here with cc):
connect, one byte each way, close with a reset (no TIME_WAIT), in a loop.
EOF
}

# shellcheck source=scripts/bench-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

DURATION=10
CONN_DURATION=5
REPEAT=1
RULES=10000
CT_MAX=4194304
SMOKE=0
ENFORCE=0
FORCE_BUILD=0
RULES_GIVEN=0

while [ $# -gt 0 ]; do
    case "$1" in
        --duration) [ $# -ge 2 ] || die "--duration needs a value"; posint "$1" "$2"; DURATION=$2; shift 2 ;;
        --conn-duration) [ $# -ge 2 ] || die "--conn-duration needs a value"; posint "$1" "$2"; CONN_DURATION=$2; shift 2 ;;
        --repeat) [ $# -ge 2 ] || die "--repeat needs a value"; posint "$1" "$2"; REPEAT=$2; shift 2 ;;
        --rules) [ $# -ge 2 ] || die "--rules needs a value"; posint "$1" "$2"; RULES=$2; RULES_GIVEN=1; shift 2 ;;
        --conntrack-max) [ $# -ge 2 ] || die "--conntrack-max needs a value"; posint "$1" "$2"; CT_MAX=$2; shift 2 ;;
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
    [ "$RULES_GIVEN" -eq 1 ] || RULES=1000
fi
[ "$RULES" -le 30000 ] || die "--rules is at most 30000 (each rule gets a port of its own below 40000)"
OMIT=0
[ "$DURATION" -ge 5 ] && OMIT=1

[ "$(id -u)" -eq 0 ] || die "run as root (e.g. sudo $0): the benchmark creates network namespaces, veths, a bridge and TAP endpoints"

# ---------------------------------------------------------------- tools ----

need_bench_tools
need_cmd cc gcc

ensure_binaries "$FORCE_BUILD"

# ---------------------------------------------------- state and cleanup ----

bench_init vsp vswitch-bench-policy

start_daemon() {
    mkdir -m 0700 "$STATE"
    # setsid: a Ctrl-C on the terminal must not reach the daemon before
    # cleanup has removed the endpoints through it.
    setsid "$VSWITCHD" --state-dir "$STATE" --socket "$SOCK" --log-level warn \
        --conntrack-max "$CT_MAX" --conntrack-max-per-port "$CT_MAX" >"$DLOG" 2>&1 </dev/null &
    DAEMON_PID=$!
    wait_daemon "$DAEMON_PID" "$SOCK" "$DLOG"
}

build_connrate

say "running: ${DURATION}s per iperf3 test, ${CONN_DURATION}s per connection test, $REPEAT round(s), $RULES rules$([ "$SMOKE" -eq 1 ] && echo ', smoke')"

# ------------------------------------------------------------- topology ----

NS_BR="$P-br"
PATHS=(bridge none one many)
declare -A CLIENT_NS SERVER_NS SERVER_IP NET EP_C EP_S
n=1
for path in "${PATHS[@]}"; do
    short=${path:0:1}
    CLIENT_NS[$path]="$P-${short}1"
    SERVER_NS[$path]="$P-${short}2"
    SERVER_IP[$path]="10.57.$n.12"
    NET[$path]="${P}${short}"
    EP_C[$path]="${P}${short}1"
    EP_S[$path]="${P}${short}2"
    n=$((n + 1))
done

say "bridge path: ${CLIENT_NS[bridge]} <-> br0 in $NS_BR <-> ${SERVER_NS[bridge]} (10.57.1.0/24)"
add_ns "$NS_BR"
ip -n "$NS_BR" link add br0 type bridge
ip -n "$NS_BR" link set br0 up
for side in 1 2; do
    if [ "$side" -eq 1 ]; then ns=${CLIENT_NS[bridge]}; else ns=${SERVER_NS[bridge]}; fi
    add_ns "$ns"
    ip -n "$NS_BR" link add "p$side" type veth peer name eth0 netns "$ns"
    ip -n "$NS_BR" link set "p$side" master br0 up
    ip -n "$ns" addr add "10.57.1.1$side/24" dev eth0
    ip -n "$ns" link set eth0 up
done

say "starting a private vswitchd (state and socket in $WORK)"
start_daemon

n=2
for path in none one many; do
    ctl network create -d private --subnet "10.57.$n.0/24" "${NET[$path]}" >/dev/null
    CREATED_NET+=("${NET[$path]}")
    add_ns "${CLIENT_NS[$path]}"
    ctl endpoint create --network "${NET[$path]}" --netns "${CLIENT_NS[$path]}" --ip "10.57.$n.11" "${EP_C[$path]}" >/dev/null
    CREATED_EP+=("${EP_C[$path]}")
    add_ns "${SERVER_NS[$path]}"
    ctl endpoint create --network "${NET[$path]}" --netns "${SERVER_NS[$path]}" --ip "10.57.$n.12" "${EP_S[$path]}" >/dev/null
    CREATED_EP+=("${EP_S[$path]}")
    n=$((n + 1))
done
for path in "${PATHS[@]}"; do
    # Source ports above every port a generated rule names.
    ip netns exec "${CLIENT_NS[$path]}" sysctl -q -w net.ipv4.ip_local_port_range="40000 60999"
done

# ------------------------------------------------------------- policies ----

# gen_rules COUNT ROLE OUT_PREFIX: COUNT policies as JSON lists of at most
# 1000 in OUT_PREFIX.N.json; the last one is the Allow the "one" path has.
gen_rules() {
    python3 - "$1" "$2" "$3" <<'PYEOF'
import json, sys

count, role, prefix = int(sys.argv[1]), sys.argv[2], sys.argv[3]

def acl(i, action, direction, **fields):
    settings = {"Id": f"{role}-r{i}", "Action": action, "Direction": direction,
                "Priority": 100 + i % 60000}
    settings.update(fields)
    return {"Type": "ACL", "Settings": settings}

def rule(i):
    # Ports 10000-39999: none is 5201 or 7000, and clients use 40000-60999.
    port = 10000 + i
    a, b = (i >> 8) & 255, i & 255
    shape = i % 8
    if shape == 0:
        return acl(i, "Block", "In", Protocols="6", LocalPorts=str(port))
    if shape == 1:
        return acl(i, "Block", "Out", Protocols="6", RemotePorts=str(port))
    if shape == 2:
        return acl(i, "Block", "In", RemoteAddresses=f"172.16.{a}.{b}")
    if shape == 3:
        return acl(i, "Block", "Out", Protocols="17", RemoteAddresses=f"192.168.{a}.{b}/32",
                   RemotePorts=str(port))
    if shape == 4:
        return acl(i, "Block", "In", Protocols="6", RemoteAddresses=f"10.200.{b}.0/24",
                   LocalPorts=f"{port}-{port}")
    if shape == 5:
        return acl(i, "Block", "Out", Protocols="1", RemoteAddresses=f"172.31.{a}.{b}")
    if shape == 6:
        return acl(i, "Allow", "In", Protocols="17", LocalPorts=str(port))
    return acl(i, "Block", "In", Protocols="6", LocalAddresses=f"10.201.{a}.{b}/32")

rules = [rule(i) for i in range(count - 1)]
rules.append({"Type": "ACL", "Settings": {"Id": f"{role}-allow", "Action": "Allow",
                                          "Direction": "In", "Priority": 65500}})
for n, start in enumerate(range(0, len(rules), 1000)):
    with open(f"{prefix}.{n}.json", "w") as f:
        json.dump(rules[start:start + 1000], f)
PYEOF
}

# load_rules EP COUNT: adds COUNT rules to EP, checks policy ls counts them,
# and appends the seconds it took to $WORK/load.s.
load_rules() {
    local ep=$1 count=$2 t0 t1 f listed
    rm -f "$WORK/rules-$ep".*.json
    gen_rules "$count" "$ep" "$WORK/rules-$ep"
    t0=$(date +%s.%N)
    for f in "$WORK/rules-$ep".*.json; do
        ctl policy add --endpoint "$ep" --file "$f" >/dev/null || die "policy add of $f to $ep failed"
    done
    t1=$(date +%s.%N)
    listed=$(ctl policy ls --endpoint "$ep" --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
    [ "$listed" -eq "$count" ] || die "$ep has $listed policies after adding $count"
    echo "$ep $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')" >>"$WORK/load.s"
}

say "policies: 1 rule on each endpoint of ${NET[one]}, $RULES on each of ${NET[many]}"
for ep in "${EP_C[one]}" "${EP_S[one]}"; do load_rules "$ep" 1; done
for ep in "${EP_C[many]}" "${EP_S[many]}"; do load_rules "$ep" "$RULES"; done
say "seconds to load the rules, per endpoint: $(awk '{ printf "%s%s %s", sep, $1, $2; sep = ", " }' "$WORK/load.s")"

for path in "${PATHS[@]}"; do
    start_servers "${SERVER_NS[$path]}" "${SERVER_IP[$path]}"
    wait_path "${CLIENT_NS[$path]}" "${SERVER_IP[$path]}"
done

# ------------------------------------------------------------------ run ----

for ((r = 1; r <= REPEAT; r++)); do
    # Interleaved rounds spread any drift of the machine over all paths.
    for path in "${PATHS[@]}"; do
        run_iperf "$path" "${CLIENT_NS[$path]}" "${SERVER_IP[$path]}" "$r" "$DAEMON_PID"
        run_conn "$path" "${CLIENT_NS[$path]}" "${SERVER_IP[$path]}" "$r" "$DAEMON_PID"
    done
    say "round $r/$REPEAT done"
done

ctl stats --json >"$WORK/stats.json"
for path in one many; do
    ctl policy ls --endpoint "${EP_S[$path]}" --json >"$WORK/policies-$path.json"
done

# -------------------------------------------------------------- report ----

set +e
report "$WORK" "$REPEAT" "$DURATION" "$OMIT" "$CONN_DURATION" "$CLK_TCK" "$SMOKE" "$ENFORCE" "$RULES" \
    "${NET[none]}" "${NET[one]}" "${NET[many]}" <<'PYEOF'
import json, sys
from bench_report import check_targets, conn, drops_by_reason, finish, ratio, tcp

(work, repeat, duration, omit, conn_duration, clk_tck, smoke, enforce, rules,
 net_none, net_one, net_many) = sys.argv[1:]
repeat, duration, omit, conn_duration = int(repeat), int(duration), int(omit), int(conn_duration)
clk_tck, rules = int(clk_tck), int(rules)
smoke, enforce = smoke == "1", enforce == "1"

def result(name):
    gbps, retr, cpu = tcp(work, name, repeat, clk_tck)
    cps, fails, _ = conn(work, name, repeat, clk_tck)
    return {"gbps": gbps, "retr": retr, "cpu": cpu, "cps": cps, "fails": fails}

with open(f"{work}/stats.json") as f:
    stats = json.load(f)

res = {name: result(name) for name in ("bridge", "none", "one", "many")}
nets = {"bridge": None, "none": net_none, "one": net_one, "many": net_many}
labels = {"bridge": "linux bridge", "none": "vswitch, no policy", "one": "vswitch, 1 rule",
          "many": f"vswitch, {rules} rules"}
secs = duration + omit
base = res["bridge"]

print()
print(f"iperf3 TCP {duration} s{' (+1 s omitted)' if omit else ''} and new TCP connections for "
      f"{conn_duration} s, namespace -> namespace, median of {repeat}")
print(f"{'path':<24} {'Gbit/s':>7} {'ratio':>6} {'retrans':>8} {'conn/s':>8} {'ratio':>6} "
      f"{'failed':>6} {'vswitchd CPU':>15}  drops")
for name in ("bridge", "none", "one", "many"):
    r = res[name]
    cpu = "-" if name == "bridge" else f"{r['cpu']:6.2f} s ({100 * r['cpu'] / secs:3.0f}%)"
    d = "-" if nets[name] is None else (", ".join(f"{k} {v}" for k, v in sorted(drops_by_reason(stats, nets[name]).items())) or "0")
    print(f"{labels[name]:<24} {r['gbps']:7.2f} {ratio(r['gbps'], base['gbps']):6.2f} {r['retr']:8.0f} "
          f"{r['cps']:8.0f} {ratio(r['cps'], base['cps']):6.2f} {r['fails']:6d} {cpu:>15}  {d}")
print("(ratio: to the linux bridge; vswitchd CPU: its user+system time during the iperf3 test, % of one core)")

def hits(path):
    with open(f"{work}/policies-{path}.json") as f:
        return sum(p.get("Hits") or 0 for p in json.load(f))

targets = [
    ("policed_ratio", "policed TCP (1 rule) / linux bridge", ratio(res["one"]["gbps"], base["gbps"]), 0.8),
    ("rules_tcp_ratio", f"{rules} rules / 1 rule, TCP", ratio(res["many"]["gbps"], res["one"]["gbps"]), 0.9),
    ("rules_conn_ratio", f"{rules} rules / 1 rule, conn/s", ratio(res["many"]["cps"], res["one"]["cps"]), 0.5),
]
print()
met = check_targets(targets, 40)
print(f"ACL hits on the server endpoints: 1 rule {hits('one')}, {rules} rules {hits('many')}")
print()

failed = []
if not smoke:
    for name, r in res.items():
        if r["gbps"] <= 0:
            failed.append(f"{labels[name]} moved no TCP data")
        if r["cps"] <= 0:
            failed.append(f"{labels[name]} completed no connection")
    if enforce and not met:
        failed.append("a ratio is below its target (--enforce)")

loads = {}
with open(f"{work}/load.s") as f:
    for line in f:
        ep, s = line.split()
        loads[ep] = float(s)
out = {}
for name, r in res.items():
    out[f"{name}_gbps"] = round(r["gbps"], 3)
    out[f"{name}_cps"] = round(r["cps"])
    out[f"{name}_conn_failures"] = r["fails"]
for name in ("none", "one", "many"):
    out[f"{name}_cpu_s"] = round(res[name]["cpu"], 2)
out["unpoliced_ratio"] = round(ratio(res["none"]["gbps"], base["gbps"]), 3)
for key, _, value, _ in targets:
    out[key] = round(value, 3)
out["policed_conn_ratio"] = round(ratio(res["one"]["cps"], base["cps"]), 3)
out["targets_met"] = met
out["rules"] = rules
out["rules_load_s"] = round(max(loads.values()), 2) if loads else None
out.update({"duration_s": duration, "conn_duration_s": conn_duration, "repeat": repeat, "smoke": smoke})
finish(failed, out)
PYEOF
report_rc=$?
set -e
[ "$report_rc" -eq 0 ] || exit "$report_rc"
