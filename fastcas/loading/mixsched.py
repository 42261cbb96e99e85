"""Which mixing a training batch gets: timm's per-batch switch between MixUp and CutMix
(``mix="mixup_cutmix"``) and the mixing schedule (``mix_start_epoch`` / ``mix_stop_epoch``).

Both are pure functions of ``(seed, epoch, step)`` (the step of the global batch, the same on
every rank and at every world size with the same global batch), so a resumed or re-split run
mixes the same batches the same way. Outside ``[mix_start_epoch, mix_stop_epoch)`` the mixing
probability is 0: the pixels are unmixed and the targets are one-hot (with label smoothing),
the same soft ``[B, K]`` shape as in mixing epochs.
"""
from __future__ import annotations

# the per-batch switch lives with the other mix kinds (fastcas.mix.kinds); names kept here for callers
from fastcas.mix.kinds import KINDS, SWITCH, SWITCH_OPTIONS, check_switch_options, uses_cutmix  # noqa: F401


def check_window(start, stop) -> None:
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"mix_start_epoch must be an integer >= 0, got {start!r}")
    if stop is not None and (isinstance(stop, bool) or not isinstance(stop, int) or stop < start):
        raise ValueError(f"mix_stop_epoch must be None or an integer >= mix_start_epoch ({start}), got {stop!r}")


def active(cfg, epoch: int) -> bool:
    """Whether ``epoch`` mixes: ``mix_start_epoch <= epoch < mix_stop_epoch`` (stop None: no end)."""
    stop = cfg.mix_stop_epoch
    return cfg.mix_start_epoch <= int(epoch) and (stop is None or int(epoch) < stop)


def mix_at(cfg, epoch: int, step: int) -> tuple:
    """``(kind, alpha, prob, options)`` of the batch at ``step`` of ``epoch`` for a LoaderConfig
    ``cfg`` with mixing: the switch resolved to "cutmix" or "mixup" (with that kind's alpha), the
    probability 0 outside the schedule's window, ``options`` for :func:`fastcas.mix.make_params_at`."""
    kind, alpha, opts = KINDS[cfg.mix_kind].at(cfg.seed, epoch, step, cfg.alpha, cfg.mix_options)
    return kind, alpha, (cfg.mix_prob if active(cfg, epoch) else 0.0), opts
