"""Fashion-MNIST-LT-tint: real images with a known, controlled attribute imbalance.

Built from the real Fashion-MNIST images (Debian ``dataset-fashion-mnist``, else
torchvision's downloader). Every image gets one *tint* (``TINTS``): its grey levels g in
[0, 1] are rendered as ``g * ink + (1 - g) * paper`` in RGB. Within every class the tints are
long-tailed (``TRAIN_SHARES``: 85 / 10 / 4 / 1%, exact per-class counts, every tint at least
once), on top of the class imbalance (ratio 100, as the plain demo). The two rarest tints
(coloured ink on a light, diagonally striped paper) are the *rare attribute*: they change the
colour, the background, the brightness and the texture of an image at once, as a rare
context (snow, studio backdrop, ...) does in real data. The validation split (the
10k test images) is balanced over tints inside every class (25% each), so accuracy on the
rare-attribute subset measures what the model learnt about images that were scarce in
training. Validation = the first 500 test images of every class (5,000; 125 per tint and class).

The tint of each sample is stored in its metadata and in ``tints.json`` (key -> tint id) in
the dataset directory. Everything is a pure function of ``seed``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fastcas.core.rng import generator

TINTS = (  # name, ink RGB, paper RGB (in [0, 1]), paper texture (diagonal stripes)
    ("grey on black", (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), False),
    ("warm on brown", (1.0, 0.8, 0.55), (0.1, 0.06, 0.02), False),
    ("green on striped light", (0.1, 0.55, 0.2), (0.85, 0.95, 0.85), True),
    ("magenta on striped yellow", (0.7, 0.1, 0.6), (0.95, 0.9, 0.3), True),
)
TRAIN_SHARES = (0.85, 0.10, 0.04, 0.01)
RARE = (2, 3)
TINT_FILE = "tints.json"
VAL_PER_CLASS = 500


def render(grey: np.ndarray, tint: int) -> np.ndarray:
    """uint8 [H, W] grey image -> uint8 [H, W, 3] tinted RGB."""
    _, ink, paper, striped = TINTS[tint]
    g = grey.astype(np.float32)[..., None] / 255.0
    paper = np.broadcast_to(np.asarray(paper, np.float32), g.shape[:2] + (3,))
    if striped:  # diagonal stripes, period 4 px: 25% darker paper on every other pair of diagonals
        yy, xx = np.mgrid[0:g.shape[0], 0:g.shape[1]]
        paper = paper * (1 - 0.25 * (((xx + yy) // 2) % 2))[..., None]
    rgb = g * np.asarray(ink, np.float32) + (1 - g) * paper
    return np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)


def assign_tints(labels: np.ndarray, shares, seed: int, purpose: int) -> np.ndarray:
    """int64 [N]: a tint per sample with exact per-class counts round(share * n_k) (each tint
    at least once where the class has enough images; remainder to tint 0), seeded shuffle."""
    labels = np.asarray(labels)
    out = np.zeros(len(labels), np.int64)
    shares = np.asarray(shares, np.float64)
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        n = len(idx)
        counts = np.floor(shares * n).astype(int)
        if n >= len(shares):
            counts = np.maximum(counts, 1)
        counts[0] = n - counts[1:].sum()
        values = np.repeat(np.arange(len(shares)), counts)
        out[idx] = values[generator(seed, purpose, int(k)).permutation(n)]
    return out


def _samples(images, labels, tints, prefix, indices):
    from fastcas.dataset.ingest import encode_jpeg
    from fastcas.dataset.shards import RawSample

    for j, i in enumerate(indices):
        t = int(tints[j])
        yield RawSample(f"{prefix}{int(i):05d}", encode_jpeg(render(images[i], t)), int(labels[i]),
                        {"index": int(i), "tint": t, "tint_name": TINTS[t][0]}, f"{prefix}{int(i)}")


def build_tint_data(root, *, seed: int = 0, fashion_mnist=None, imbalance_ratio: float = 100.0,
                    overwrite: bool = False, progress: bool = True) -> tuple[Path, Path]:
    """Build (or reuse) ``root/fmnist-lt-tint-train`` and ``root/fmnist-tint-val``."""
    from fastcas.dataset.ingest import FASHION_MNIST_CLASSES, load_fashion_mnist
    from fastcas.dataset.lt import lt_indices
    from fastcas.dataset.shards import MANIFEST, ShardWriterConfig, write_shards

    root = Path(root)
    train, val = root / "fmnist-lt-tint-train", root / "fmnist-tint-val"
    if not overwrite and (train / MANIFEST).exists() and (val / MANIFEST).exists():
        return train, val
    names = tuple(FASHION_MNIST_CLASSES)
    images, labels = load_fashion_mnist(fashion_mnist, "train")
    keep = lt_indices(labels, imbalance_ratio, seed)
    keep = keep[generator(seed, 0x5A).permutation(len(keep))]
    tints = assign_tints(labels[keep], TRAIN_SHARES, seed, 0x71)
    extra = {"source": {"dataset": "fashion-mnist/train", "imbalance_ratio": imbalance_ratio, "seed": seed,
                        "tints": [t[0] for t in TINTS], "train_shares": list(TRAIN_SHARES), "rare": list(RARE)}}
    write_shards(_samples(images, labels, tints, "fmtint", keep), train,
                 ShardWriterConfig(shard_size=2000, prefix="train", overwrite=True, class_names=names, extra=extra),
                 progress=progress, total=len(keep))
    _write_tints(train, "fmtint", keep, tints)
    vimages, vlabels = load_fashion_mnist(fashion_mnist, "test")
    # the first VAL_PER_CLASS test images of every class (evaluation is most of the demo's time on a CPU)
    vidx = np.concatenate([np.flatnonzero(vlabels == k)[:VAL_PER_CLASS] for k in range(len(names))])
    vt = assign_tints(vlabels[vidx], [0.25] * 4, seed, 0x72)
    write_shards(_samples(vimages, vlabels, vt, "fmtintval", vidx), val,
                 ShardWriterConfig(shard_size=2000, prefix="val", overwrite=True, class_names=names,
                                   extra={"source": {"dataset": "fashion-mnist/t10k", "tints": [t[0] for t in TINTS],
                                                     "balanced": True}}),
                 progress=progress, total=len(vidx))
    _write_tints(val, "fmtintval", vidx, vt)
    return train, val


def _write_tints(path: Path, prefix: str, indices, tints) -> None:
    from fastcas.core.io import atomic_write_json

    atomic_write_json(path / TINT_FILE, {f"{prefix}{int(i):05d}": int(t) for i, t in zip(indices, tints)})


def load_tints(dataset, keys) -> np.ndarray | None:
    """int64 [N] tint ids in ``keys`` order, or None if ``dataset`` has no ``tints.json``."""
    p = Path(dataset) / TINT_FILE
    if not p.exists():
        return None
    m = json.loads(p.read_text())
    return np.array([m[k] for k in keys], np.int64)


def within_class_auc(scores, labels, positive) -> float:
    """P(score of a positive > score of a negative of the same class), ties count 1/2, pooled
    over all same-class (positive, negative) pairs (Mann-Whitney U / pairs)."""
    from scipy.stats import rankdata

    s, y, pos = np.asarray(scores, np.float64), np.asarray(labels), np.asarray(positive, bool)
    u = pairs = 0.0
    for k in np.unique(y):
        m = y == k
        npos, nneg = int(pos[m].sum()), int((~pos[m]).sum())
        if not npos or not nneg:
            continue
        r = rankdata(s[m])
        u += r[pos[m]].sum() - npos * (npos + 1) / 2
        pairs += npos * nneg
    if not pairs:
        raise ValueError("no class has both positive and negative samples")
    return float(u / pairs)
