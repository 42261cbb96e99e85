"""Evaluation metrics for long-tailed classification (no torch import).

* many / medium / few-shot classes by training-set size (CMO paper, Sec. 4: > 100,
  20-100, < 20 training images; thresholds configurable for small datasets);
* low / middle / high CAS subsets of the validation set (CAS paper: 30% / 30% / 40% by
  ascending CAS; ties broken by sample order, so the split sizes are exact);
* overall top-1 and per-class accuracy.
"""
from __future__ import annotations

import numpy as np

from fastcas.scoring.cas import CAS_SPLITS, cas_subsets


def shot_groups(train_counts, many: int = 100, few: int = 20) -> np.ndarray:
    """int8 [C]: 0 = many (> many), 1 = medium, 2 = few (< few) by training counts."""
    c = np.asarray(train_counts)
    return np.where(c > many, 0, np.where(c < few, 2, 1)).astype(np.int8)


def accuracy_report(labels, predictions, train_counts, *, cas=None, many: int = 100, few: int = 20) -> dict:
    """Top-1 accuracies as fractions; groups with no samples are reported as None."""
    y, p = np.asarray(labels), np.asarray(predictions)
    C = len(train_counts)
    correct = (y == p).astype(np.float64)
    totals = np.bincount(y, minlength=C)
    per_class = np.bincount(y, weights=correct, minlength=C) / np.maximum(totals, 1)
    groups = shot_groups(train_counts, many, few)
    rep = {"top1": float(correct.mean()), "samples": int(len(y)),
           "per_class": [float(a) if t else None for a, t in zip(per_class, totals)]}
    for g, name in enumerate(("many", "medium", "few")):
        m = (groups[y] == g)
        rep[name] = float(correct[m].mean()) if m.any() else None
    if cas is not None:
        sub = cas_subsets(cas)
        for k, (name, _) in enumerate(CAS_SPLITS):
            m = sub == k
            rep[f"cas_{name}"] = float(correct[m].mean()) if m.any() else None
    return rep
