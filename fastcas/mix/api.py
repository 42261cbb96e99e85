"""Public mixing API: validation, :func:`apply`, :func:`soft_targets`, :func:`mix`.

Images are ``[B, C, H, W]`` NumPy arrays (reference), torch tensors (CPU: torch ops; CUDA: the
Numba kernels) or CuPy arrays; the output has the input's type, dtype and device. Background
and foreground come either from one batch (``foreground = background[perm]``, see
:func:`~fastcas.mix.params.in_batch_partner`) or from two streams (CMO: uniform background,
class-reweighted foreground; Park et al. 2022, Sec. 3.2).
"""
from __future__ import annotations

import numpy as np

from fastcas.core.rng import generator as make

from . import _backend
from .draw import check_kind, make_params
from .kinds import KINDS as KIND_OBJECTS
from .kinds import PARAM_KINDS as KINDS
from .kinds import get as get_kind
from .params import MixParams, check_alpha_prob

IMAGE_DTYPES = {
    "numpy": ("uint8", "float16", "float32", "float64"),
    "torch": ("uint8", "float16", "bfloat16", "float32", "float64"),
    "cupy": ("uint8", "float16", "float32"),
}


def check_images(background, foreground) -> tuple[int, int, int, int]:
    """Validate a background/foreground pair; returns ``(B, C, H, W)``."""
    kb, kf = _backend.array_kind(background), _backend.array_kind(foreground)
    if kb != kf:
        raise ValueError(f"background is a {kb} array but foreground is a {kf} array")
    sb, sf = tuple(background.shape), tuple(foreground.shape)
    if len(sb) != 4:
        raise ValueError(f"background must be 4-D [B, C, H, W], got shape {list(sb)}")
    if sb != sf:
        raise ValueError(f"shape mismatch: background {list(sb)} vs foreground {list(sf)}")
    db, df = _backend.device_of(background), _backend.device_of(foreground)
    if db != df:
        raise ValueError(f"device mismatch: background on {db}, foreground on {df}")
    tb, tf = _backend.dtype_name(background), _backend.dtype_name(foreground)
    if tb != tf:
        raise ValueError(f"dtype mismatch: background {tb} vs foreground {tf}")
    if tb not in IMAGE_DTYPES[kb]:
        raise ValueError(f"unsupported dtype {tb} for {kb} images; supported: {IMAGE_DTYPES[kb]}")
    if sb[2] < 1 or sb[3] < 1:
        raise ValueError(f"images must have H, W >= 1, got shape {list(sb)}")
    return sb


def _labels_numpy(y, name: str, batch_size: int, num_classes: int) -> np.ndarray:
    kind = _backend.array_kind(y) if not isinstance(y, (list, tuple)) else "numpy"
    arr = np.asarray(y.detach().cpu().numpy() if kind == "torch" else
                     (y.get() if kind == "cupy" else y))
    if arr.shape != (batch_size,):
        raise ValueError(f"{name} must have shape [{batch_size}], got {list(arr.shape)}")
    if batch_size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class ids, got dtype {arr.dtype}")
    if batch_size and (arr.min() < 0 or arr.max() >= num_classes):
        bad = arr[(arr < 0) | (arr >= num_classes)][0]
        raise ValueError(f"{name} has label {int(bad)} outside [0, {num_classes})")
    return arr.astype(np.int64)


def soft_targets(params: MixParams, y_bg, y_fg, num_classes: int, label_smoothing: float = 0.0):
    """Soft targets ``lam * onehot(y_bg) + (1 - lam) * onehot(y_fg)``, float32 ``[B, K]``.

    ``lam`` is the measured kept-background fraction in ``params``. With label smoothing ``s``
    each one-hot is ``off = s / K`` everywhere and ``1 - s + off`` at the label (timm's rule);
    rows sum to 1. Returned on the labels' framework and device (torch labels -> torch tensor).
    """
    return targets_from_lam(params.lam, y_bg, y_fg, num_classes, label_smoothing)


def targets_from_lam(lam, y_bg, y_fg, num_classes: int, label_smoothing: float = 0.0):
    """:func:`soft_targets` from ``lam`` alone (float64 ``[B]`` host array, or a tensor on the
    labels' device): for batches mixed inside the DALI pipeline, whose parameters arrive with
    the batch (:mod:`fastcas.loading.pipeline`)."""
    num_classes = int(num_classes)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    s = float(label_smoothing)
    if not 0.0 <= s < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    b = len(lam)
    if _is_torch(y_bg) and _is_torch(y_fg):
        return _soft_targets_torch(lam, y_bg, y_fg, num_classes, s)
    yb = _labels_numpy(y_bg, "y_bg", b, num_classes)
    yf = _labels_numpy(y_fg, "y_fg", b, num_classes)
    off = s / num_classes
    on = 1.0 - s + off
    lam = np.asarray(lam, np.float64)
    t = np.full((b, num_classes), off, dtype=np.float64)
    rows = np.arange(b)
    t[rows, yb] = lam * on + (1.0 - lam) * off
    t[rows, yf] += (1.0 - lam) * (on - off)
    return t.astype(np.float32)


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _soft_targets_torch(lam: np.ndarray, y_bg, y_fg, num_classes: int, s: float):
    """Torch twin of the NumPy targets, built on the labels' device. ``lam``: host array or a
    tensor on that device. CPU labels are range-checked; CUDA labels are not (reading them back
    would synchronise the host every batch)."""
    import torch

    b = len(lam)
    for name, y in (("y_bg", y_bg), ("y_fg", y_fg)):
        if tuple(y.shape) != (b,):
            raise ValueError(f"{name} must have shape [{b}], got {list(y.shape)}")
        if y.dtype.is_floating_point or y.dtype == torch.bool or y.dtype.is_complex:
            raise ValueError(f"{name} must hold integer class ids, got dtype {y.dtype}")
    if y_fg.device != y_bg.device:
        raise ValueError(f"device mismatch: y_bg on {y_bg.device}, y_fg on {y_fg.device}")
    yb, yf = y_bg.long(), y_fg.long()
    if b and not yb.is_cuda:  # on CUDA the check would stall the host every batch: labels are
        # validated where they are known instead (the Loader checks its manifest at construction)
        both = torch.stack([yb, yf])
        lo, hi = (int(v) for v in torch.stack([both.min(), both.max()]).tolist())
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            name = "y_bg" if bool(((yb < 0) | (yb >= num_classes)).any()) else "y_fg"
            raise ValueError(f"{name} has label {bad} outside [0, {num_classes})")
    off = s / num_classes
    on = 1.0 - s + off
    lam_t = torch.as_tensor(lam, dtype=torch.float64).to(yb.device, non_blocking=True)
    t = torch.full((b, num_classes), off, dtype=torch.float64, device=yb.device)
    t.scatter_(1, yb[:, None], (lam_t * on + (1.0 - lam_t) * off)[:, None])
    t.scatter_add_(1, yf[:, None], ((1.0 - lam_t) * (on - off))[:, None])
    return t.to(torch.float32)


def apply(params: MixParams, background, foreground, *, backend: str = "auto"):
    """Apply ``params`` to a batch; returns new mixed images of the inputs' type and device.

    backend: "auto" (NumPy reference for NumPy, torch ops for CPU tensors, Numba kernels for
    CUDA tensors / CuPy), or force "numpy" | "torch" | "numba".
    """
    b, c, h, w = check_images(background, foreground)
    if (b, h, w) != (params.batch_size, params.height, params.width):
        raise ValueError(f"params are for B={params.batch_size} H={params.height} W={params.width}, "
                         f"images are {[b, c, h, w]}")
    return get_kind(params.kind).apply(params, background, foreground, backend=backend)  # (fastcas.mix.kinds)


def _generator(generator) -> np.random.Generator:
    if generator is None:
        return np.random.default_rng()  # fresh OS entropy; pass a Generator to reproduce
    if isinstance(generator, np.random.Generator):
        return generator
    if isinstance(generator, (int, np.integer)):
        return make(int(generator))
    raise ValueError(f"generator must be a numpy.random.Generator, an int seed or None, "
                     f"got {type(generator).__name__}")


def mix(kind, background, foreground, y_bg, y_fg, *, num_classes: int, alpha: float = 1.0,
        prob: float = 1.0, generator=None, label_smoothing: float = 0.0, backend: str = "auto",
        return_params: bool = False, **opts):
    """Mix one batch: ``(images, targets)`` (``+ params`` with ``return_params=True``).

    kind: cutmix | fmix | saliencymix | mixup. background, foreground: ``[B, C, H, W]`` of the
    same type/shape/dtype/device. y_bg, y_fg: int ``[B]`` in ``[0, num_classes)``. alpha:
    Beta(alpha, alpha) (CAS paper: 0.2; CMO/SaliencyMix: 1). prob: per-sample mix probability
    (samples not mixed keep their background and get lam = 1). generator: NumPy Generator (or
    int seed; None = fresh entropy). opts: ``mode``, FMix ``decay``/``max_soft``, SaliencyMix
    ``saliency`` (see :func:`fastcas.mix.make_params`). Works for any batch size,
    including odd and partial batches.
    """
    kind = check_kind(kind)
    check_alpha_prob(alpha, prob)
    b, c, h, w = check_images(background, foreground)
    gen = _generator(generator)
    if not (_is_torch(y_bg) and _is_torch(y_fg)):  # torch labels are checked in soft_targets
        _labels_numpy(y_bg, "y_bg", b, int(num_classes))
        _labels_numpy(y_fg, "y_fg", b, int(num_classes))
    dev = _backend.device_of(background)
    params = make_params(kind, b, h, w, alpha=alpha, prob=prob, generator=gen,
                         foreground=foreground if KIND_OBJECTS[kind].needs_foreground else None,
                         device=dev if dev.startswith("cuda") else None, **opts)
    images = KIND_OBJECTS[kind].apply(params, background, foreground, backend=backend)
    targets = soft_targets(params, y_bg, y_fg, num_classes, label_smoothing)
    return (images, targets, params) if return_params else (images, targets)


__all__ = ["KINDS", "apply", "check_images", "mix", "soft_targets"]
