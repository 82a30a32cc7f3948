"""The report of scripts/bench.sh: reads the run's results back, prints the
values and the ratios to the Linux bridge with the project's targets beside
them, and writes bench.csv, bench.txt and bench.png (gnuplot) into the
output directory.

Run through `report` in scripts/bench-lib.sh (python3 on stdin, with
bench_report importable): ARGS are WORK OUT REPEAT DURATION OMIT CLK_TCK
SMOKE. WORK/rows.tsv names the rows: case, competitor, backend, path, the
bridge path of the case, note. Exits 3 when a vswitch or bridge path moved
nothing (a broken benchmark), never for a ratio below its target.
"""

import csv
import os
import subprocess
import sys

from bench_report import conn, latency, pps, ratio, tcp

work, out, repeat, duration, omit, clk_tck, smoke = sys.argv[1:]
repeat, duration, omit, clk_tck = int(repeat), int(duration), int(omit), int(clk_tck)
smoke = smoke == "1"

# measure key, column title, unit, higher is better
MEASURES = [
    ("tcp1", "TCP1", "Gbit/s", True),
    ("tcp4", "TCP4", "Gbit/s", True),
    ("pps", "pps", "packets/s", True),
    ("p50", "p50", "us", False),
    ("p99", "p99", "us", False),
    ("cps", "conn/s", "connections/s", True),
]


def measured(path):
    return os.path.exists(f"{work}/{path}.tcp1.1.json")


values = {}


def result(path):
    """The medians of every measure of PATH, or None when it did not run."""
    if path in values:
        return values[path]
    if not measured(path):
        values[path] = None
        return None
    tcp1, retr, cpu = tcp(work, f"{path}.tcp1", repeat, clk_tck)
    tcp4, _, _ = tcp(work, f"{path}.tcp4", repeat, clk_tck)
    rx, tx = pps(work, path, repeat)
    p50, p99 = latency(work, path, repeat)
    cps, fails, _ = conn(work, path, repeat, clk_tck)
    values[path] = {"tcp1": tcp1, "tcp4": tcp4, "pps": rx, "pps_tx": tx, "p50": p50, "p99": p99,
                    "cps": cps, "cpu": cpu, "retr": retr, "fails": fails}
    return values[path]


rows = []
with open(f"{work}/rows.tsv") as f:
    for line in f:
        case, competitor, backend, path, base, note = line.rstrip("\n").split("\t")
        rows.append({"case": case, "competitor": competitor, "backend": backend, "path": path,
                     "base": base, "note": note, "res": result(path), "bres": result(base)})


def target_for(row):
    """(measure, 'ge'|'le', threshold, reference path, text) of ROW's targets."""
    case, path = row["case"], row["path"]
    if path == "sh-fast":
        return [("tcp1", "ge", 1.0, "sh-bridge", ">= 1.0x bridge"),
                ("pps", "ge", 1.5, "sh-bridge", ">= 1.5x bridge"),
                ("p50", "le", 1.0, "sh-bridge", "<= 1.0x bridge")]
    if path == "sh-acl":
        return [("tcp1", "ge", 0.95, "sh-fast", ">= 0.95x vswitch fast")]
    if path == "cap-off":
        return [("tcp1", "ge", 1.0, "sh-bridge", ">= 1.0x bridge")]
    if path == "cap-nomatch":
        return [("tcp1", "ge", 0.9, "cap-off", ">= 0.9x no capture")]
    if case.startswith("uplink-") and path.startswith("up-veth-"):
        return [("tcp1", "ge", 0.95, row["base"], ">= 0.95x bridge")]
    if case.startswith("uplink-") and path.startswith("up-tap-"):
        return [("tcp1", "ge", 0.7, row["base"], ">= 0.7x bridge")]
    if path == "ov-vswitch":
        return [("tcp1", "ge", 0.9, "ov-bridge", ">= 0.9x bridge"),
                ("tcp4", "ge", 0.9, "ov-bridge", ">= 0.9x bridge")]
    return []


def fmt(v, unit):
    if v is None:
        return "-"
    if unit == "packets/s":
        return f"{v / 1e3:.0f}k"
    if unit == "us":
        return f"{v:.1f}"
    if unit == "connections/s":
        return f"{v:.0f}"
    return f"{v:.2f}"


lines = []
secs = duration + omit
lines.append(f"vswitch benchmark suite: {duration} s per test{' (TCP: +1 s omitted)' if omit else ''}, "
             f"median of {repeat} round(s){', smoke' if smoke else ''}")
lines.append("")
lines.append("values (pps: received, sent in brackets; p50/p99: UDP round trip in us; CPU: switch daemon "
             "during TCP1, % of one core; retr: TCP1's retransmits)")
head = (f"{'case':<17} {'competitor':<27} {'backend':<9} {'TCP1':>6} {'TCP4':>6} {'pps (sent)':>14} "
        f"{'p50':>7} {'p99':>7} {'conn/s':>7} {'CPU':>5} {'retr':>6}")
lines.append(head)
for row in rows:
    r = row["res"]
    backend = row["backend"] if len(row["backend"]) <= 9 else row["backend"][:3] + "*"
    if r is None:
        lines.append(f"{row['case']:<17} {row['competitor']:<27} {backend:<9} {row['note'] or 'not measured'}")
        continue
    cpu = "-" if row["path"] in (row["base"],) else f"{100 * r['cpu'] / secs:.0f}%"
    ppsx = f"{fmt(r['pps'], 'packets/s')} ({fmt(r['pps_tx'], 'packets/s')})"
    lines.append(f"{row['case']:<17} {row['competitor']:<27} {backend:<9} {r['tcp1']:6.2f} {r['tcp4']:6.2f} "
                 f"{ppsx:>14} {r['p50']:7.1f} {r['p99']:7.1f} {r['cps']:7.0f} {cpu:>5} {r['retr']:6.0f}")
if any(len(row["backend"]) > 9 for row in rows):
    lines.append("(tap*: " + next(row["backend"] for row in rows if len(row["backend"]) > 9) + ")")

lines.append("")
lines.append("ratios to the linux bridge of the case (TCP, pps, conn/s: higher is better; "
             "p50, p99: competitor/bridge, lower is better)")
lines.append(f"{'case':<17} {'competitor':<27} {'TCP1':>6} {'TCP4':>6} {'pps':>6} {'p50':>6} {'p99':>6} "
             f"{'conn/s':>6}  target")
csv_rows = []
checks = []
for row in rows:
    r, b = row["res"], row["bres"]
    targets = {t[0]: t for t in target_for(row)}
    cells = []
    for key, _, unit, _ in MEASURES:
        value = r[key] if r else None
        base = b[key] if b else None
        rt = ratio(value, base) if value is not None and base is not None else None
        cells.append(rt)
        target, met, note = "", "", row["note"]
        t = targets.get(key)
        if t and r:
            _, kind, threshold, ref, text = t
            refres = result(ref)
            tr = ratio(value, refres[key]) if refres else None
            target = text
            if tr is not None:
                ok = tr >= threshold if kind == "ge" else tr <= threshold
                met = "yes" if ok else "no"
                checks.append((row["case"], row["competitor"], key, tr, text, ok))
                if ref != row["base"]:
                    note = (note + "; " if note else "") + f"ratio to {ref}: {tr:.3f}"
            else:
                note = (note + "; " if note else "") + f"{ref} not measured"
        csv_rows.append([row["case"], row["competitor"], row["backend"], key, unit,
                         "" if value is None else round(value, 3), "" if base is None else round(base, 3),
                         "" if rt is None else round(rt, 3), target, met, note])
    # Retransmits: a value beside the bridge's, no ratio (the bridge's is often 0).
    csv_rows.append([row["case"], row["competitor"], row["backend"], "retr", "segments",
                     r["retr"] if r else "", b["retr"] if b else "", "", "", "", row["note"]])
    if row["path"] == row["base"]:
        row["ratios"] = None
        continue
    row["ratios"] = cells
    ttext = ", ".join(f"{t[0]} {t[4]}" for t in targets.values()) or "-"
    if r is None:
        lines.append(f"{row['case']:<17} {row['competitor']:<27} {row['note'] or 'not measured'}")
        continue
    lines.append(f"{row['case']:<17} {row['competitor']:<27} " +
                 " ".join(f"{c:5.2f}x" if c is not None else f"{'-':>6}" for c in cells) + f"  {ttext}")

lines.append("")
lines.append("targets (shown, not enforced)")
for case, competitor, key, value, text, ok in checks:
    lines.append(f"  {case:<17} {competitor:<16} {key:<5} {value:5.2f}x  target {text:<22} {'ok' if ok else 'BELOW'}")
if not checks:
    lines.append("  (no case with a target was run)")

failed = []
for row in rows:
    if "open vswitch" in row["competitor"]:
        continue
    r = row["res"]
    if r is None:
        failed.append(f"{row['case']} / {row['competitor']}: not measured")
        continue
    for key, title, _, _ in MEASURES:
        if r[key] <= 0:
            failed.append(f"{row['case']} / {row['competitor']}: {title} is 0")

with open(f"{out}/bench.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["case", "competitor", "backend", "measure", "unit", "value", "bridge", "ratio", "target",
                "target_met", "note"])
    w.writerows(csv_rows)

# The chart: one group of bars per non-bridge row, a bar per measure.
with open(f"{out}/bench-ratios.dat", "w") as f:
    f.write("# label " + " ".join(m[0] for m in MEASURES) + "\n")
    for row in rows:
        if row.get("ratios") is None:
            continue
        label = f"{row['case']}\\n{row['competitor']}"
        f.write(f"\"{label}\" " + " ".join("NaN" if c is None else f"{c:.4f}" for c in row["ratios"]) + "\n")
plot = f"""set terminal pngcairo size 1400,700 font ",10"
set output "{out}/bench.png"
set title "vswitch / Linux bridge, same topology, same run ({duration} s tests, median of {repeat})"
set datafile missing "NaN"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set ylabel "ratio to the Linux bridge, log scale (p50, p99: lower is better)"
set logscale y
set yrange [0.01:*]
set bmargin 5
set grid ytics mytics
set key outside right top
set xtics noenhanced
set arrow from graph 0, first 1 to graph 1, first 1 nohead dashtype 2 linewidth 2
plot "{out}/bench-ratios.dat" using 2:xtic(1) title "TCP 1 stream", \\
     "" using 3 title "TCP 4 streams", "" using 4 title "64-byte pps", \\
     "" using 5 title "p50 RTT", "" using 6 title "p99 RTT", "" using 7 title "conn/s"
"""
with open(f"{out}/bench.gp", "w") as f:
    f.write(plot)
gp = subprocess.run(["gnuplot", f"{out}/bench.gp"], capture_output=True, text=True)
if gp.returncode != 0 or not os.path.exists(f"{out}/bench.png"):
    failed.append(f"gnuplot failed: {gp.stderr.strip()[:300]}")

lines.append("")
lines.append(f"written: {out}/bench.csv, {out}/bench.png, {out}/bench.txt, raw results in {out}/raw")
text = "\n".join(lines)
print(text)
with open(f"{out}/bench.txt", "w") as f:
    f.write(text + "\n")
for msg in failed:
    print(f"FAIL: {msg}", file=sys.stderr)
sys.exit(3 if failed else 0)
