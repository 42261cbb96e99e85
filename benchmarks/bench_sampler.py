"""Sampler microbenchmark: setup time, draws/s and memory per sample at N = 1e6, 1e7, 1e8,
against numpy ``Generator.choice(p=...)``, ``torch.multinomial`` and torch's
``WeightedRandomSampler`` (each asked for the same number of draws).

    python benchmarks/bench_sampler.py [--quick] [--sizes 1e6,1e7,1e8] [--draws 1e6]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import base_parser, print_table, write_json  # noqa: E402
from fastcas.sampling.sampler import WeightedSampler  # noqa: E402


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv=None) -> int:
    p = base_parser(__doc__)
    p.add_argument("--sizes", default="1e6,1e7,1e8")
    p.add_argument("--draws", type=float, default=1e6)
    a = p.parse_args(argv)
    sizes = [int(float(s)) for s in a.sizes.split(",")]
    draws = int(a.draws)
    if a.quick:
        sizes, draws = [10_000], 10_000
    rows = []
    rng = np.random.default_rng(0)
    for n in sizes:
        w = rng.random(n) + 0.01
        s, setup = timed(lambda: WeightedSampler(w, num_samples=draws, seed=0))
        _, t = timed(lambda: s.indices(0))
        rows.append({"method": "fastcas WeightedSampler", "N": n, "setup_s": setup, "draws_per_s": draws / t,
                     "bytes_per_sample": s._cdf.nbytes / n})
        u = WeightedSampler(n, num_samples=draws, seed=0, replacement=False)
        _, t = timed(lambda: u.indices(0))
        rows.append({"method": "fastcas uniform shuffle (Feistel)", "N": n, "setup_s": 0.0, "draws_per_s": draws / t,
                     "bytes_per_sample": 0.0})
        g = np.random.default_rng(1)
        pn = w / w.sum()
        _, t = timed(lambda: g.choice(n, size=draws, p=pn))
        rows.append({"method": "numpy Generator.choice(p)", "N": n, "setup_s": 0.0, "draws_per_s": draws / t,
                     "bytes_per_sample": 8.0})
        try:
            import torch

            tw = torch.from_numpy(w)
            if n <= 2**24:  # torch.multinomial refuses more than 2^24 categories
                _, t = timed(lambda: torch.multinomial(tw, draws, replacement=True))
                rows.append({"method": "torch.multinomial", "N": n, "setup_s": 0.0, "draws_per_s": draws / t,
                             "bytes_per_sample": 8.0})
                wrs = torch.utils.data.WeightedRandomSampler(tw, draws, replacement=True)
                _, t = timed(lambda: list(iter(wrs)))
                rows.append({"method": "torch WeightedRandomSampler", "N": n, "setup_s": 0.0,
                             "draws_per_s": draws / t, "bytes_per_sample": 8.0})
            else:
                rows.append({"method": "torch.multinomial", "N": n, "setup_s": None, "draws_per_s": None,
                             "bytes_per_sample": None, "note": "refuses > 2^24 categories"})
        except ImportError:
            pass
    print_table(rows, ["method", "N", "setup_s", "draws_per_s", "bytes_per_sample"],
                title=f"sampler: {draws} draws per epoch")
    write_json("bench_sampler", {"sizes": sizes, "draws": draws}, rows, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
