"""Long-tailed subsets by the exponential profile of CIFAR-100-LT (CMO paper, Sec. 4.1;
naver-ai/cmo ``imbalance_cifar.py``): class ``k`` of ``C`` keeps
``floor(n_max * R ** (-k / (C - 1)))`` samples, ``R`` = imbalance ratio n_max / n_min."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fastcas.core.rng import generator
from fastcas.dataset.shards import RawSample, ShardWriterConfig, write_shards


def lt_counts(num_classes: int, n_max: int, imbalance_ratio: float) -> np.ndarray:
    """int64 [C] target counts; ``imbalance_ratio`` >= 1."""
    if imbalance_ratio < 1:
        raise ValueError(f"imbalance ratio must be >= 1, got {imbalance_ratio}")
    if num_classes < 1 or n_max < 1:
        raise ValueError(f"need num_classes >= 1 and n_max >= 1, got {num_classes}, {n_max}")
    k = np.arange(num_classes, dtype=np.float64)
    exponent = -k / max(num_classes - 1, 1)
    return np.floor(n_max * float(imbalance_ratio) ** exponent + 1e-9).astype(np.int64)


def lt_indices(labels: np.ndarray, imbalance_ratio: float, seed: int = 0,
               num_classes: int | None = None) -> np.ndarray:
    """Sorted global indices of the subset: per class a seeded random choice of its quota
    (n_max = the largest class size). A class with fewer samples than its quota keeps all."""
    labels = np.asarray(labels, np.int64)
    C = int(num_classes or labels.max() + 1)
    counts = np.bincount(labels, minlength=C)
    quota = lt_counts(C, int(counts.max()), imbalance_ratio)
    rng = generator(seed, 0x17)
    keep = []
    for k in range(C):
        members = np.flatnonzero(labels == k)
        keep.append(rng.permutation(members)[: min(quota[k], len(members))])
    return np.sort(np.concatenate(keep)).astype(np.int64)


def make_lt(src, out: str | Path, imbalance_ratio: float, *, seed: int = 0, shard_size: int = 1000,
            prefix: str | None = None, overwrite: bool = False, progress: bool = False) -> dict:
    """Write the long-tailed subset of the dataset ``src`` (path or ShardReader) to ``out``."""
    from fastcas.dataset.reader import ShardReader

    reader = src if isinstance(src, ShardReader) else ShardReader(src)
    idx = lt_indices(reader.labels, imbalance_ratio, seed, reader.num_classes)

    def samples():
        for i in idx:
            s = reader[i]
            yield RawSample(s.key, bytes(s.data), s.label, reader.metadata(i), s.key)

    config = ShardWriterConfig(
        shard_size=shard_size, prefix=prefix or "shard", overwrite=overwrite,
        class_names=tuple(reader.class_names),
        extra={"source": {"dataset": str(reader.root), "content_hash": reader.manifest.get("content_hash"),
                          "imbalance_ratio": imbalance_ratio, "seed": seed}},
    )
    return write_shards(samples(), out, config, progress=progress, total=len(idx))
