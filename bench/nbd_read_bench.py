#!/usr/bin/python3
# NBD read throughput of one export, with libnbd (Debian: python3-libnbd), for
# bench/image_transfer: a sequential pass over the whole export in 1 MiB reads
# and random 4 KiB reads at queue depth 1 and 16, on one connection. Random
# offsets fall inside the chunks that hold data (--data-chunks: a file with the
# chunk size on its first line, then one chunk index per line), so a sparse
# image's holes do not flatter either server. Prints one JSON object.
#
# Usage: nbd_read_bench.py URI --data-chunks FILE [--random N] [--seed S]
import argparse
import json
import random
import sys
import time

import nbd


def run(h, offsets, length, depth):
    """Reads `length` bytes at each offset with up to `depth` requests in
    flight; returns seconds."""
    free = [nbd.Buffer(length) for _ in range(depth)]
    pending = {}
    i = done = 0
    n = len(offsets)
    t0 = time.monotonic()
    while done < n:
        while free and i < n:
            buf = free.pop()
            pending[h.aio_pread(buf, offsets[i])] = buf
            i += 1
        # A reply may already have been read while a request was written;
        # poll only while something is still on the wire.
        if h.aio_in_flight() > 0:
            h.poll(-1)
        for cookie in [c for c in pending if h.aio_command_completed(c)]:
            free.append(pending.pop(cookie))
            done += 1
    return time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("uri")
    ap.add_argument("--data-chunks", required=True)
    ap.add_argument("--random", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--seq-block", type=int, default=1 << 20)
    ap.add_argument("--seq-depth", type=int, default=8)
    a = ap.parse_args()

    with open(a.data_chunks) as f:
        lines = f.read().split()
    chunk_size = int(lines[0])
    chunks = [int(x) for x in lines[1:]]

    h = nbd.NBD()
    h.connect_uri(a.uri)
    size = h.get_size()
    rng = random.Random(a.seed)
    out = {"size": size}

    seq = list(range(0, size - size % a.seq_block, a.seq_block))
    s = run(h, seq, a.seq_block, a.seq_depth)
    out["seq"] = {"bytes": len(seq) * a.seq_block, "seconds": s,
                  "mib_s": len(seq) * a.seq_block / s / (1 << 20)}

    for depth in (1, 16):
        n = a.random if depth > 1 else max(1, a.random // 4)
        offs = []
        for _ in range(n):
            c = rng.choice(chunks)
            span = min(chunk_size, size - c * chunk_size)
            offs.append(c * chunk_size + rng.randrange(0, max(1, span // 4096)) * 4096)
        s = run(h, offs, 4096, depth)
        out["rand_qd%d" % depth] = {"reads": n, "seconds": s, "iops": n / s,
                                    "mib_s": n * 4096 / s / (1 << 20)}
    h.shutdown()
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
