#!/usr/bin/env bash
# FDB hash flooding (issue 6, item 3): frames per second vswitch switches
# from a port sending from random source MACs, and from MACs chosen to
# collide under the FDB's old fixed hash; and iperf3 on another network of
# the same daemon alone, during the random flood and during the colliding one.
#
# The measurement is the ignored `bench_fdb_flood` entry of tests/fdb_flood.rs
# (the topology, the AF_PACKET sendmmsg sender and the MAC sets live there, in
# one place with the test that guards them); this script builds it, runs it
# with the durations asked for and reports. Everything it creates is in
# namespaces of its own, removed on exit or failure by the test's harness.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/bench-fdb.sh [--duration N] [--rounds N] [--smoke] [--min-ratio R] [--build]

Measures, through one private vswitchd:
  network A  a spoofing-allowed endpoint sends 60-byte frames (500k/s offered)
             to a second endpoint from 10,000 source MACs, (a) random ones and
             (b) ones colliding under the FDB's pre-issue-6 hash; the figure is
             frames/s delivered to the receiver (its port's TxPackets)
  network B  iperf3 TCP between two endpoints: alone, during (a), during (b)
Needs root.

Options:
  --duration N   seconds per measurement window and per iperf3 run (default 5)
  --rounds N     rounds of (a) then (b); each kind's best round is reported
                 (default 2)
  --smoke        1-second windows, 1 round, no threshold: checks that the
                 benchmark itself works (for CI)
  --min-ratio R  exit 3 when colliding/random frames/s is below R (default 0.6;
                 ignored with --smoke)
  --build        build even when the binaries exist
  -h, --help     show this help

Output: lines on stderr from the measurement, a summary, and as the last line
of stdout one JSON object, e.g.
  {"random_fps": 265589, "colliding_fps": 257501, "ratio": 0.970,
   "b_alone_gbps": 12.9, "b_random_flood_gbps": 10.7,
   "b_colliding_flood_gbps": 9.9, "learned_random": 1024, "learned_colliding": 1024}
Exit status: 0 ok, 1 setup or measurement failed, 3 below --min-ratio.
EOF
}

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION=5
ROUNDS=2
SMOKE=0
MIN_RATIO=0.6
FORCE_BUILD=0

while [ $# -gt 0 ]; do
    case "$1" in
        --duration) [ $# -ge 2 ] || die "--duration needs a value"; posint "$1" "$2"; DURATION=$2; shift 2 ;;
        --rounds) [ $# -ge 2 ] || die "--rounds needs a value"; posint "$1" "$2"; ROUNDS=$2; shift 2 ;;
        --min-ratio)
            [ $# -ge 2 ] || die "--min-ratio needs a value"
            [[ "$2" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--min-ratio expects a number such as 0.6, got '$2'"
            MIN_RATIO=$2; shift 2 ;;
        --smoke) SMOKE=1; shift ;;
        --build) FORCE_BUILD=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument '$1'" ;;
    esac
done
if [ "$SMOKE" -eq 1 ]; then DURATION=1; ROUNDS=1; fi

need_root
install_deps
ensure_bpffs

cd "$REPO"
# The test binary finds vswitchd and vswitchctl beside it (target/release),
# so both come from the same build.
if [ "$FORCE_BUILD" -eq 1 ] || [ ! -x "$VSWITCHD" ] || [ ! -x "$VSWITCHCTL" ]; then
    build
fi
say "building the measurement (tests/fdb_flood.rs)"
TEST_BIN=$(cargo test --release -p vswitch-systests --test fdb_flood --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "fdb_flood":
        print(m["executable"])')
[ -x "$TEST_BIN" ] || die "could not build the fdb_flood test binary"

say "measuring: ${DURATION}s windows, $ROUNDS round(s) of random then colliding MACs"
OUT=$(FDB_BENCH_SECS=$DURATION FDB_BENCH_ROUNDS=$ROUNDS \
    "$TEST_BIN" --ignored --exact bench_fdb_flood --nocapture --test-threads 1) ||
    die "the measurement failed (its output is above)"
JSON=$(printf '%s\n' "$OUT" | grep -o '{"random_fps.*}' | tail -n 1 || true)
[ -n "$JSON" ] || die "the measurement printed no result"

python3 - "$JSON" <<'EOF'
import json, sys
r = json.loads(sys.argv[1])
print(f"{'source MACs':<12} {'frames/s':>10}   {'iperf3 on B':>12}")
print(f"{'none':<12} {'-':>10}   {r['b_alone_gbps']:>8.2f} Gbit/s")
print(f"{'random':<12} {r['random_fps']:>10.0f}   {r['b_random_flood_gbps']:>8.2f} Gbit/s")
print(f"{'colliding':<12} {r['colliding_fps']:>10.0f}   {r['b_colliding_flood_gbps']:>8.2f} Gbit/s")
print(f"colliding/random: {r['ratio']:.2f}   MACs learned on the flood port: "
      f"{r['learned_random']} (random), {r['learned_colliding']} (colliding)")
EOF
printf '%s\n' "$JSON"

if [ "$SMOKE" -eq 0 ]; then
    RATIO=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["ratio"])' "$JSON")
    if python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) < float(sys.argv[2]) else 1)' "$RATIO" "$MIN_RATIO"; then
        printf 'colliding MACs switched at %s of the random rate, below %s\n' "$RATIO" "$MIN_RATIO" >&2
        exit 3
    fi
fi
