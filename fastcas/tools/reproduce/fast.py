"""In-memory training for the reproduction: uint8 tensors, fastcas's samplers and mixing, a torch loop.

The DALI loader is not needed to compare recipes, and on a 2-core CPU it costs more than the
model; here the data are uint8 tensors ``[N, C, H, W]`` in memory, and every sampling and mixing
decision is fastcas's own: indices from :class:`~fastcas.sampling.sampler.WeightedSampler` /
:class:`~fastcas.sampling.plan.PlanSampler` (``global_index_at``), CMO's foreground from a second
weighted stream (``stream=1``), mixing parameters from :func:`fastcas.mix.make_params`
applied by :func:`fastcas.mix.api.apply` and :func:`fastcas.mix.api.soft_targets`.

Augmentation is the ``"cifar"`` policy (naver-ai/cmo ``cifar_train.py``: pad 4 with zeros,
random crop back to H x W, horizontal flip with p = 0.5), evaluation on the full image. The
learning rate follows the reference schedule scaled to the run (``cifar_train.py
adjust_learning_rate``: linear warm-up over the first 5/200 of training, x0.01 from 160/200,
x0.0001 from 180/200), per step. Every draw is keyed by (seed, purpose, epoch, step).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from fastcas.core.rng import generator

_AUG, _MIX, _INIT = 0xA0, 0xA1, 0xA2  # purpose tags of the loop's keyed draws


@dataclass(frozen=True)
class FastSpec:
    """One training run. ``sampler``: "shuffle" (uniform, without replacement), "weights"
    (``weights`` with replacement) or "plan" (``plan``, one pass per epoch); ``fg_weights``: CMO's
    foreground stream (else the foreground is the batch itself, reversed: a uniform partner).
    ``mix_window`` = (start, end): mix only while ``start < epoch < epochs - end`` (the CMO
    reference's strict window) when ``strict_window``, else ``start <= epoch < epochs - end``."""

    epochs: int
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 2e-4       # naver-ai/cmo opts for CIFAR-LT (--wd 2e-4)
    momentum: float = 0.9
    sampler: str = "shuffle"
    epoch_length: int | None = None  # draws per epoch (default: N, or the plan's length)
    mix: str = "none"
    alpha: float = 1.0
    mix_prob: float = 0.5
    mix_mode: str = "batch"          # the CutMix / CMO reference decides once per batch
    mix_window: tuple = (0, 0)
    strict_window: bool = False
    augment: bool = True
    model: str = "resnet8"
    eval_every: int = 1

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if self.sampler not in ("shuffle", "weights", "plan"):
            raise ValueError(f"sampler must be shuffle, weights or plan, got {self.sampler!r}")
        if self.mix not in ("none", "cutmix", "fmix", "saliencymix", "mixup"):
            raise ValueError(f"unknown mix {self.mix!r}")


def lr_factor(step: int, total: int) -> float:
    """The reference schedule on [0, total) steps: warm-up to 1 over 5/200, x0.01 from 160/200, x1e-4 from 180/200."""
    f = step / total
    if f < 5 / 200:
        return (step + 1) / max(1, math.ceil(total * 5 / 200))
    return 1e-4 if f >= 180 / 200 else (1e-2 if f >= 160 / 200 else 1.0)


def cifar_augment(x, rng: np.random.Generator, pad: int = 4):
    """uint8 [B, C, H, W] -> uint8 [B, C, H, W]: zero-pad ``pad``, random crop, random h-flip."""
    import torch

    b, _, h, w = x.shape
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    oy = torch.from_numpy(rng.integers(0, 2 * pad + 1, b))
    ox = torch.from_numpy(rng.integers(0, 2 * pad + 1, b))
    flip = torch.from_numpy(rng.random(b) < 0.5)
    cols = torch.arange(w)
    cols = torch.where(flip[:, None], w - 1 - cols[None], cols[None]) + ox[:, None]     # [B, W]
    rows = oy[:, None] + torch.arange(h)[None]                                            # [B, H]
    bi = torch.arange(b)[:, None, None]
    return xp.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def _float(x):
    import torch

    x = x.float().div_(255).sub_(0.5).div_(0.25)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous(memory_format=torch.channels_last)


def predict(model, x, batch: int = 1000) -> np.ndarray:
    """int64 [N] top-1 predictions of ``model`` on uint8 images ``x`` [N, C, H, W] (full image)."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out.append(model(_float(x[i:i + batch])).argmax(1).numpy())
    model.train()
    return np.concatenate(out).astype(np.int64)


def _samplers(spec: FastSpec, n: int, seed: int, weights, plan, fg_weights):
    from fastcas.sampling.plan import PlanSampler
    from fastcas.sampling.sampler import WeightedSampler

    if spec.sampler == "plan":
        bg = PlanSampler(plan, n, spec.epoch_length, seed=seed, rank=0, world_size=1)
    elif spec.sampler == "weights":
        bg = WeightedSampler(weights, spec.epoch_length, seed=seed, rank=0, world_size=1)
    else:
        bg = WeightedSampler(n, spec.epoch_length, seed=seed, rank=0, world_size=1, replacement=False)
    fg = None if fg_weights is None else WeightedSampler(fg_weights, bg.num_samples, seed=seed, rank=0,
                                                         world_size=1, stream=1)
    return bg, fg


def _mixing(spec: FastSpec, epoch: int) -> bool:
    start, end = spec.mix_window
    lo = epoch > start if spec.strict_window else epoch >= start
    return spec.mix != "none" and lo and epoch < spec.epochs - end


def train_fast(spec: FastSpec, x, y, *, seed: int, num_classes: int, weights=None, plan=None, fg_weights=None,
               class_weights=None, evaluate=None) -> tuple:
    """Train ``spec.model`` on uint8 ``x`` [N, C, H, W] (CPU tensor), labels ``y`` int64 [N].

    ``class_weights``: float [C] multiplying each sample's loss (plain mean over the batch);
    ``evaluate(model, epoch) -> dict`` is called every ``eval_every`` epochs and after the last.
    Returns (model, curve: list of dicts with ``epoch``, ``seconds`` and ``evaluate``'s keys).
    """
    import torch

    from fastcas.mix import make_params
    from fastcas.mix.api import apply, soft_targets
    from fastcas.train.models import build_model

    torch.manual_seed(int(generator(seed, _INIT).integers(2**31)))  # the initialisation, keyed by seed
    model = build_model(spec.model, num_classes).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    bg, fg = _samplers(spec, len(y), seed, weights, plan, fg_weights)
    yt = torch.as_tensor(np.asarray(y, np.int64))
    cw = None if class_weights is None else torch.as_tensor(np.asarray(class_weights, np.float32))
    steps = math.ceil(bg.num_samples / spec.batch_size)
    total, step, curve, t0 = steps * spec.epochs, 0, [], time.time()
    for epoch in range(spec.epochs):
        order = bg.global_index_at(epoch, np.arange(bg.num_samples))
        forder = None if fg is None else fg.global_index_at(epoch, np.arange(fg.num_samples))
        mixing = _mixing(spec, epoch)
        for s in range(steps):
            sl = slice(s * spec.batch_size, (s + 1) * spec.batch_size)
            idx = torch.from_numpy(order[sl])
            rng = generator(seed, _AUG, epoch, s)
            xb = cifar_augment(x[idx], rng) if spec.augment else x[idx]
            target = torch.nn.functional.one_hot(yt[idx], num_classes).float()
            if mixing:
                if forder is None:  # uniform foreground: the batch in reverse order
                    fidx = idx.flip(0)
                    xf = xb.flip(0)
                else:
                    fidx = torch.from_numpy(forder[sl])
                    xf = cifar_augment(x[fidx], generator(seed, _AUG, epoch, s, 1)) if spec.augment else x[fidx]
                p = make_params(spec.mix, len(idx), xb.shape[2], xb.shape[3], alpha=spec.alpha, prob=spec.mix_prob,
                                generator=generator(seed, _MIX, epoch, s), mode=spec.mix_mode,
                                foreground=xf if spec.mix == "saliencymix" else None)
                xb = apply(p, xb, xf)
                target = soft_targets(p, yt[idx], yt[fidx], num_classes)
            for g in opt.param_groups:
                g["lr"] = spec.lr * lr_factor(step, total)
            loss = -(target * torch.log_softmax(model(_float(xb)), 1)).sum(1)
            if cw is not None:
                loss = loss * (target @ cw)
            opt.zero_grad(set_to_none=True)
            loss.mean().backward()
            opt.step()
            step += 1
        if evaluate is not None and ((epoch + 1) % spec.eval_every == 0 or epoch == spec.epochs - 1):
            curve.append({"epoch": epoch, "seconds": time.time() - t0, **evaluate(model, epoch)})
    return model, curve
