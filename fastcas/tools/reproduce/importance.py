"""The importance-sampling paper's schemes on frozen features (cheap enough for 10 seeds on a CPU).

Features: a fixed randomly initialised ResNet-8 (torch seed 0), its last stage ``[N, 64, 7, 7]``
average-pooled to 2 x 2 (256 values), standardised with the training set's mean and sd; the
same features for every arm and seed. On top, a logistic regression (one linear layer, SGD,
momentum 0.9, batch 256, lr 0.1 cosine, ``is_epochs`` passes over each arm's epoch), keyed by
the seed. Arms (the paper's Sec. 3-4, fastcas's implementations):

* ``CE``: every training image once per epoch (uniform shuffle);
* ``Undersample``: :func:`fastcas.sampling.weights.make_plan` ("undersample", the seed's fixed
  subset, each class capped at the 25th percentile of the counts), read by
  :class:`~fastcas.sampling.plan.PlanSampler` -- the epoch is the subset;
* ``Oversample``: the "oversample" plan (every original once plus extras up to the largest
  class) -- the epoch grows;
* ``Upweight xF``: :func:`fastcas.sampling.weights.loss_weights` ("upweight-low", factor F):
  the low-frequency classes' loss times F, every other class 1, plain mean.
"""
from __future__ import annotations

import math

import numpy as np

from fastcas.core.rng import generator

FACTORS = (1.5, 2.0, 3.0, 5.0, 10.0)
ARMS = ("CE", "Undersample", "Oversample") + tuple(f"Upweight x{f:g}" for f in FACTORS)
COMPARISONS = tuple((a, "CE", ("low",)) for a in ARMS[1:])


def features(x: np.ndarray, batch: int = 1000) -> np.ndarray:
    """float32 [N, 256] frozen random-init ResNet-8 features of uint8 images [N, C, 28, 28]."""
    import torch

    from fastcas.tools.reproduce.fast import _float
    from fastcas.train.models import build_model

    torch.manual_seed(0)
    body = build_model("resnet8", 10)[:-3].eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            f = body(_float(torch.from_numpy(np.ascontiguousarray(x[i:i + batch]))))
            out.append(torch.nn.functional.adaptive_avg_pool2d(f, 2).flatten(1).numpy())
    return np.concatenate(out)


def feature_data(lt: dict) -> dict:
    """{"f", "y", "test_f", "test_y", "counts"}: standardised features of the LT data's train and test halves."""
    f, tf = features(lt["x"]), features(lt["test_x"])
    mu, sd = f.mean(0), f.std(0) + 1e-6
    return {"f": (f - mu) / sd, "y": lt["y"], "test_f": (tf - mu) / sd, "test_y": lt["test_y"], "counts": lt["counts"]}


def _epoch_indices(arm: str, y, seed: int):
    """A callable epoch -> int64 indices of that epoch, through fastcas's samplers."""
    from fastcas.sampling import weights as W
    from fastcas.sampling.plan import PlanSampler
    from fastcas.sampling.sampler import WeightedSampler

    if arm in ("Undersample", "Oversample"):
        s = PlanSampler(W.make_plan(arm.lower(), y, seed=seed), len(y), seed=seed, rank=0, world_size=1)
    else:
        s = WeightedSampler(len(y), seed=seed, rank=0, world_size=1, replacement=False)
    return lambda e: s.global_index_at(e, np.arange(s.num_samples))


def run_importance(arm: str, seed: int, d: dict, cfg) -> dict:
    """Train the logistic regression of ``arm``; {"metrics": {top1, low, many}, "curve": []}."""
    import torch

    from fastcas.sampling import weights as W
    from fastcas.tools.reproduce.groups import class_groups

    if arm not in ARMS:
        raise ValueError(f"unknown importance-sampling arm {arm!r}; expected one of {ARMS}")
    y, counts = d["y"], d["counts"]
    cw = np.ones(len(counts))
    if arm.startswith("Upweight"):
        cw = W.loss_weights(counts, "upweight-low", factor=float(arm.split("x")[1]))
    torch.manual_seed(int(generator(seed, 0xE1).integers(2**31)))
    lin = torch.nn.Linear(d["f"].shape[1], len(counts))
    opt = torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9)
    f, yt = torch.from_numpy(d["f"]), torch.from_numpy(np.asarray(y, np.int64))
    cwt = torch.as_tensor(cw, dtype=torch.float32)
    epoch_idx = _epoch_indices(arm, y, seed)
    n_ep = len(epoch_idx(0))
    steps = math.ceil(n_ep / 256)
    total = steps * cfg.is_epochs
    for e in range(cfg.is_epochs):
        idx = torch.from_numpy(epoch_idx(e))
        for s in range(steps):
            b = idx[s * 256:(s + 1) * 256]
            for g in opt.param_groups:
                g["lr"] = 0.05 * (1 + math.cos(math.pi * (e * steps + s) / total))
            loss = (torch.nn.functional.cross_entropy(lin(f[b]), yt[b], reduction="none") * cwt[yt[b]]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        pred = lin(torch.from_numpy(d["test_f"])).argmax(1).numpy()
    m = class_groups(pred, d["test_y"], counts)
    low = W.low_frequency_classes(counts)
    acc = np.array([float((pred[d["test_y"] == k] == k).mean()) for k in range(len(counts))])
    return {"metrics": {"top1": m["top1"], "low": float(acc[low].mean()), "many": m["many"]},
            "curve": [], "epoch_size": int(n_ep)}
