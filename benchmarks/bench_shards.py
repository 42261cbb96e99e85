"""Shard writing throughput (images/s, MB/s) and random-access reads (samples/s from the
page cache) on the real-photo corpus.

    python benchmarks/bench_shards.py [--quick] [--images 2000]
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import base_parser, print_table, write_json  # noqa: E402
from fastcas.dataset.reader import ShardReader  # noqa: E402
from fastcas.dataset.shards import ShardWriterConfig, write_shards  # noqa: E402
from fastcas.tools.demo.data import corpus_samples  # noqa: E402


def main(argv=None) -> int:
    p = base_parser(__doc__)
    p.add_argument("--images", type=int, default=2000)
    a = p.parse_args(argv)
    n = 100 if a.quick else a.images
    samples = list(corpus_samples(n, seed=0))  # encode first: time the writer, not JPEG encoding
    nbytes = sum(len(s.data) for s in samples)
    tmp = Path(tempfile.mkdtemp())
    try:
        t0 = time.perf_counter()
        write_shards(samples, tmp / "ds", ShardWriterConfig(shard_size=500))
        dt = time.perf_counter() - t0
        rows = [{"operation": "write shards (+ index, manifest, fsync)", "items_per_s": n / dt,
                 "MB_per_s": nbytes / dt / 1e6}]
        r = ShardReader(tmp / "ds")
        for s in r:  # warm the page cache
            pass
        idx = np.random.default_rng(0).integers(0, n, 20 * n)
        t0 = time.perf_counter()
        total = 0
        for i in idx:
            total += len(r[int(i)].data)
        dt = time.perf_counter() - t0
        rows.append({"operation": "random access read (zero-copy view)", "items_per_s": len(idx) / dt,
                     "MB_per_s": total / dt / 1e6})
        t0 = time.perf_counter()
        copied = sum(len(bytes(r[int(i)].data)) for i in idx[: 2 * n])
        dt = time.perf_counter() - t0
        rows.append({"operation": "random access read + copy to bytes", "items_per_s": 2 * n / dt,
                     "MB_per_s": copied / dt / 1e6})
        t0 = time.perf_counter()
        ShardReader(tmp / "ds")
        rows.append({"operation": "open (manifest + indexes)", "items_per_s": n / (time.perf_counter() - t0),
                     "MB_per_s": None})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(rows, title=f"shards: {n} corpus JPEGs, {nbytes / 1e6:.1f} MB")
    write_json("bench_shards", {"images": n, "bytes": nbytes}, rows, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
