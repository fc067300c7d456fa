#!/usr/bin/env python3
"""Plots a bench/migrate CSV (--csv FILE) with gnuplot: per link, each side's
median with its interquartile range, for the total time, QEMU's downtime and
the gap the guest's observer saw.

Usage: scripts/plot-migrate.py CSV OUT.svg|OUT.png
Needs gnuplot (Debian: gnuplot-nox). Statistics as bench/stats.h computes
them: median and quartiles with linear interpolation.
"""
import csv
import os
import subprocess
import sys
import tempfile

from gnuplot_bars import bar_chart_preamble

SIDES = ["plain QEMU", "plain QEMU + TLS", "vmgrid"]
PANELS = [
    ("total_ms", "total (ms, log scale)", True),
    ("qemu_downtime_ms", "QEMU's downtime (ms)", False),
    ("gap_ms", "gap the guest's observer saw (ms)", False),
]


def quantile(sorted_values, q):
    if not sorted_values:
        raise ValueError("no samples")
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def short_link(link):
    # "LAN (linkem 1000 Mbit/s, 0.2 ms RTT)" -> "LAN" (the links are in the caption)
    return link.split("(", 1)[0].strip()


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: plot-migrate.py CSV OUT.svg")
    src, out = sys.argv[1], sys.argv[2]
    samples = {}  # (link, side) -> {column: [values]}
    links = []
    with open(src, newline="") as f:
        for row in csv.DictReader(f):
            link, side = row["link"], row["side"]
            if side not in SIDES:
                sys.exit(f"plot-migrate: unknown side {side!r} in {src}")
            if link not in links:
                links.append(link)
            cell = samples.setdefault((link, side), {})
            for column, _, _ in PANELS:
                cell.setdefault(column, []).append(float(row[column]))
    if not samples:
        sys.exit(f"plot-migrate: no trials in {src}")
    order = {"loopback": 0, "LAN": 1, "WAN": 2}
    links.sort(key=lambda l: order.get(l.split()[0], 9))
    runs = min(len(v[PANELS[0][0]]) for v in samples.values())

    with tempfile.TemporaryDirectory() as tmp:
        script = bar_chart_preamble(out, "1200,420", "1500,520") + [
            "set multiplot layout 1,3 title "
            f"'bench/migrate: median and interquartile range of {runs} runs per cell "
            f"({os.path.basename(src)}): "
            + "; ".join(links).replace("linkem ", "")
            + "'",
        ]
        for column, label, log in PANELS:
            data = os.path.join(tmp, column + ".dat")
            with open(data, "w") as d:
                for link in links:
                    fields = [f'"{short_link(link)}"']
                    for side in SIDES:
                        values = sorted(samples.get((link, side), {}).get(column, []))
                        if not values:
                            fields += ["NaN", "NaN", "NaN"]
                            continue
                        fields += [f"{quantile(values, q):.3f}" for q in (0.5, 0.25, 0.75)]
                    d.write(" ".join(fields) + "\n")
            script += [
                f'set title "{label}"',
                "set logscale y" if log else "unset logscale y",
                "set yrange [*:*]" if log else "set yrange [0:*]",
                f"plot '{data}' using 2:3:4:xtic(1) title '{SIDES[0]}', "
                f"'' using 5:6:7 title '{SIDES[1]}', '' using 8:9:10 title '{SIDES[2]}'",
            ]
        script.append("unset multiplot")
        subprocess.run(["gnuplot"], input="\n".join(script), text=True, check=True)


if __name__ == "__main__":
    main()
