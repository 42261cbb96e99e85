"""Fine-grained static saliency (Montabone & Soto 2010), batched in torch on the images' device.

This is the saliency of the SaliencyMix reference code (``cv2.saliency.
StaticSaliencyFineGrained``, opencv_contrib ``staticSaliencyFineGrained.cpp``), re-derived from
that implementation's behaviour so that a whole batch runs in a few tensor operations on the
CPU or the GPU, and the map equals OpenCV's bit for bit (tested against OpenCV on real photos).
Where the paper's text and OpenCV's code differ, the code wins: it produced SaliencyMix's
tables. Steps, each batched over ``B``:

1. grey: OpenCV's ``COLOR_BGR2GRAY`` fixed point on the HWC uint8 image as the reference passes
   it (fastcas passes RGB data, as the SaliencyMix reference does, so channel 0 is weighted as
   blue): ``(7470*c0 + 38470*c1 + 19596*c2 + 2**15) >> 16``;
2. two 3x3 Gaussian blurs (sigma from ksize: taps 1-2-1), each rounded to uint8, with OpenCV's
   default reflect-101 border;
3. one integral image; for six neighbourhoods ``n`` in (12, 24, 48, 28, 56, 112) the
   centre-surround mean ``(box_sum - centre) / (area - 1)`` over the box from ``p - n + 1`` to
   ``p + n + 1`` with both corners clamped to the integral image (``[0, size]``), in float32
   with OpenCV's order of additions; on = ``trunc(grey - mean)`` where positive, off = ``trunc(mean - grey)`` where
   positive;
4. per image, sums over scales are normalised to ``trunc(255 * sum / max_sum)``, and the map is
   ``255 * (on + off) / max(on.max(), off.max())`` converted to uint8 as OpenCV's compiled code
   does (saturating); the result is OpenCV's map times 255.

Input images are min-max scaled per image to uint8 first (as :func:`fastcas.mix.saliency.
finegrained_map` does before calling OpenCV), so float normalised batches work directly.

The torch code here is the definition and runs on any device (the CUDA path). On the CPU the
default is its Numba twin :mod:`fastcas.mix._finegrained_cpu` (one pass per image, the same
dtypes and order of operations, bit-identical; tested on photos and random images of many
sizes), about 20x faster on one core.
"""
from __future__ import annotations

import numpy as np

from ._finegrained_spec import GREY as _GREY
from ._finegrained_spec import NEIGHBOURHOODS


def _to_uint8(images):
    """[B, C, H, W] any real dtype -> int32 [B, C, H, W] in 0..255 (uint8 kept; floats min-max
    scaled per image in float64 and truncated, exactly like ``_to_uint8_hwc``)."""
    import torch

    if images.dtype == torch.uint8:
        return images.to(torch.int32)
    x = images.to(torch.float64, copy=True)  # never the caller's tensor: scaled in place below
    b = x.shape[0]
    lo, hi = x.reshape(b, -1).aminmax(dim=1)
    lo, hi = lo.view(b, 1, 1, 1), hi.view(b, 1, 1, 1)
    ok = (hi - lo) > 0
    span = torch.where(ok, hi - lo, torch.ones_like(lo))
    x.sub_(lo).div_(span).mul_(255).floor_()
    x.masked_fill_(~ok, 0)  # flat images (and NaN ones) map to 0
    return x.to(torch.int32)


def _grey(u8):
    """int32 [B, C, H, W] -> int32 [B, H, W] (OpenCV BGR2GRAY fixed point; C == 1 copied)."""
    if u8.shape[1] == 1:
        return u8[:, 0]
    c0, c1, c2 = u8[:, 0], u8[:, 1], u8[:, 2]
    return (_GREY[0] * c0 + _GREY[1] * c1 + _GREY[2] * c2 + (1 << 15)) >> 16


def _blur121(g):
    """One 3x3 1-2-1 Gaussian blur of int32 [B, H, W] with OpenCV's default reflect-101 border,
    rounded half up to integers (OpenCV's bit-exact 8-bit path): separable integer adds."""
    import torch

    def taps(x, dim):
        n = x.shape[dim]
        if n == 1:
            return 4 * x
        lo = x.narrow(dim, 1, 1)          # reflect-101: index -1 mirrors index 1
        hi = x.narrow(dim, n - 2, 1)      # and index n mirrors n - 2
        p = torch.cat([lo, x, hi], dim)
        return p.narrow(dim, 0, n) + 2 * x + p.narrow(dim, 2, n)

    return (taps(taps(g, 1), 2) + 8) >> 4


BACKENDS = ("auto", "torch", "numba")


def _prepare(images, backend):
    """Validated torch tensor of the batch and the backend to run it with."""
    import torch

    if backend not in BACKENDS:
        raise ValueError(f"fine-grained saliency backend must be one of {BACKENDS}, got {backend!r}")
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"fine-grained saliency needs 1 or 3 channels, got shape {list(images.shape)}")
    if backend == "auto":
        backend = "numba" if images.device.type == "cpu" else "torch"
    if backend == "numba" and images.device.type != "cpu":
        raise ValueError(f"backend='numba' runs on the CPU; the images are on {images.device}")
    return images, backend


def _numba(images):
    """The CPU twin (:mod:`fastcas.mix._finegrained_cpu`): (int32 [B, H, W] maps, int64 [B]
    argmax), NumPy. float32 and float64 go in as they are, channels-last batches without a
    reordering copy; uint8 goes in as float32 flagged ``raw`` (exact, and one compiled kernel
    fewer); other dtypes as float32 where that is exact, else float64 (what the torch path
    computes with)."""
    import torch

    from ._finegrained_cpu import finegrained_batch  # noqa: PLC0415 (lazy: numba)

    x = images.detach()
    raw = x.dtype == torch.uint8
    if x.dtype not in (torch.float32, torch.float64):
        # uint8, and dtypes whose every value float32 holds exactly, go in as float32: the
        # float64 values the torch path scales are the same
        exact32 = (torch.uint8, torch.int8, torch.int16, torch.float16, torch.bfloat16, torch.bool)
        x = x.to(torch.float32 if x.dtype in exact32 else torch.float64)
    b, c, h, w = x.shape
    nhwc = not x.is_contiguous() and x.permute(0, 2, 3, 1).is_contiguous()
    a = x.permute(0, 2, 3, 1).numpy() if nhwc else np.ascontiguousarray(x.numpy())
    sal = np.empty((b, h, w), np.int32)
    arg = np.zeros(b, np.int64)
    if b and h and w:
        keys = np.zeros((b, 1), np.int32) if raw else a.reshape(b, -1).view(
            np.int32 if a.dtype == np.float32 else np.int64)
        finegrained_batch(a, keys, raw, nhwc, sal, arg)
    return sal, arg


def finegrained_saliency(images, backend: str = "auto"):
    """OpenCV ``StaticSaliencyFineGrained`` maps, batched.

    images: ``[B, C, H, W]`` torch tensor (C = 1 or 3; uint8, or any real dtype: min-max scaled
    per image; finite values) on any device, or a NumPy array (run on the CPU). Returns int32
    ``[B, H, W]`` maps in 0..255 on the same device (OpenCV's float map times 255).
    backend: "torch" (the definition, any device), "numba" (its bit-identical CPU twin, about
    20x faster on one core) or "auto" (numba on the CPU, torch elsewhere).
    """
    images, backend = _prepare(images, backend)
    if backend == "numba":
        import torch

        return torch.from_numpy(_numba(images)[0])
    return _saliency_torch(images)


def _saliency_torch(images):
    """The definition: batched torch ops on the images' device (see the module docstring)."""
    import torch

    b, c, h, w = images.shape
    dev = images.device
    g = _blur121(_blur121(_grey(_to_uint8(images))))
    # OpenCV keeps the integral in float32 (exact: every entry is an integer below 2**24) and
    # adds the four corners left to right in float32, where (A + B) can pass 2**24 and round:
    # reproduced on purpose, so the maps are OpenCV's bit for bit
    integral = torch.zeros((b, 1, h + 1, w + 1), dtype=torch.float32, device=dev)
    integral[:, 0, 1:, 1:] = g.to(torch.int64).cumsum(1).cumsum(2).to(torch.float32)
    # edge-replicated by PAD on every side, entry clamp(j, 0, size) of the integral is padded
    # entry j + PAD: each corner of every scale is a plain strided view (no gather, no copy)
    pad = max(NEIGHBOURHOODS)
    padded = torch.nn.functional.pad(integral, (pad, pad, pad, pad), mode="replicate")[:, 0]
    gf = g.to(torch.float32)
    ys = torch.arange(h, device=dev)
    xs = torch.arange(w, device=dev)
    # small integers (<= 6 * 255): exact in float32, converted once at the end
    sum_abs = torch.zeros((b, h, w), dtype=torch.float32, device=dev)
    sum_d = torch.zeros_like(sum_abs)
    for n in NEIGHBOURHOODS:  # six scales: a fixed, tiny loop (not over the batch)
        lo, hi = pad - n + 1, pad + n + 1          # padded offsets of the corners p - n + 1, p + n + 1
        r1 = padded[:, lo:lo + h]
        r2 = padded[:, hi:hi + h]
        box = (r2[:, :, hi:hi + w] + r1[:, :, lo:lo + w] - r2[:, :, lo:lo + w] - r1[:, :, hi:hi + w])
        dy = (ys + n + 1).clamp(max=h) - (ys - n + 1).clamp(min=0)
        dx = (xs + n + 1).clamp(max=w) - (xs - n + 1).clamp(min=0)
        area = (dx.view(1, w) * dy.view(h, 1) - 1).to(torch.float32)
        d = torch.trunc(gf - (box - gf) / area)  # trunc(-v) == -trunc(v): one rounding for both
        sum_abs += d.abs()
        sum_d += d
    # on = sum of the positive parts, off = sum of the negative parts' magnitudes (exact: small
    # integers in float32)
    sum_on = (sum_abs + sum_d) * 0.5
    sum_off = (sum_abs - sum_d) * 0.5
    on = _normalise(sum_on.to(torch.int32))
    off = _normalise(sum_off.to(torch.int32))
    top = torch.maximum(on.reshape(b, -1).max(1).values, off.reshape(b, -1).max(1).values)
    top = torch.where(top > 0, top, torch.ones_like(top)).to(torch.float64).view(b, 1, 1)
    v = torch.trunc(255.0 * (on + off).to(torch.float32).to(torch.float64) / top)
    return v.clamp(0, 255).to(torch.int32)


def _normalise(s):
    """``trunc(255 * float32(s / max_s))`` per image (0 where the image's maximum is 0)."""
    import torch

    b = s.shape[0]
    m = s.reshape(b, -1).max(1).values.view(b, 1, 1)
    q = s.to(torch.float32) / torch.where(m > 0, m, torch.ones_like(m)).to(torch.float32)
    return torch.trunc(255.0 * q.to(torch.float64)).to(torch.int32)


def finegrained_argmax(images, backend: str = "auto"):
    """Flat index (int64 ``[B]``, on the images' device) of the first maximum in raster order
    of each image's fine-grained saliency map — the SaliencyMix reference's box centre.
    backend: as :func:`finegrained_saliency` ("auto": the Numba twin on the CPU, which releases
    the GIL, so the loader's prefetch thread runs it beside the training thread)."""
    images, backend = _prepare(images, backend)
    if backend == "numba":
        import torch

        return torch.from_numpy(_numba(images)[1])
    sal = _saliency_torch(images)
    return sal.reshape(sal.shape[0], -1).argmax(dim=1)
