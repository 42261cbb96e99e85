"""Accuracy by group: classes by training frequency (many / medium / few) and images by attribute."""
from __future__ import annotations

import numpy as np

MANY, FEW = 1000, 200  # Fashion-MNIST-LT has 60..6000 images a class (4 many, 3 medium, 3 few classes)


def class_groups(pred, y, counts) -> dict:
    """top1 and mean per-class accuracy over many (> MANY), medium and few (< FEW) classes."""
    pred, y, counts = np.asarray(pred), np.asarray(y), np.asarray(counts)
    acc = np.array([float((pred[y == k] == k).mean()) if (y == k).any() else np.nan for k in range(len(counts))])
    out = {"top1": float((pred == y).mean())}
    for name, m in (("many", counts > MANY), ("medium", (counts <= MANY) & (counts >= FEW)), ("few", counts < FEW)):
        out[name] = float(np.nanmean(acc[m])) if m.any() else None
    return out


def attr_groups(pred, y, rare) -> dict:
    pred, y, rare = np.asarray(pred), np.asarray(y), np.asarray(rare, bool)
    ok = pred == y
    return {"top1": float(ok.mean()), "rare_attr": float(ok[rare].mean()) if rare.any() else None,
            "common_attr": float(ok[~rare].mean()) if (~rare).any() else None}
