"""Loader(mode="streaming") vs mode="exact": distribution, stream structure and throughput.

Distribution (host integers only, the loaders' own index plans): total variation distance of
per-class and per-sample draw shares vs the target p pooled over E epochs; distinct shards per
batch; lag-1 label correlation of a rank's stream, for a few shuffle-buffer sizes. Throughput:
images/s of one epoch on local disk, the two modes alternated ``--rounds`` times in one run.
Prints a table, writes JSON (with os.getloadavg(): the machine may be shared).

    python benchmarks/bench_streaming.py [--out benchmarks/results/streaming.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def lag1(y: np.ndarray) -> float:
    a, b = y[:-1].astype(float), y[1:].astype(float)
    return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else 0.0


def distribution(ds: Path, weights: str, epochs: int, batch: int, buffers) -> list[dict]:
    from fastcas import Loader
    from fastcas.dataset.reader import ShardReader
    from fastcas.sampling import weights as W

    r = ShardReader(ds)
    p = W.make(weights, r.labels)
    p = p / p.sum()
    pc = np.bincount(r.labels, weights=p, minlength=r.num_classes)
    rows = []
    for mode, buf in [("exact", None)] + [("streaming", b) for b in buffers]:
        kw = dict(weights=weights, image_size=16, py_workers=0, device="cpu", seed=1)
        if mode == "streaming":
            kw.update(mode="streaming", shuffle_buffer=buf)
        loader = Loader(ds, batch, **kw)
        idx = np.concatenate([loader.sampler_indices(e)[0][: len(loader) * batch] for e in range(epochs)])
        share = np.bincount(idx, minlength=len(r)) / len(idx)
        cls = np.bincount(r.labels[idx], minlength=r.num_classes) / len(idx)
        shards = np.searchsorted(r.starts, idx, side="right") - 1
        per_batch = [len(np.unique(shards[i:i + batch])) for i in range(0, len(idx) - batch + 1, batch)]
        rows.append({"mode": mode, "shuffle_buffer": buf, "tv_sample": 0.5 * float(np.abs(share - p).sum()),
                     "tv_class": 0.5 * float(np.abs(cls - pc).sum()), "shards_per_batch": float(np.mean(per_batch)),
                     "lag1_label_corr": lag1(r.labels[idx]), "draws": int(len(idx))})
        loader.close()
    return rows


def throughput(ds: Path, batch: int, rounds: int, size: int) -> list[dict]:
    from fastcas import Loader

    out = []
    for rnd in range(rounds):
        for mode in ("exact", "streaming"):
            kw = dict(image_size=size, py_workers=1, device="cpu", seed=rnd, weights="cmo")
            if mode == "streaming":
                kw.update(mode="streaming", shuffle_buffer=256)
            loader = Loader(ds, batch, **kw)
            it = iter(loader)
            next(it)  # build + first batch not timed
            t0, n = time.perf_counter(), 0
            for x, _ in it:
                n += len(x)
            dt = time.perf_counter() - t0
            loader.close()
            out.append({"round": rnd, "mode": mode, "images": n, "seconds": dt, "images_per_s": n / dt})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/streaming.json")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--shard-size", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    a = ap.parse_args(argv)
    from tests.helpers import make_dataset

    with tempfile.TemporaryDirectory() as tmp:
        ds = Path(tmp) / "ds"
        k = 10
        counts = np.maximum(2, (a.n * 0.5 ** (np.arange(k) / 2) / sum(0.5 ** (np.arange(k) / 2)))).astype(int)
        make_dataset(ds, counts=tuple(int(c) for c in counts), shard_size=a.shard_size, size=(64, 48))
        dist = distribution(ds, "cmo", a.epochs, a.batch, (0, 64, 512, 4096))
        speed = throughput(ds, a.batch, a.rounds, 32)
    print(f"distribution: cmo weights, {int(counts.sum())} samples in shards of {a.shard_size}, {a.epochs} epochs")
    print(f"{'mode':10} {'buffer':>7} {'TV sample':>10} {'TV class':>9} {'shards/batch':>13} {'lag1 corr':>10}")
    for r in dist:
        print(f"{r['mode']:10} {str(r['shuffle_buffer']):>7} {r['tv_sample']:10.4f} {r['tv_class']:9.4f} "
              f"{r['shards_per_batch']:13.2f} {r['lag1_label_corr']:10.3f}")
    print(f"throughput (local disk, batch {a.batch}, 32 px, 1 worker): images/s")
    for r in speed:
        print(f"  round {r['round']} {r['mode']:10} {r['images_per_s']:8.1f}")
    med = {m: float(np.median([r["images_per_s"] for r in speed if r["mode"] == m])) for m in ("exact", "streaming")}
    print(f"median: exact {med['exact']:.1f}, streaming {med['streaming']:.1f} "
          f"(streaming/exact = {med['streaming'] / med['exact']:.3f}); loadavg {os.getloadavg()}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"args": vars(a), "distribution": dist, "throughput": speed, "median": med,
                                       "loadavg": os.getloadavg(), "machine": "2-core CPU VM, no GPU, shared"},
                                      indent=1))


if __name__ == "__main__":
    main()
