"""Per-sample saliency peaks for SaliencyMix (Uddin et al. 2021, "SaliencyMix", Sec. 3.2).

Three methods:

* ``"finegrained"`` (default) — the fine-grained static saliency of the SaliencyMix reference
  (``saliency_bbox`` calls OpenCV contrib ``StaticSaliencyFineGrained``; Montabone & Soto
  2010), batched over the whole batch in torch on the images' device
  (:mod:`fastcas.mix.finegrained`); its maps equal OpenCV's bit for bit (tested on real
  photos), so the centre is the reference's: the first argmax in raster order.
* ``"opencv"`` — the same maps from OpenCV itself, a host loop over samples (OpenCV has no
  batched call): the reference the batched version is tested against.
* ``"spectral"`` — spectral residual (Hou & Zhang, CVPR 2007), batched over the whole
  batch with one FFT: grey image area-downsampled by an integer factor to about 64 pixels on the
  long side, log-amplitude minus its 3x3 mean, back-transformed with the original phase,
  squared, Gaussian-smoothed (sigma 2.5, zero padding); the argmax is mapped back to the centre of its block. NumPy
  (reference) and torch (CPU or CUDA, same formulas in float32) versions.

The reference computes one map for the whole batch (on one image); fastcas does it per sample.
"""
from __future__ import annotations

import numpy as np

from fastcas.core.device import array_to_device

from .finegrained import finegrained_argmax

METHODS = ("finegrained", "opencv", "spectral")
ALIASES = {"spectral-residual": "spectral", "fine-grained": "finegrained"}
_TARGET = 64
_SIGMA = 2.5


def _factor(height: int, width: int) -> int:
    return max(1, max(height, width) // _TARGET)


def _gauss_taps(sigma: float = _SIGMA) -> np.ndarray:
    r = int(3 * sigma)
    x = np.arange(-r, r + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _is_cupy(x) -> bool:
    return type(x).__module__.startswith("cupy")


def _as_torch(images):
    """A CuPy array -> a torch tensor on the same GPU, zero-copy through DLPack (CuPy forbids the
    implicit host conversion ``np.asarray`` would need)."""
    import torch

    return torch.from_dlpack(images)


def spectral_residual_numpy(images: np.ndarray) -> np.ndarray:
    """images ``[B, C, H, W]`` (any real dtype) -> saliency ``[B, h, w]`` (float32 FFTs) at the
    downsampled size ``(H // f, W // f)``, ``f = max(1, max(H, W) // 64)``."""
    b, c, height, width = images.shape
    f = _factor(height, width)
    h, w = height // f, width // f
    g = images.mean(axis=1, dtype=np.float32)[:, : h * f, : w * f]
    g = g.reshape(b, h, f, w, f).mean(axis=(2, 4))
    spec = np.fft.fft2(g)
    amp = np.abs(spec)
    log_amp = np.log(amp + 1e-9)
    local = sum(np.roll(log_amp, (dy, dx), axis=(1, 2)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9.0
    phase = spec / np.maximum(amp, 1e-30)
    sal = np.abs(np.fft.ifft2(np.exp(log_amp - local) * phase)) ** 2
    taps = _gauss_taps()
    r = len(taps) // 2
    for axis in (1, 2):
        pad = [(0, 0)] * 3
        pad[axis] = (r, r)
        p = np.pad(sal, pad)  # zero padding: a reflected peak would pull the argmax to the border
        n = sal.shape[axis]
        sal = sum(t * np.take(p, np.arange(k, k + n), axis=axis) for k, t in enumerate(taps))
    return sal


def spectral_residual_torch(images):
    """Torch twin of :func:`spectral_residual_numpy` (float32, on the images' device)."""
    import torch
    import torch.nn.functional as F

    b, c, height, width = images.shape
    f = _factor(height, width)
    h, w = height // f, width // f
    g = images.to(torch.float32).mean(dim=1)[:, : h * f, : w * f]
    g = g.reshape(b, h, f, w, f).mean(dim=(2, 4))
    spec = torch.fft.fft2(g)
    amp = spec.abs()
    log_amp = torch.log(amp + 1e-9)
    local = sum(torch.roll(log_amp, (dy, dx), dims=(1, 2)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9.0
    phase = spec / torch.clamp(amp, min=1e-30)
    sal = torch.fft.ifft2(torch.exp(log_amp - local) * phase).abs() ** 2

    taps = array_to_device(_gauss_taps(), images.device, torch.float32)  # pinned, non-blocking: no host sync
    r = len(taps) // 2
    x = sal[:, None]
    x = F.conv2d(x, taps.view(1, 1, -1, 1), padding=(r, 0))  # zero padding, as the NumPy twin
    x = F.conv2d(x, taps.view(1, 1, 1, -1), padding=(0, r))
    return x[:, 0]


def _to_uint8_hwc(img: np.ndarray) -> np.ndarray:
    """CHW image -> HWC uint8 for OpenCV (uint8 kept; floats min-max scaled per image)."""
    x = np.moveaxis(img, 0, -1)
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    x = x.astype(np.float64)
    lo, hi = x.min(), x.max()
    x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    return np.ascontiguousarray((x * 255).astype(np.uint8))


def finegrained_map(img_chw: np.ndarray) -> np.ndarray:
    """OpenCV StaticSaliencyFineGrained map of one CHW image, quantised to uint8 as the
    SaliencyMix reference does. Needs ``opencv-contrib-python(-headless)``."""
    try:
        import cv2

        sal = cv2.saliency.StaticSaliencyFineGrained_create()
    except (ImportError, AttributeError) as exc:  # pragma: no cover - depends on install
        raise ValueError("saliency='finegrained' needs opencv-contrib-python-headless "
                         f"(cv2.saliency): {exc}") from exc
    x = _to_uint8_hwc(img_chw)
    if x.shape[2] == 1:
        x = x[..., 0]
    ok, m = sal.computeSaliency(x)
    if not ok:
        raise ValueError("OpenCV StaticSaliencyFineGrained failed on an image")
    return (m * 255).astype(np.uint8)


def saliency_centres(images, method: str = "finegrained") -> tuple[np.ndarray, np.ndarray]:
    """Most salient pixel of each image. images: ``[B, C, H, W]`` NumPy array, torch tensor
    (CPU or CUDA) or CuPy array (through DLPack to torch, never through ``np.asarray``).
    Returns host int64 arrays ``(cy, cx)``, each ``[B]``, in full-resolution
    pixel coordinates. Ties: first maximum in raster order."""
    method = ALIASES.get(method, method)
    if method not in METHODS:
        raise ValueError(f"saliency method must be one of {METHODS}, got {method!r}")
    if _is_cupy(images):  # CuPy (GPU): the torch twin on the same device
        images = _as_torch(images)
    b, c, height, width = tuple(images.shape)
    if b == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if method == "finegrained":
        flat = finegrained_argmax(images).cpu().numpy().astype(np.int64)
        return flat // width, flat % width
    if method == "opencv":
        host = images.detach().cpu().numpy() if _is_torch(images) else np.asarray(images)
        flat = np.array([int(np.argmax(finegrained_map(img))) for img in host], dtype=np.int64)
        return flat // width, flat % width
    if _is_torch(images):
        sal = spectral_residual_torch(images)
        flat = sal.reshape(b, -1).argmax(dim=1).cpu().numpy().astype(np.int64)
    else:
        sal = spectral_residual_numpy(np.asarray(images))
        flat = sal.reshape(b, -1).argmax(axis=1).astype(np.int64)
    f = _factor(height, width)
    w = sal.shape[-1]
    cy = np.minimum((flat // w) * f + f // 2, height - 1)
    cx = np.minimum((flat % w) * f + f // 2, width - 1)
    return cy, cx
