"""Evaluation metrics for long-tailed classification (torch imported only by the batch helpers).

* many / medium / few-shot classes by training-set size (CMO paper, Sec. 4: > 100,
  20-100, < 20 training images; thresholds configurable for small datasets);
* low / middle / high CAS subsets of the validation set (CAS paper: 30% / 30% / 40% by
  ascending CAS; ties broken by sample order, so the split sizes are exact);
* overall top-1 and per-class accuracy;
* for user loops over a distributed evaluation Loader (every rank yields as many batches, the
  padding repeats marked ``valid`` False): :func:`top1_counts` and :func:`drop_padding`.

    for images, labels, valid in val:            # Loader(..., train=False, valid_mask=True)
        counts += top1_counts(model(images), labels, valid)
    torch.distributed.all_reduce(counts)         # every sample counted exactly once
    top1 = (counts[0] / counts[1]).item()
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


def top1_counts(logits, targets, valid=None):
    """float64 tensor [2] on ``logits``' device: (correct, counted) top-1 over the samples of one
    batch whose ``valid`` (bool [B]) is True (all when None). ``logits`` [B, K]; ``targets``
    int64 [B] or one-hot/soft float [B, K] (its argmax). Sum it over batches and ranks
    (``all_reduce``), then top-1 = correct / counted."""
    import torch

    y = targets.argmax(1) if targets.ndim == 2 else targets
    ok = logits.argmax(1) == y.to(logits.device)
    keep = torch.ones_like(ok) if valid is None else valid.to(device=ok.device, dtype=torch.bool)
    return torch.stack([(ok & keep).sum(), keep.sum()]).to(torch.float64)


def drop_padding(valid, *tensors):
    """The rows (first dimension B) of each tensor whose ``valid`` (bool [B]) is True: per-sample
    inputs without the padding repeats, e.g. for ``torchmetrics`` ``update``. One tensor in,
    one out; several in, a tuple out."""
    out = tuple(t[valid.to(t.device)] for t in tensors)
    return out[0] if len(out) == 1 else out
