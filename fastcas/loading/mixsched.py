"""Which mixing a training batch gets: timm's per-batch switch between MixUp and CutMix
(``mix="mixup_cutmix"``) and the mixing schedule (``mix_start_epoch`` / ``mix_stop_epoch``).

Both are pure functions of ``(seed, epoch, step)`` (the step of the global batch, the same on
every rank and at every world size with the same global batch), so a resumed or re-split run
mixes the same batches the same way. Outside ``[mix_start_epoch, mix_stop_epoch)`` the mixing
probability is 0: the pixels are unmixed and the targets are one-hot (with label smoothing),
the same soft ``[B, K]`` shape as in mixing epochs.
"""
from __future__ import annotations

import math

from fastcas.core.rng import counter_uniform, derive_key

SWITCH = "mixup_cutmix"
SWITCH_OPTIONS = ("mode", "switch_prob", "mixup_alpha", "cutmix_alpha")
_TAG_SWITCH = 0x5C


def check_switch_options(options: dict) -> None:
    """ValueError for a bad ``switch_prob`` (a probability) or ``mixup_alpha`` / ``cutmix_alpha`` (> 0)."""
    p = options.get("switch_prob", 0.5)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ValueError(f"mix_options switch_prob must be in [0, 1] (the probability of CutMix), got {p!r}")
    for key in ("mixup_alpha", "cutmix_alpha"):
        a = options.get(key, 1.0)
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not (math.isfinite(a) and a > 0):
            raise ValueError(f"mix_options {key} must be > 0 (Beta(alpha, alpha)), got {a!r}")


def check_window(start, stop) -> None:
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"mix_start_epoch must be an integer >= 0, got {start!r}")
    if stop is not None and (isinstance(stop, bool) or not isinstance(stop, int) or stop < start):
        raise ValueError(f"mix_stop_epoch must be None or an integer >= mix_start_epoch ({start}), got {stop!r}")


def active(cfg, epoch: int) -> bool:
    """Whether ``epoch`` mixes: ``mix_start_epoch <= epoch < mix_stop_epoch`` (stop None: no end)."""
    stop = cfg.mix_stop_epoch
    return cfg.mix_start_epoch <= int(epoch) and (stop is None or int(epoch) < stop)


def uses_cutmix(seed: int, epoch: int, step: int, switch_prob: float) -> bool:
    """timm's ``use_cutmix = rand() < switch_prob``, drawn from ``(seed, epoch, step)``."""
    return bool(counter_uniform(derive_key(int(seed), _TAG_SWITCH, int(epoch)), int(step)) < switch_prob)


def mix_at(cfg, epoch: int, step: int) -> tuple:
    """``(kind, alpha, prob, options)`` of the batch at ``step`` of ``epoch`` for a LoaderConfig
    ``cfg`` with mixing: the switch resolved to "cutmix" or "mixup" (with that kind's alpha), the
    probability 0 outside the schedule's window, ``options`` for :func:`fastcas.mix.make_params_at`."""
    kind, alpha, opts = cfg.mix_kind, cfg.alpha, dict(cfg.mix_options)
    if kind == SWITCH:
        cut = uses_cutmix(cfg.seed, epoch, step, opts.pop("switch_prob", 0.5))
        a_mix, a_cut = opts.pop("mixup_alpha", alpha), opts.pop("cutmix_alpha", alpha)
        kind, alpha = ("cutmix", a_cut) if cut else ("mixup", a_mix)
    return kind, alpha, (cfg.mix_prob if active(cfg, epoch) else 0.0), opts
