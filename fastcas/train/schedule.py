"""Learning-rate schedules and the mixing window of a :class:`fastcas.train.loop.TrainConfig`.

* warm-up over ``warmup_epochs``: ``warmup_per="step"`` ramps linearly per step (fastcas's
  default); ``warmup_per="epoch"`` is the reference code's (naver-ai/cmo and kaidic/LDAM-DRW
  ``adjust_learning_rate``: ``epoch = epoch + 1; if epoch <= 5: lr = args.lr * epoch / 5``),
  constant within epoch ``e``: ``lr * (e + 1) / warmup_epochs``;
* then ``cosine`` (half a cosine over all epochs) or ``step``: from epoch ``step_epochs[i]`` on
  (0-based, the first epoch at the new rate) the rate is ``lr * step_factors[i]``, factors
  relative to the base rate (default 0.1, 0.01, ...: x0.1 at each step). The CIFAR-100-LT
  reference (``lr * 0.01`` when ``epoch + 1 > 160``, ``lr * 0.0001`` when ``> 180``) is
  ``step_epochs = (160, 180)``, ``step_factors = (0.01, 0.0001)``;
* mixing in epoch ``e`` while ``mix_start <= e < epochs - mix_end``. The CMO reference mixes
  while ``start_data_aug < epoch < epochs - end_data_aug`` (strict): its ``start_data_aug = 3``
  is ``mix_start = 4`` here (the recipes say so per value).
"""
from __future__ import annotations

import math

WARMUP_PER = ("step", "epoch")


def check(cfg) -> None:
    """ValueError naming the field when the schedule fields of ``cfg`` do not fit together."""
    if cfg.schedule not in ("cosine", "step"):
        raise ValueError(f"unknown schedule {cfg.schedule!r}; expected cosine or step")
    if cfg.warmup_per not in WARMUP_PER:
        raise ValueError(f"warmup_per must be 'step' or 'epoch', got {cfg.warmup_per!r}")
    if cfg.warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be >= 0, got {cfg.warmup_epochs}")
    if list(cfg.step_epochs) != sorted(cfg.step_epochs):
        raise ValueError(f"step_epochs must be increasing, got {list(cfg.step_epochs)}")
    if cfg.step_factors:
        if cfg.schedule != "step" or len(cfg.step_factors) != len(cfg.step_epochs):
            raise ValueError(f"step_factors {list(cfg.step_factors)} need the step schedule and one factor per "
                             f"step epoch (step_epochs {list(cfg.step_epochs)})")
        if not all(isinstance(f, (int, float)) and math.isfinite(f) and f > 0 for f in cfg.step_factors):
            raise ValueError(f"step_factors must be finite numbers > 0, got {list(cfg.step_factors)}")


def factors(cfg) -> tuple:
    """The rate multiplier (relative to ``lr``) from each of ``cfg.step_epochs`` on."""
    return tuple(cfg.step_factors) or tuple(0.1 ** (i + 1) for i in range(len(cfg.step_epochs)))


def lr_at(cfg, progress: float) -> float:
    """Learning rate at ``progress`` (epochs, fractional; epoch ``e`` is ``[e, e + 1)``)."""
    if progress < cfg.warmup_epochs:
        if cfg.warmup_per == "epoch":
            return cfg.lr * (math.floor(progress) + 1) / cfg.warmup_epochs
        return cfg.lr * (progress + 1e-3) / cfg.warmup_epochs
    if cfg.schedule == "cosine":
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * progress / cfg.epochs))
    f = 1.0
    for epoch, factor in zip(cfg.step_epochs, factors(cfg)):
        if progress >= epoch:
            f = factor
    return cfg.lr * f


def mixing_at(cfg, epoch: int) -> bool:
    """Whether epoch ``epoch`` mixes (``mix_start <= epoch < epochs - mix_end``)."""
    return cfg.mix != "none" and cfg.mix_start <= epoch < cfg.epochs - cfg.mix_end
