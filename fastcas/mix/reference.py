"""NumPy reference for every mixing kernel (vectorised over the batch, no per-sample loop).

The Numba CUDA kernels in ``kernels/`` and the torch path in :mod:`fastcas.mix._backend` must
give the same pixels for the same :class:`~fastcas.mix.params.MixParams`:

* boxes (cutmix, saliencymix): ``out = fg`` inside the half-open box, ``bg`` elsewhere (a copy);
* masks (fmix): ``out = (1 - m) * bg + m * fg`` in float32 (float64 for float64 images);
* mixup: ``out = w * bg + (1 - w) * fg`` with ``w = float32(lam)`` per sample;
* integer images (uint8) are rounded half up: ``floor(v + 0.5)``.
"""
from __future__ import annotations

import numpy as np

from .params import MixParams, boxes_to_masks

NUMPY_DTYPES = (np.uint8, np.float16, np.float32, np.float64)


def compute_dtype(dtype) -> type:
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def _finish(v: np.ndarray, dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        v = np.floor(v + v.dtype.type(0.5))
    return v.astype(dtype)


def apply_boxes(bg: np.ndarray, fg: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """bg, fg ``[B, C, H, W]``; boxes int32 ``[B, 4]`` -> new array, same dtype."""
    inside = boxes_to_masks(boxes, bg.shape[2], bg.shape[3]).astype(bool)[:, None]
    return np.where(inside, fg, bg)


def blend(bg: np.ndarray, fg: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """bg, fg ``[B, C, H, W]``; masks float ``[B, H, W]`` (1 = foreground) -> new array."""
    ct = compute_dtype(bg.dtype)
    m = np.asarray(masks).astype(ct, copy=False)[:, None]
    v = (ct(1) - m) * bg.astype(ct) + m * fg.astype(ct)
    return _finish(v, bg.dtype)


def blend_lam(bg: np.ndarray, fg: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """MixUp: ``lam * bg + (1 - lam) * fg`` per sample; lam ``[B]`` -> new array."""
    ct = compute_dtype(bg.dtype)
    w = lam.astype(ct)[:, None, None, None]
    v = w * bg.astype(ct) + (ct(1) - w) * fg.astype(ct)
    return _finish(v, bg.dtype)


def apply_numpy(params: MixParams, bg: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """Apply ``params`` to NumPy batches; returns a new array (inputs untouched)."""
    if params.boxes is not None:
        return apply_boxes(bg, fg, params.boxes)
    if params.masks is not None:
        return blend(bg, fg, params.box_masks())
    return blend_lam(bg, fg, params.lam)
