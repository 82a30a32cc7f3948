"""What the reports of the bench-*.sh scripts share: a path's rounds read
back from the run's directory as medians, ratios, drop counts and targets.

A script's report is a python3 program on stdin, run through `report` in
scripts/bench-lib.sh, which makes this module importable. The files read
are the ones run_iperf and run_conn in bench-lib.sh write.
"""

import json
import re
import statistics
import sys


def median(xs):
    return statistics.median(xs) if xs else 0.0


def ratio(a, b):
    return a / b if b > 0 else 0.0


def tcp(work, name, repeat, clk_tck):
    """Medians over the iperf3 rounds NAME.1 .. NAME.REPEAT: Gbit/s
    received, retransmits, and vswitchd's CPU seconds during the test."""
    gbps, retr, cpu = [], [], []
    for r in range(1, repeat + 1):
        with open(f"{work}/{name}.{r}.json") as f:
            end = json.load(f)["end"]
        # Receiver side: what actually crossed the switch.
        gbps.append(end["sum_received"]["bits_per_second"] / 1e9)
        retr.append(end["sum_sent"].get("retransmits", 0))
        with open(f"{work}/{name}.{r}.cpu") as f:
            cpu.append(int(f.read()) / clk_tck)
    return median(gbps), median(retr), median(cpu)


def conn(work, name, repeat, clk_tck):
    """Over the connection-rate rounds NAME.1 .. NAME.REPEAT: the median
    connections per second, the failed connections of all rounds, and the
    median of vswitchd's CPU seconds during the test."""
    cps, fails, cpu = [], [], []
    for r in range(1, repeat + 1):
        with open(f"{work}/{name}.{r}.conn") as f:
            c = json.load(f)
        cps.append(c["connections"] / c["seconds"])
        fails.append(c["failures"])
        with open(f"{work}/{name}.{r}.conncpu") as f:
            cpu.append(int(f.read()) / clk_tck)
    return median(cps), sum(fails), median(cpu)


def drops_by_reason(stats, net):
    """The drops of network NET's ports in `stats --json` (STATS), by
    reason; reasons that counted none are left out."""
    by_reason = {}
    for p in stats:
        if p.get("Network") == net:
            for reason, n in p.get("Drops", {}).items():
                if n:
                    by_reason[reason] = by_reason.get(reason, 0) + n
    return by_reason


def check_targets(targets, width):
    """Prints a line per (key, what, value, target) of TARGETS, WHAT in a
    column WIDTH wide; whether every value reaches its target."""
    met = True
    for _, what, value, target in targets:
        ok = value >= target
        met = met and ok
        print(f"{what:<{width}} {value:5.2f}  (target >= {target:.2f})  {'ok' if ok else 'BELOW'}")
    return met


def finish(failed, out):
    """Prints the FAILED messages on stderr and OUT as one JSON line, the
    last of stdout; exits 3 when anything failed, else 0."""
    for msg in failed:
        print(f"FAIL: {msg}", file=sys.stderr)
    print(json.dumps(out))
    sys.exit(3 if failed else 0)


def latency(work, name, repeat):
    """Medians over the sockperf rounds NAME.1 .. NAME.REPEAT: round-trip
    p50 and p99 in microseconds."""
    p50, p99 = [], []
    for r in range(1, repeat + 1):
        with open(f"{work}/{name}.{r}.lat") as f:
            text = f.read()
        p50.append(_percentile(text, "50.000"))
        p99.append(_percentile(text, "99.000"))
    return median(p50), median(p99)


def _percentile(text, which):
    m = re.search(r"percentile " + re.escape(which) + r" = +([0-9.]+)", text)
    return float(m.group(1)) if m else 0.0


def pps(work, name, repeat):
    """Medians over the packet-rate rounds NAME.1 .. NAME.REPEAT: packets
    per second received and sent."""
    rx, tx = [], []
    for r in range(1, repeat + 1):
        with open(f"{work}/{name}.{r}.pps") as f:
            p = json.load(f)
        rx.append(p["rx"] / p["seconds"])
        tx.append(p["tx"] / p["seconds"])
    return median(rx), median(tx)
