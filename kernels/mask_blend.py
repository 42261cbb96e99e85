"""Numba CUDA kernels: per-pixel mask blend (FMix) and per-sample blend (MixUp).

Loaded only by :mod:`fastcas.mix._backend`. Never draw random numbers. Arithmetic in float32:
``out = (1 - m) * bg + m * fg`` (a binary mask copies pixels exactly); integer outputs are
rounded half up (``floor(v + 0.5)``), exactly as the NumPy reference
:func:`fastcas.mix.reference.blend`.

Launch: grid ``(ceil(W / TX), ceil(H / TY), B * C)``, block ``(TX, TY)``; one launch per batch.
"""
import math

from numba import cuda, float32

TX, TY = 32, 8


@cuda.jit
def mask_blend(out, bg, fg, masks, is_int):
    """out, bg, fg: ``[B, C, H, W]``; masks: float32 ``[B, H, W]`` (1 = foreground)."""
    x, y = cuda.grid(2)
    z = cuda.blockIdx.z
    nc = out.shape[1]
    b = z // nc
    c = z - b * nc
    if y < out.shape[2] and x < out.shape[3]:
        m = masks[b, y, x]
        v = (float32(1.0) - m) * float32(bg[b, c, y, x]) + m * float32(fg[b, c, y, x])
        if is_int:
            v = float32(math.floor(v + float32(0.5)))
        out[b, c, y, x] = v


@cuda.jit
def lam_blend(out, bg, fg, w_bg, is_int):
    """out, bg, fg: ``[B, C, H, W]``; w_bg: float32 ``[B]`` background weight (MixUp lam)."""
    x, y = cuda.grid(2)
    z = cuda.blockIdx.z
    nc = out.shape[1]
    b = z // nc
    c = z - b * nc
    if y < out.shape[2] and x < out.shape[3]:
        w = w_bg[b]
        v = w * float32(bg[b, c, y, x]) + (float32(1.0) - w) * float32(fg[b, c, y, x])
        if is_int:
            v = float32(math.floor(v + float32(0.5)))
        out[b, c, y, x] = v
