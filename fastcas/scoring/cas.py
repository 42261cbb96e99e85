"""Compositional Attribute Scarcity (CAS) scores and their statistics. Pure NumPy.

CAS paper, Sec. "Compositional Attribute Imbalance": every image has one secondary value
per primary attribute. Within each class and primary, secondaries are ranked by descending
frequency in the *training* set (rank 1 = most common); CAS_i = sum over primaries of the
rank of image i's secondary.

Tie rule (pinned): secondaries with equal frequency share the smallest rank of their group
(standard competition ranking, "1224"), so equally common values are equally scarce and the
result does not depend on value ids. A secondary never seen in the image's class in the
training set (possible for validation images) gets rank = (distinct secondaries seen in that
class and primary) + 1, i.e. rarer than every seen one. Scoring an image of a class that has
no training samples in the reference is a ValueError naming the class.

Example (one class, one primary, training values [a, a, b, b, c]): counts a 2, b 2, c 1 ->
ranks a 1, b 1, c 3; a validation image with an unseen value d gets 3 distinct + 1 = 4.

Evaluation subsets (:func:`cas_subsets`, CAS paper Sec. "Experiments"): low 30%, middle 30%,
high 40% of images by ascending CAS, ties broken by sample order so sizes are exact.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CAS_SPLITS = (("low", 0.3), ("middle", 0.3), ("high", 0.4))


def cas_subsets(cas) -> np.ndarray:
    """int8 [N]: 0 = low, 1 = middle, 2 = high CAS (30/30/40 by ascending CAS)."""
    cas = np.asarray(cas, np.float64)
    order = np.argsort(cas, kind="stable")
    n = len(cas)
    bounds = np.round(np.cumsum([f for _, f in CAS_SPLITS]) * n).astype(int)
    out = np.empty(n, np.int8)
    start = 0
    for k, end in enumerate(bounds):
        out[order[start:end]] = k
        start = end
    return out


@dataclass(frozen=True)
class RankTable:
    """ranks[k][p] : dict secondary id -> rank, for class k and primary p; ``unseen[k, p]``."""

    ranks: list
    unseen: np.ndarray
    num_classes: int
    num_primaries: int


def _check_attrs(attr_ids, labels) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(attr_ids)
    y = np.asarray(labels)
    if a.ndim != 2 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"attribute ids must be an int array [N, P], got {a.dtype} {a.shape}")
    if y.shape != (len(a),):
        raise ValueError(f"labels must have shape ({len(a)},), got {y.shape}")
    if (a < 0).any() or (y < 0).any():
        raise ValueError("attribute ids and labels must be non-negative")
    return a.astype(np.int64), y.astype(np.int64)


def fit_ranks(attr_ids, labels, num_classes: int | None = None) -> RankTable:
    """Rank tables from the training set's attribute ids [N, P] and labels [N]."""
    a, y = _check_attrs(attr_ids, labels)
    C = int(num_classes or (y.max() + 1 if len(y) else 0))
    P = a.shape[1]
    ranks = [[{} for _ in range(P)] for _ in range(C)]
    unseen = np.ones((C, P), np.int64)
    for k in range(C):
        ak = a[y == k]
        for p in range(P):
            values, counts = np.unique(ak[:, p], return_counts=True)
            if not len(values):
                continue
            # competition ranking by descending count: rank = 1 + number of strictly more frequent values
            sorted_counts = np.sort(counts)[::-1]
            r = 1 + np.searchsorted(-sorted_counts, -counts, side="left")
            ranks[k][p] = dict(zip(values.tolist(), r.tolist()))
            unseen[k, p] = len(values) + 1
    return RankTable(ranks, unseen, C, P)


def cas_scores(attr_ids, labels, reference: RankTable | None = None) -> np.ndarray:
    """int64 [N] CAS of each image; ``reference`` = the training set's :func:`fit_ranks`
    (default: ranks fitted on these images, i.e. scoring the training set itself)."""
    a, y = _check_attrs(attr_ids, labels)
    table = reference or fit_ranks(a, y)
    if a.shape[1] != table.num_primaries:
        raise ValueError(f"images have {a.shape[1]} primaries, the rank table {table.num_primaries}")
    if len(y) and y.max() >= table.num_classes:
        raise ValueError(f"label {int(y.max())} is not a class of the reference ({table.num_classes} classes)")
    out = np.zeros(len(a), np.int64)
    for k in np.unique(y):
        rows = np.flatnonzero(y == k)
        if table.num_primaries and not table.ranks[k][0]:
            raise ValueError(f"class {int(k)} has no samples in the reference (training) set: "
                             f"cannot rank {len(rows)} image(s) of it")
        for p in range(a.shape[1]):
            lookup = table.ranks[k][p]
            default = int(table.unseen[k, p])
            out[rows] += np.fromiter((lookup.get(v, default) for v in a[rows, p].tolist()), np.int64, len(rows))
    return out


def cas(attribute_ids, labels, reference: RankTable | None = None) -> np.ndarray:
    """Alias of :func:`cas_scores`: int64 [N] CAS for int [N, P] secondary ids and [N] labels."""
    return cas_scores(attribute_ids, labels, reference)


def subset_indices(cas_values) -> dict:
    """{"low": int64 [~0.3 N], "middle": [~0.3 N], "high": [~0.4 N]} sample indices."""
    sub = cas_subsets(cas_values)
    return {name: np.flatnonzero(sub == k) for k, name in enumerate(("low", "middle", "high"))}


def sampling_statistics(cas_values, b: float = 1.2, *, draws: int = 0, seed: int = 0, labels=None,
                        r: float = 1.0) -> dict:
    """The CAS paper's Table 1: mean and standard deviation of the CAS of the samples drawn
    under uniform sampling, CAS-weighted sampling (p_i = CAS_i ** b / sum) and, with
    ``labels``, CMO's weights (:func:`fastcas.sampling.weights.cmo`, per-sample n_k^-r as the
    reference code).

    Exact moments of each sampling distribution; with ``draws`` > 0 also the empirical mean /
    std of one epoch of that many draws through fastcas's stateless sampler
    (:class:`fastcas.sampling.sampler.WeightedSampler`, ``seed``, epoch 0; ``draws=-1``: N draws)."""
    c = np.asarray(cas_values, np.float64)
    if not len(c):
        raise ValueError("no CAS values to summarise")
    if (c <= 0).any():
        raise ValueError(f"CAS values must be positive for CAS ** b weights, min is {c.min()}")
    from fastcas.sampling import weights

    ws = {"uniform": np.ones(len(c)), "cas_weighted": weights.cas(c, b)}
    if labels is not None:
        ws["cmo"] = weights.cmo(labels, r)
    out = {"b": b, **({"r": r} if labels is not None else {})}
    n_draws = len(c) if draws == -1 else int(draws)
    for name, w in ws.items():
        q = w / w.sum()
        m = float((q * c).sum())
        out[name] = {"mean": m, "std": float(np.sqrt(max((q * (c - m) ** 2).sum(), 0.0)))}
        if n_draws:
            from fastcas.sampling.sampler import WeightedSampler

            d = c[WeightedSampler(w, n_draws, seed=seed).indices(0)]
            out[name].update(drawn_mean=float(d.mean()), drawn_std=float(d.std()), draws=n_draws)
    return out


def attribute_names(metadata: dict) -> list | None:
    """[(primary, [secondary names])] for a score file's encoder, or None if unknown."""
    if metadata.get("encoder") == "pixel" and metadata.get("primaries") and metadata.get("secondaries"):
        return list(zip(metadata["primaries"], metadata["secondaries"]))
    if metadata.get("encoder") == "clip":
        from fastcas.scoring.vocabulary import load_vocabulary

        return [(p["name"], p["values"]) for p in load_vocabulary()["primaries"]]
    return None


def attribute_frequencies(attr_ids, names: list | None = None) -> list[dict]:
    """Per primary: {"primary", "counts": [[secondary, n], ...]} over the whole set, most
    common first (ties by secondary id). ``names``: [(primary, [secondary names])] or None."""
    a = np.asarray(attr_ids)
    out = []
    for p in range(a.shape[1]):
        values, counts = np.unique(a[:, p], return_counts=True)
        order = np.lexsort((values, -counts))
        label = (lambda v: names[p][1][v] if names and v < len(names[p][1]) else str(v))
        out.append({"primary": names[p][0] if names else p,
                    "counts": [[label(int(values[i])), int(counts[i])] for i in order]})
    return out


def class_statistics(attr_ids, labels, cas, class_names=None) -> list[dict]:
    """Table-1 style statistics per class: samples, distinct attribute combinations,
    CAS mean / min / max, and the share of images whose combination is unique in the class."""
    a, y = _check_attrs(attr_ids, labels)
    cas = np.asarray(cas)
    rows = []
    for k in np.unique(y):
        m = y == k
        combos, counts = np.unique(a[m], axis=0, return_counts=True)
        rows.append({
            "class": class_names[k] if class_names else int(k), "samples": int(m.sum()),
            "distinct_combinations": int(len(combos)), "unique_combination_share": float((counts == 1).sum() / m.sum()),
            "cas_mean": float(cas[m].mean()), "cas_std": float(cas[m].std()),
            "cas_min": int(cas[m].min()), "cas_max": int(cas[m].max())})
    return rows


