"""The reproduction's arms and one run of each (``run_one``), on the data of :mod:`.data`.

Parts (each arm of a part differs from its control in one thing only):

* ``cmo`` (the CMO paper, Table 9's comparison on Fashion-MNIST-LT): CE; CutMix with a uniform
  foreground (the batch itself); CMO (foreground from a second stream with naver-ai/cmo's
  per-sample 1/n_k weights); class-balanced resampling (the background drawn with those weights,
  no mixing). CutMix and CMO share p = 0.5 per batch, Beta(1, 1), one box per batch, the strict
  window ``start < epoch < E - end`` (the reference's 3 and 3 of 200 epochs, scaled).
* ``cas`` (the CAS paper's Table 2 comparison, with controls) on a class-balanced tinted set,
  every arm drawn *with replacement* (so sampling with vs without replacement is not compared):
  CutMix (uniform weights); CutMix + CAS (CAS**1.2); placebo (the CAS weights permuted inside
  every class, keyed by the seed); oracle (1 / the share of the image's tint in its class).
  Negative control: the same pair on a set whose rare attribute is a 90-degree rotation.
* ``importance`` (the importance-sampling paper's schemes, :mod:`.importance`).
"""
from __future__ import annotations

import time

import numpy as np

from fastcas.tools.reproduce.groups import attr_groups, class_groups

CUTMIX_CMO = dict(mix="cutmix", alpha=1.0, mix_prob=0.5, mix_mode="batch", strict_window=True)
CUTMIX_CAS = dict(mix="cutmix", alpha=0.2, mix_prob=0.5, mix_mode="batch")  # CAS paper: alpha 0.2

ARMS = {
    "cmo": {
        "CE": dict(),
        "CutMix": dict(**CUTMIX_CMO),
        "CMO": dict(fg="cmo", **CUTMIX_CMO),
        "Balanced resampling": dict(sampler="weights", weights="cmo"),
    },
    "cas": {
        "CutMix": dict(sampler="weights", weights="uniform", **CUTMIX_CAS),
        "CutMix + CAS": dict(sampler="weights", weights="cas", **CUTMIX_CAS),
        "CutMix + CAS placebo": dict(sampler="weights", weights="placebo", **CUTMIX_CAS),
        "CutMix + oracle": dict(sampler="weights", weights="oracle", **CUTMIX_CAS),
        "CutMix (rotation)": dict(sampler="weights", weights="uniform", data="rot", **CUTMIX_CAS),
        "CutMix + CAS (rotation)": dict(sampler="weights", weights="cas", data="rot", **CUTMIX_CAS),
    },
}

# (treatment, control, the groups the paper says should rise)
COMPARISONS = {
    "cmo": (("CMO", "CE", ("few", "top1")), ("CMO", "CutMix", ("few", "top1")),
            ("CutMix", "CE", ("top1",)), ("Balanced resampling", "CE", ("few",))),
    "cas": (("CutMix + CAS", "CutMix", ("rare_attr",)), ("CutMix + CAS", "CutMix + CAS placebo", ("rare_attr",)),
            ("CutMix + oracle", "CutMix", ("rare_attr",)),
            ("CutMix + CAS (rotation)", "CutMix (rotation)", ())),  # negative control: no rise expected
}
GROUPS = {"cmo": ("top1", "many", "medium", "few"), "cas": ("top1", "rare_attr", "common_attr"),
          "importance": ("top1", "low", "many")}
def _weights(name: str, d: dict, seed: int):
    from fastcas.sampling import weights as W
    from fastcas.tools.reproduce.data import oracle, placebo

    if name == "uniform":
        return W.make("uniform", d["y"])
    if name == "cmo":
        return W.make("cmo", d["y"])
    if name == "cas":
        return W.make("cas", d["y"], scores=d["cas"], b=1.2)
    if name == "placebo":
        return placebo(W.make("cas", d["y"], scores=d["cas"], b=1.2), d["y"], seed)
    if name == "oracle":
        return oracle(d["attr"], d["y"])
    raise ValueError(f"unknown weights {name!r}")


def run_one(part: str, arm: str, seed: int, data: dict, cfg) -> dict:
    """Train ``arm`` of ``part`` with ``seed``; returns {"metrics", "curve", "seconds"}."""
    import torch

    from fastcas.tools.reproduce.fast import FastSpec, predict, train_fast

    t0 = time.time()
    if part == "importance":
        from fastcas.tools.reproduce.importance import run_importance

        return {**run_importance(arm, seed, data["importance"], cfg), "seconds": time.time() - t0}
    opts = dict(ARMS[part][arm])
    d = data[opts.pop("data", "lt" if part == "cmo" else "tint")]
    wname, fgname = opts.pop("weights", None), opts.pop("fg", None)
    weights = None if wname is None else _weights(wname, d, seed)
    fg = None if fgname is None else _weights(fgname, d, seed)
    epochs = cfg.cmo_epochs if part == "cmo" else cfg.cas_epochs
    k = round(epochs * 3 / 200)  # the reference's start/end_data_aug = 3 of 200 epochs, scaled
    spec = FastSpec(epochs=epochs, batch_size=cfg.batch_size, mix_window=(k, k), **opts)
    xt = torch.from_numpy(np.ascontiguousarray(d["x"]))
    if part == "cmo":
        # the curve on every second dev image (2,500, ~250 a class): evaluation costs steps on a CPU
        dev_x = torch.from_numpy(np.ascontiguousarray(d["dev_x"][::2]))
        ev = lambda m, e: class_groups(predict(m, dev_x), d["dev_y"][::2], d["counts"])  # noqa: E731
    else:
        spec = FastSpec(**{**spec.__dict__, "eval_every": epochs})
        ev = None
    model, curve = train_fast(spec, xt, d["y"], seed=seed, num_classes=10, weights=weights, fg_weights=fg,
                              evaluate=ev)
    pred = predict(model, torch.from_numpy(np.ascontiguousarray(d["test_x"])))
    metrics = (class_groups(pred, d["test_y"], d["counts"]) if part == "cmo"
               else attr_groups(pred, d["test_y"], d["test_rare"]))
    return {"metrics": metrics, "curve": curve, "seconds": time.time() - t0}
