#!/usr/bin/env python3
"""Draws the tables that bench/instantiate, bench/storm, bench/listing,
bench/guest_disk and bench/fanout write into docs/benchmarks.md as bar
charts with their interquartile ranges (gnuplot), into
docs/plots/{instantiate,storm,listing,guest_disk,fanout}.svg; and bench/infosvc's
query latencies (p50 with a bar up to p99) and placement rates per backend
into docs/plots/infosvc_queries.svg and infosvc_placement.svg; and
bench/image_transfer's start times per image into image_transfer_NAME.svg. It reads the
tables themselves (each cell "median (Q1–Q3)"), so a plot always shows the
table beside it; run it after the benchmarks (`make bench` does).

Usage: scripts/plot-tables.py [docs/benchmarks.md] [OUT_DIR]
Needs gnuplot (Debian: gnuplot-nox).
"""
import os
import re
import subprocess
import sys
import tempfile

from gnuplot_bars import bar_chart_preamble

CELL = re.compile(r"([\d.]+) \(([\d.]+)–([\d.]+)\)")


def block(text, marker):
    """The text between the marker's comments, or None (said on stderr)."""
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    if begin not in text or end not in text:
        print(f"plot-tables: no {marker} block in the document: not drawn", file=sys.stderr)
        return None
    return text.split(begin, 1)[1].split(end, 1)[0]


def rows(table_text):
    """The table's body rows as lists of cells (header and rule skipped)."""
    out = []
    lines = [l for l in table_text.splitlines() if l.startswith("|")]
    for line in lines[2:]:
        out.append([c.strip() for c in line.strip("|").split("|")])
    return out


def cell(text):
    m = CELL.search(text)
    if not m:
        raise ValueError(f"not a 'median (Q1–Q3)' cell: {text!r}")
    return [float(m.group(i)) for i in (1, 2, 3)]


def short_query(name):
    """A tick label for an infosvc query row."""
    for key, label in (("single", "single"), ("image cached", "join: image"),
                       ("virtualization", "join: virt."), ("naive", "naive SQL"),
                       ("pruned", "pruned SQL"), ("set", "set operator")):
        if key in name:
            return label + ("\\n(no answer)" if "no answer" in name else "")
    return name[:16]


def section(text, heading):
    """The text under a markdown heading, up to the next heading of that level."""
    part = text.split(heading, 1)[1] if heading in text else ""
    return part.split("\n#### ", 1)[0]


def number(text):
    """A plain number cell ("1,234", "0.25", "**12**")."""
    return float(re.sub(r"[^\d.]", "", text))


def method_date(text):
    m = re.search(r"\*Method\*: (\d{4}-\d\d-\d\d \d\d:\d\d UTC, commit \w+)", text)
    return m.group(1) if m else ""


def method_date_line(text):
    m = re.search(r"Date: (\d{4}-\d\d-\d\d \d\d:\d\d UTC, commit [\w+]+)", text)
    return m.group(1) if m else ""


def first_line(text):
    line = next((l for l in text.splitlines() if l.startswith("`bench/")), "")
    return line.replace("`", "").split(",")[0:2]


def gnuplot(out, title, data_rows, columns, ylabel, logscale=False, key="top left"):
    """data_rows: [(label, [median, q1, q3] per column)]."""
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "t.dat")
        with open(data, "w") as d:
            for label, values in data_rows:
                fields = [f'"{label}"']
                for v in values:
                    fields += [f"{x:.4f}" for x in v] if v else ["NaN"] * 3
                d.write(" ".join(fields) + "\n")
        plots = []
        for i, name in enumerate(columns):
            base = 2 + 3 * i
            using = f"{base}:{base + 1}:{base + 2}" + (":xtic(1)" if i == 0 else "")
            plots.append(("'" + data + "'" if i == 0 else "''") + f" using {using} title '{name}'")
        script = bar_chart_preamble(out, "1100,420", "1100,420") + [
            f"set key {key}",
            "set bmargin 4" if any("\\n" in label for label, _ in data_rows) else "",
            f"set title \"{title}\" noenhanced",
            f"set ylabel '{ylabel}'",
            "set logscale y" if logscale else "set yrange [0:*]",
            "plot " + ", ".join(plots),
        ]
        subprocess.run(["gnuplot"], input="\n".join(script), text=True, check=True)


def main():
    docs = sys.argv[1] if len(sys.argv) > 1 else "docs/benchmarks.md"
    out_dir = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(docs), "plots")
    os.makedirs(out_dir, exist_ok=True)
    text = open(docs, encoding="utf-8").read()

    drawn = []

    # bench/instantiate: | start | plain | mode | vmgrid | ratio |
    b = block(text, "instantiate")
    if b is not None:
        data = []
        for r in rows(b):
            mode = r[2].replace("vmgrid ", "").replace(", image server (warm host cache)", ", served")
            data.append((mode, [cell(r[1]), cell(r[3])]))
        when = ", ".join(s.strip() for s in first_line(b))
        gnuplot(os.path.join(out_dir, "instantiate.svg"),
                f"{when}: request to first guest-agent answer, median and IQR",
                data, ["plain QEMU (same start)", "vmgrid"], "seconds (log scale)", logscale=True)
        drawn.append("instantiate.svg")

    # bench/storm: | start | plain all | vmgrid all | ratio | plain each | vmgrid each |
    b = block(text, "storm")
    if b is not None:
        table = b.split("\n\nMemory", 1)[0]
        data = [(r[0], [cell(r[1]), cell(r[2])]) for r in rows(table)]
        when = ", ".join(s.strip() for s in first_line(b))
        gnuplot(os.path.join(out_dir, "storm.svg"),
                f"{when}: until all VMs answered, median and IQR",
                data, ["plain QEMU", "vmgrid"], "seconds (log scale)", logscale=True)
        drawn.append("storm.svg")

    # bench/listing: | row | requests/s | VMs listed/s | CPU ms |
    b = block(text, "bench-listing")
    if b is not None:
        short = [("GET /v1/health", "health (HTTP floor)"), ("in process", "database floor"),
                 ("GET /v1/vms?limit=100", "pages of 100"), ("as admin", "admin, page of 500"),
                 ("GET /v1/vms?limit=", "page of 500")]
        data = []
        for r in rows(b):
            label = next((name for key, name in short if key in r[0]), r[0])
            data.append((label, [cell(r[1])]))
        when = ", ".join(s.strip() for s in first_line(b))
        gnuplot(os.path.join(out_dir, "listing.svg"),
                f"{when}: requests per second, median and IQR",
                data, ["requests/s"], "requests per second (log scale)", logscale=True)
        drawn.append("listing.svg")

    # bench/guest_disk: | chain | read MB/s | / plain | write MB/s | / plain |
    b = block(text, "guest-disk")
    if b is not None:
        data = [(r[0].replace(" (NBD, warm cache)", ", NBD"), [cell(r[1]), cell(r[3])])
                for r in rows(b)]
        when = ", ".join(s.strip() for s in first_line(b))
        gnuplot(os.path.join(out_dir, "guest_disk.svg"),
                f"{when}: guest disk throughput, median and IQR",
                data, ["read /dev/vda", "write 32 MiB + fsync"], "MB/s")
        drawn.append("guest_disk.svg")

    # bench/fanout: | hosts | all running | each VM | / 1 host | MiB fetched |
    b = block(text, "fanout")
    if b is not None:
        data = [(r[0] + (" host" if r[0] == "1" else " hosts at once"), [cell(r[1]), cell(r[2])])
                for r in rows(b)]
        when = ", ".join(s.strip() for s in first_line(b))
        gnuplot(os.path.join(out_dir, "fanout.svg"),
                f"{when}: cold resumes through the image server, median and IQR",
                data, ["all running", "each VM"], "seconds")
        drawn.append("fanout.svg")

    # bench/image_transfer, per image: | start | plain | cold LAN | cold WAN | warm LAN |
    # warm WAN | copy whole LAN | copy whole WAN | copy whole zstd LAN | copy whole zstd WAN |,
    # cells "median (Q1–Q3) s, ratio".
    b = block(text, "image-transfer")
    if b is not None:
        for part in b.split("\n### ")[1:]:
            name = part.split("\n", 1)[0].strip()
            if name in ("Targets",) or name.startswith("NBD"):
                continue
            table = part.split("\n\n", 2)[2] if part.count("\n\n") >= 2 else ""
            header = next((l for l in table.splitlines() if l.startswith("| start")), None)
            if header is None:
                continue
            heads = [c.strip() for c in header.strip("|").split("|")][1:]
            first = table[table.index(header):].split("\n\n", 1)[0]
            try:
                data = [(r[0], [cell(c) for c in r[1:]]) for r in rows(first)]
            except ValueError as e:  # a table of the method before 2026-12-07
                print(f"plot-tables: image_transfer {name}: {e}: not drawn", file=sys.stderr)
                continue
            when = method_date_line(b)
            gnuplot(os.path.join(out_dir, f"image_transfer_{name}.svg"),
                    f"bench/image_transfer, {name}, {when}: start to guest agent, median and IQR",
                    data, heads, "seconds (log scale)", logscale=True)
            drawn.append(f"image_transfer_{name}.svg")

    # bench/infosvc (SQLite): | query | rows | quiet p50 | quiet p99 | live p50 | live p99 |
    # live API p50 | live API p99 | target |; one run each, so p50 with a bar up to p99.
    b = block(text, "infosvc-sqlite")
    if b is not None:
        queries = section(b, "#### Queries")
        data = []
        for r in rows(queries):
            label = short_query(r[0])
            cols = []
            for p50, p99 in ((r[2], r[3]), (r[4], r[5]), (r[6], r[7])):
                cols.append(None if "–" in p50 else [number(p50), number(p50), number(p99)])
            data.append((label, cols))
        when = method_date(queries)
        gnuplot(os.path.join(out_dir, "infosvc_queries.svg"),
                f"bench/infosvc, SQLite, 10,000 hosts, {when}: query latency, p50 with a bar to p99",
                data, ["quiet", "live (in process)", "live API (HTTP)"],
                "milliseconds (log scale)", logscale=True)
        drawn.append("infosvc_queries.svg")

    # bench/infosvc placement, both backends: creates/s and VMs running/s (one run each).
    data = []
    for marker, name in (("infosvc-sqlite", "SQLite"), ("infosvc-postgres", "PostgreSQL")):
        b = block(text, marker)
        if b is None:
            continue
        table = section(b, "#### Placement")
        header = next((l for l in table.splitlines() if l.startswith("|")), "")
        heads = [c.strip() for c in header.strip("|").split("|")]
        for r in rows(table):
            rec = dict(zip(heads, r))
            label = name + (" " + rec["commits"] if "commits" in rec else "") + "\\n" + \
                rec["hosts"] + " hosts"
            rate = [number(rec["creates/s"])] * 3
            running = [number(rec["running/s"])] * 3
            data.append((label, [rate, running]))
    if data:
        gnuplot(os.path.join(out_dir, "infosvc_placement.svg"),
                "bench/infosvc: placement with every host heartbeating every 2 s (goal 2,000/s)",
                data, ["creates accepted/s", "VMs running/s"], "per second", key="top right")
        drawn.append("infosvc_placement.svg")

    print(f"wrote {', '.join(drawn)} in {out_dir}")


if __name__ == "__main__":
    main()
