"""Numba CUDA kernels: per-pixel mask blend (FMix) and per-sample blend (MixUp).

Loaded only by :mod:`fastcas.mix._backend`. Never draw random numbers. Arithmetic in float32:
``out = (1 - m) * bg + m * fg`` (a binary mask copies pixels exactly); integer outputs are
rounded half up (``floor(v + 0.5)``), exactly as the NumPy reference
:func:`fastcas.mix.reference.blend`.

Exactness (bitwise equal to the NumPy reference, no tolerance): NVVM contracts a multiply
feeding an add into one FMA by default (``-fma=1``, also without ``fastmath``), which rounds
once where NumPy rounds twice, so ``a * b + c * d`` may differ from the reference by an ulp.
Every multiply and add here therefore goes through libdevice's explicitly rounded
``fmul_rn`` / ``fadd_rn`` (PTX ``mul.rn`` / ``add.rn``, which are never contracted). Under
Numba's CUDA simulator (no libdevice) the same names are float32 NumPy scalar operations,
which round each operation, i.e. the same semantics.

Launch: grid ``(ceil(W / TX), ceil(H / TY), B * C)``, block ``(TX, TY)``; one launch per batch.
Arrays are indexed by their strides, so channels-last inputs and outputs work as they are.
``cache=True``: the compiled kernels are cached on disk (next to this file or in
``NUMBA_CACHE_DIR``), so later processes skip the per-dtype JIT on the first batch.
"""
import math

from numba import cuda, float32
from numba.cuda.core import config as _config

if _config.ENABLE_CUDASIM:  # pragma: no cover - depends on the environment
    def fmul_rn(x, y):
        return float32(x) * float32(y)

    def fadd_rn(x, y):
        return float32(x) + float32(y)
else:
    from numba.cuda.libdevice import fadd_rn, fmul_rn

TX, TY = 32, 8


@cuda.jit(cache=True)
def mask_blend(out, bg, fg, masks, is_int):
    """out, bg, fg: ``[B, C, H, W]``; masks: float32 ``[B, H, W]`` (1 = foreground)."""
    x, y = cuda.grid(2)
    z = cuda.blockIdx.z
    nc = out.shape[1]
    b = z // nc
    c = z - b * nc
    if y < out.shape[2] and x < out.shape[3]:
        m = masks[b, y, x]
        v = fadd_rn(fmul_rn(float32(1.0) - m, float32(bg[b, c, y, x])), fmul_rn(m, float32(fg[b, c, y, x])))
        if is_int:
            v = float32(math.floor(fadd_rn(v, float32(0.5))))
        out[b, c, y, x] = v


@cuda.jit(cache=True)
def lam_blend(out, bg, fg, w_bg, is_int):
    """out, bg, fg: ``[B, C, H, W]``; w_bg: float32 ``[B]`` background weight (MixUp lam)."""
    x, y = cuda.grid(2)
    z = cuda.blockIdx.z
    nc = out.shape[1]
    b = z // nc
    c = z - b * nc
    if y < out.shape[2] and x < out.shape[3]:
        w = w_bg[b]
        v = fadd_rn(fmul_rn(w, float32(bg[b, c, y, x])), fmul_rn(float32(1.0) - w, float32(fg[b, c, y, x])))
        if is_int:
            v = float32(math.floor(fadd_rn(v, float32(0.5))))
        out[b, c, y, x] = v
