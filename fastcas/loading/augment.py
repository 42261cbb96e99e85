"""Stateless augmentation parameters shared by the DALI loader and the torchvision baseline.

The random-resized-crop window and the flip at global ``position`` of ``epoch`` are pure
functions of ``(seed, epoch, stream, position)`` (:mod:`fastcas.sampling.geometry`'s key scheme; no
rank: the same position gets the same crop at any world size) and the image size (read from the JPEG
header), computed with the counter-based generator. So both loaders do identical work,
and a resumed run reproduces every crop without DALI's RNG state.
"""
from __future__ import annotations

import math

import numpy as np

from fastcas.core.rng import counter_uniform, derive_key
from fastcas.dataset import imagehdr

SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
_ATTEMPTS = 10
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def jpeg_size(buf) -> tuple[int, int] | None:
    """Displayed (width, height) of an encoded JPEG / PNG / WebP (EXIF orientation applied),
    or None if the bytes are not a complete image. Compatibility wrapper around
    :func:`fastcas.dataset.imagehdr.read`, which says why and gives the stored size too."""
    header = imagehdr.read(buf)
    return None if header is None else header.display_size


def crop_windows(key: np.uint64, positions, sizes, scale=SCALE, ratio=RATIO) -> np.ndarray:
    """float32 [n, 4] normalised (x, y, w, h) windows, torchvision ``RandomResizedCrop``
    semantics: up to 10 attempts of area ~ U(scale) * A and log-uniform aspect ratio; the
    first that fits wins; else a centre crop with the ratio clamped. ``sizes``: int [n, 2]
    (width, height). Vectorised over samples and attempts."""
    pos = np.asarray(positions, np.int64)
    W = np.asarray(sizes, np.float64)[:, 0:1]
    H = np.asarray(sizes, np.float64)[:, 1:2]
    base = pos[:, None] * 32 + np.arange(_ATTEMPTS)[None, :] * 3
    u_area, u_ratio = counter_uniform(key, base), counter_uniform(key, base + 1)
    area = W * H * (scale[0] + (scale[1] - scale[0]) * u_area)
    logr = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u_ratio
    ar = np.exp(logr)
    w = np.round(np.sqrt(area * ar))
    h = np.round(np.sqrt(area / ar))
    ok = (w > 0) & (h > 0) & (w <= W) & (h <= H)
    first = np.argmax(ok, axis=1)
    rows = np.arange(len(pos))
    w, h, any_ok = w[rows, first], h[rows, first], ok.any(axis=1)
    # the offsets get their own uniforms, one pair per sample
    ux, uy = counter_uniform(key, pos * 32 + 30), counter_uniform(key, pos * 32 + 31)
    Wf, Hf = W[:, 0], H[:, 0]
    x = np.floor(ux * (Wf - w + 1))
    y = np.floor(uy * (Hf - h + 1))
    # fallback: centre crop, ratio clamped to the range
    in_ratio = Wf / Hf
    fw = np.where(in_ratio < ratio[0], Wf, np.where(in_ratio > ratio[1], np.round(Hf * ratio[1]), Wf))
    fh = np.where(in_ratio < ratio[0], np.round(Wf / ratio[0]), Hf)
    w, h = np.where(any_ok, w, fw), np.where(any_ok, h, fh)
    x = np.where(any_ok, x, (Wf - fw) // 2)
    y = np.where(any_ok, y, (Hf - fh) // 2)
    return np.stack([x / Wf, y / Hf, w / Wf, h / Hf], axis=1).astype(np.float32)


def flips(key: np.uint64, positions) -> np.ndarray:
    """uint8 [n]: 1 = mirror horizontally (p = 0.5)."""
    return (counter_uniform(key, np.asarray(positions, np.int64) * 32 + 29) < 0.5).astype(np.uint8)


def augment_key(seed: int, epoch: int, stream: int = 0) -> np.uint64:
    """Key of the crop/flip draws of ``stream`` in ``epoch``; the counter is the global position."""
    return derive_key(seed, 0xA6, epoch, stream)
