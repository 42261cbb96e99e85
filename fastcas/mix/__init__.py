"""Batched, per-sample mixing: CutMix, FMix, SaliencyMix, MixUp, and CMO paste.

Parameters are drawn on the host from an explicit ``numpy.random.Generator``
(:func:`make_params`) or from the samples' global stream positions (:func:`make_params_at`),
and applied by a NumPy reference, torch ops, or Numba CUDA kernels (:func:`apply`); :func:`mix` does both and returns
soft targets. See ``fastcas/mix/params.py``
for the conventions (lam = kept-background fraction, boxes ``(y0, x0, y1, x1)`` half-open).
"""
from .api import apply, check_images, mix, soft_targets, targets_from_lam
from .draw import make_params, make_params_at
from .kinds import PARAM_KINDS as KINDS
from .params import MixParams, boxes_to_masks, in_batch_partner, pair_partner, paste_args

__all__ = ["KINDS", "MixParams", "apply", "boxes_to_masks", "check_images", "in_batch_partner",
           "make_params", "make_params_at", "mix", "pair_partner", "paste_args", "soft_targets", "targets_from_lam"]
