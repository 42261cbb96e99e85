"""The reproduction's data, in memory (uint8 NumPy arrays, pure functions of the seed).

* :func:`lt_data`: Fashion-MNIST-LT, ratio 100 (14,886 training images, 6,000 down to 60 a
  class), native 28 px, grey ``[N, 1, 28, 28]``.
* :func:`split_test`: Fashion-MNIST's 10k test images split in two halves, balanced (500 a
  class each, a keyed choice): ``dev`` (the curves; the only split that may inform a choice)
  and ``test`` (the reported numbers, used for nothing else).
* :func:`tinted_data`: a class-*balanced* tinted set (``per_class`` training images a class,
  tints at :data:`fastcas.tools.demo.tint.TRAIN_SHARES` inside every class; rare = tints 2, 3),
  the test half balanced over tints (25% each).
* :func:`rotated_data`: the negative control: the same balanced images, grey, ``share`` of every
  class rotated by 90 degrees (an attribute the pixel encoder does not see: within-class AUC
  0.63-0.68 in ``docs/papers.md`` section 2); the test half 50% rotated.
"""
from __future__ import annotations

import numpy as np

from fastcas.core.rng import generator

_SPLIT, _TINT_TRAIN, _TINT_TEST, _ROT_TRAIN, _ROT_TEST = 0xD0, 0xD1, 0xD2, 0xD3, 0xD4


def split_test(labels, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(dev, test): sorted int64 indices, half of every class each (keyed permutation per class)."""
    labels = np.asarray(labels)
    dev, test = [], []
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        p = idx[generator(seed, _SPLIT, int(k)).permutation(len(idx))]
        dev.append(p[:len(p) // 2])
        test.append(p[len(p) // 2:])
    return np.sort(np.concatenate(dev)), np.sort(np.concatenate(test))


def load(fashion_mnist=None, limit: int | None = None):
    """(train images [N, 28, 28], labels, test images, labels); ``limit`` keeps the first
    ``limit`` images of every class of both splits (tests)."""
    from fastcas.dataset.ingest import load_fashion_mnist

    xs, ys = load_fashion_mnist(fashion_mnist, "train")
    xt, yt = load_fashion_mnist(fashion_mnist, "test")
    if limit:
        keep = lambda y: np.sort(np.concatenate([np.flatnonzero(y == k)[:limit] for k in np.unique(y)]))  # noqa: E731
        a, b = keep(ys), keep(yt)
        xs, ys, xt, yt = xs[a], ys[a], xt[b], yt[b]
    return xs, ys, xt, yt


def lt_data(src, ratio: float = 100.0, seed: int = 0) -> dict:
    """{"x", "y", "dev_x", "dev_y", "test_x", "test_y", "counts"}: images uint8 [N, 1, 28, 28]."""
    from fastcas.dataset.lt import lt_indices

    xs, ys, xt, yt = src
    keep = lt_indices(ys, ratio, seed)
    dev, test = split_test(yt, seed)
    return {"x": xs[keep][:, None], "y": ys[keep], "dev_x": xt[dev][:, None], "dev_y": yt[dev],
            "test_x": xt[test][:, None], "test_y": yt[test], "counts": np.bincount(ys[keep], minlength=10)}


def _balanced(ys, per_class: int) -> np.ndarray:
    return np.sort(np.concatenate([np.flatnonzero(ys == k)[:per_class] for k in np.unique(ys)]))


def tinted_data(src, per_class: int, seed: int = 0) -> dict:
    """Balanced tinted set: {"x" uint8 [N, 3, 28, 28], "y", "attr" (tint id [N]), "rare" bool [N],
    "test_x", "test_y", "test_rare"}."""
    from fastcas.tools.demo.tint import RARE, TRAIN_SHARES, assign_tints, render

    xs, ys, xt, yt = src
    keep = _balanced(ys, per_class)
    tints = assign_tints(ys[keep], TRAIN_SHARES, seed, _TINT_TRAIN)
    _, test = split_test(yt, seed)
    tt = assign_tints(yt[test], [0.25] * 4, seed, _TINT_TEST)
    rgb = lambda g, t: np.stack([render(a, int(b)) for a, b in zip(g, t)]).transpose(0, 3, 1, 2)  # noqa: E731
    return {"x": rgb(xs[keep], tints), "y": ys[keep], "attr": tints, "rare": np.isin(tints, RARE),
            "test_x": rgb(xt[test], tt), "test_y": yt[test], "test_rare": np.isin(tt, RARE)}


def rotated_data(src, per_class: int, share: float = 0.05, seed: int = 0) -> dict:
    """Balanced grey set, ``round(share * per_class)`` images of every class rotated 90 degrees."""
    from fastcas.tools.reproduce.attributes import rare_mask

    xs, ys, xt, yt = src
    keep = _balanced(ys, per_class)
    rare = rare_mask(ys[keep], share, seed, _ROT_TRAIN, 0)
    _, test = split_test(yt, seed)
    trare = rare_mask(yt[test], 0.5, seed, _ROT_TEST, 0)
    rot = lambda g, m: np.where(m[:, None, None], np.rot90(g, axes=(1, 2)), g)[:, None]  # noqa: E731
    return {"x": rot(xs[keep], rare), "y": ys[keep], "attr": rare.astype(np.int64), "rare": rare,
            "test_x": rot(xt[test], trare), "test_y": yt[test], "test_rare": trare}


def cas_of(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """int64 [N] CAS of uint8 images ``x`` [N, C, 28, 28] under the pixel encoder with bins fitted
    to them (``fastcas score --encoder pixel`` without the JPEG round trip)."""
    from fastcas.scoring.bins import fit_bins
    from fastcas.scoring.cas import cas_scores
    from fastcas.tools.reproduce.attributes import measure_rgb

    rgb = np.repeat(x, 3, axis=1) if x.shape[1] == 1 else x
    raw = measure_rgb(np.ascontiguousarray(rgb.transpose(0, 2, 3, 1)))
    return cas_scores(fit_bins(raw).apply(raw), y)


def placebo(weights, labels, seed: int) -> np.ndarray:
    """``weights`` permuted within every class (keyed): the same per-class multiset of weights,
    unrelated to the images' attributes."""
    w, y = np.asarray(weights, np.float64), np.asarray(labels)
    out = w.copy()
    for k in np.unique(y):
        idx = np.flatnonzero(y == k)
        out[idx] = w[idx][generator(seed, 0xD5, int(k)).permutation(len(idx))]
    return out


def oracle(attr, labels) -> np.ndarray:
    """float64 [N]: 1 / (the share of sample i's attribute value inside its class): every
    attribute value of a class gets the same total weight."""
    a, y = np.asarray(attr), np.asarray(labels)
    out = np.empty(len(a), np.float64)
    for k in np.unique(y):
        m = y == k
        vals, counts = np.unique(a[m], return_counts=True)
        share = dict(zip(vals.tolist(), (counts / m.sum()).tolist()))
        out[m] = [1.0 / share[v] for v in a[m].tolist()]
    return out
