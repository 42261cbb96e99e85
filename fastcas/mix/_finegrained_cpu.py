"""Numba CPU twin of :mod:`fastcas.mix.finegrained`: the same map, bit for bit, in one pass per
image instead of ~60 batched tensor operations.

Lives in ``fastcas/mix`` rather than ``kernels/``: ``kernels/`` holds the Numba **CUDA** mixing
kernels that :mod:`fastcas.mix._backend` dispatches to (loaded with ``numba.cuda``, launched on a
stream); this is a plain ``@njit`` CPU function that is a private implementation detail of
:func:`fastcas.mix.finegrained.finegrained_argmax`, imported lazily by it and by nothing else.

Definition: the torch code in :mod:`fastcas.mix.finegrained` (itself OpenCV's
``StaticSaliencyFineGrained``). Every intermediate has the torch version's dtype and order of
operations — int32 grey and blurs, int64 running sums converted to a float32 integral, float32
box sums added ``((A + B) - C) - D``, float32 ``trunc(g - (box - g) / area)``, float32 / float64
normalisation — with ``fastmath`` off (no reassociation, no FMA contraction), so the results are
identical (tested against the torch path and OpenCV). Numba promotes ``float32 op int`` to
float64, so every mixed operand is cast explicitly.

Speed (one core, 224 x 224, see ``benchmarks/bench_saliency.py``): ~0.4-0.5 ms per image on a
2-core Xeon, ~0.23-0.25 ms on a 2-core AMD EPYC (2026-12-05; the DALI graph's uint8 HWC entry,
:func:`fastcas.mix.graph_ops.saliency_centre`, ~0.19 ms)
against ~11 ms for the batched torch ops. What makes LLVM vectorise the hot loops: the integral's
rows are edge-replicated so clamped corners are plain contiguous loads; every array is indexed
from 0 through views (a possibly negative index costs a wraparound test per load); minima and
maxima are integer reductions over order-preserving integer keys of the floats. The exact
divisions stay divisions (a reciprocal would round differently). The map's final
``trunc(255 * (a + b) / top)`` is ``min(a + b, 255)``, because ``top`` is 255 or 0 (see below).

``nogil=True``: the loader's prefetch thread runs it without holding the GIL. No ``prange``: the
loader already overlaps it with DALI's decoding on the other core. ``cache=True``: a fresh
process loads the compiled code (~0.4 s) instead of compiling it (~4 s; float32 and float64
inputs compile separately; uint8 goes through the float32 one).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ._finegrained_spec import GREY as _GREY
from ._finegrained_spec import NEIGHBOURHOODS

_SCALES = np.array(NEIGHBOURHOODS, dtype=np.int64)
_GREY_W = np.array(_GREY, dtype=np.int32)  # OpenCV's BGR2GRAY fixed-point weights
_SIGNLESS = (np.int64(0x7FFFFFFF), np.int64(0x7FFFFFFFFFFFFFFF))  # index: itemsize // 8
PAD = max(NEIGHBOURHOODS)  # boxes reach columns x - n + 1 >= -(n - 1) and x + n + 1 <= W + n

_JIT = dict(nogil=True, cache=True, fastmath=False, error_model="numpy", boundscheck=False)


@njit(inline="always", **{k: v for k, v in _JIT.items() if k != "cache"})
def _key_to_float(key, ibuf, fbuf):
    """Inverse of the order-preserving integer key of a float: ibuf / fbuf are one scratch
    element seen as the key's integer type and as the float type."""
    ibuf[0] = key if key >= 0 else key ^ _SIGNLESS[ibuf.itemsize // 8]
    return np.float64(fbuf[0])


@njit(**_JIT)
def _scale_u8(img, keys, out, raw):
    """img (flat, any layout) -> out int32 (flat, same order): kept as is when ``raw`` (uint8
    values, passed as float32), else min-max scaled in float64 and floored (``_to_uint8``).
    keys: img's bits as signed integers of its width, whose order-preserving transform gives the
    minimum and maximum with vectorised integer reductions instead of a scalar chain of float
    comparisons."""
    if raw:
        for i in range(img.shape[0]):
            out[i] = np.int32(img[i])
        return
    mask = _SIGNLESS[keys.itemsize // 8]
    klo = keys[0] if keys[0] >= 0 else keys[0] ^ mask
    khi = klo
    for i in range(keys.shape[0]):
        k = keys[i]
        k = k if k >= 0 else k ^ mask   # floats order as these integers (-0.0 just below 0.0)
        klo = k if k < klo else klo
        khi = k if k > khi else khi
    fbuf = np.empty(1, dtype=img.dtype)
    ibuf = fbuf.view(keys.dtype)
    lo = _key_to_float(klo, ibuf, fbuf)
    hi = _key_to_float(khi, ibuf, fbuf)
    span = hi - lo
    if not span > 0:
        out[:] = 0
        return
    # an exact float64 division per element (vectorised): a multiply by a reciprocal would
    # differ where (x - lo) / span * 255 lands on an integer, i.e. on every normalised uint8 image
    for i in range(img.shape[0]):
        out[i] = np.int32(np.floor(((np.float64(img[i]) - lo) / span) * 255.0))


@njit(**_JIT)
def _blur121(src, tmp, dst):
    """One 1-2-1 blur (reflect-101), rows then columns, ``(sum + 8) >> 4``; int32 [H, W]."""
    h, w = src.shape
    for y in range(h):
        if h == 1:
            for x in range(w):
                tmp[y, x] = 4 * src[y, x]
        else:
            ya = y - 1 if y > 0 else 1
            yb = y + 1 if y < h - 1 else h - 2
            for x in range(w):
                tmp[y, x] = src[ya, x] + 2 * src[y, x] + src[yb, x]
    for y in range(h):
        if w == 1:
            dst[y, 0] = (4 * tmp[y, 0] + 8) >> 4
            continue
        dst[y, 0] = (tmp[y, 1] + 2 * tmp[y, 0] + tmp[y, 1] + 8) >> 4
        for x in range(1, w - 1):
            dst[y, x] = (tmp[y, x - 1] + 2 * tmp[y, x] + tmp[y, x + 1] + 8) >> 4
        dst[y, w - 1] = (tmp[y, w - 2] + 2 * tmp[y, w - 1] + tmp[y, w - 2] + 8) >> 4


@njit(**_JIT)
def grey_hwc(px, g0):
    """px [H, W, C] (C = 1 or 3; uint8 or int32 values 0..255, channel 0 weighted as blue) ->
    g0 int32 [H, W]: OpenCV's ``COLOR_BGR2GRAY`` fixed point, or the one channel as it is."""
    h, w, c = px.shape
    for y in range(h):
        for x in range(w):
            if c == 1:
                g0[y, x] = np.int32(px[y, x, 0])
            else:
                g0[y, x] = (_GREY_W[0] * np.int32(px[y, x, 0]) + _GREY_W[1] * np.int32(px[y, x, 1])
                            + _GREY_W[2] * np.int32(px[y, x, 2]) + np.int32(32768)) >> 16


@njit(**_JIT)
def _image_map(img, keys, raw, nhwc, u8, g0, g1, integ, widths, gf, son, soff, sal):
    """Saliency of one image img (C-contiguous [C, H, W], or [H, W, C] when ``nhwc``) into sal
    int32 [H, W]. Scratch: u8 int32 [C * H * W] (img's scaled values, in img's order),
    g0 / g1 int32 [H, W], integ float32 [H + 1, W + 1 + 2 * PAD] (the integral image, each row
    edge-replicated by PAD columns on both sides, so a clamped corner column ``clamp(j, 0, W)``
    is simply column ``j + PAD``: every load of a row is contiguous and the loop vectorises),
    widths int32 [scales, W] (``x2 - x1`` of the clamped boxes), gf float32 [W] (one grey
    row), son / soff float32 [H, W].
    Returns the flat index of the first maximum of ``sal``."""
    h, w = g0.shape
    c = u8.shape[0] // (h * w)
    _scale_u8(img.reshape(u8.shape[0]), keys, u8, raw)
    if c == 1 or nhwc:  # one channel, or channels-last memory: the pixel's values are adjacent
        grey_hwc(u8.reshape((h, w, c)), g0)
    else:
        pl = u8.reshape((c, h, w))
        for y in range(h):
            for x in range(w):
                g0[y, x] = (7470 * pl[0, y, x] + 38470 * pl[1, y, x] + 19596 * pl[2, y, x]
                            + 32768) >> 16
    return _grey_map(g0, g1, integ, widths, gf, son, soff, sal)


@njit(**_JIT)
def _grey_map(g0, g1, integ, widths, gf, son, soff, sal):
    """The map of one grey image g0 int32 [H, W] (values 0..255; overwritten by its blurs) into
    sal int32 [H, W], scratch as :func:`_image_map`. Returns the flat index of the first
    maximum of ``sal``. (Four stages, each its own njit function: the blurs, the integral, the
    on / off sums over the scales, the normalised map; the arithmetic is unchanged.)"""
    _blur121(g0, g1, g0)
    _blur121(g0, g1, g0)
    _integral(g0, integ)
    _on_off(g0, integ, widths, gf, son, soff)
    return _normalised_argmax(son, soff, sal)


@njit(**_JIT)
def _integral(g0, integ):
    """integ float32 [H + 1, W + 1 + 2 * PAD] <- the integral image of g0 int32 [H, W], rows
    edge-replicated by PAD columns: exact int64 running sums, each converted to float32 (as
    torch's cumsum then ``.to``)."""
    h, w = g0.shape
    integ[0, :] = np.float32(0)
    col = np.zeros(w, dtype=np.int64)
    for y in range(h):
        row = integ[y + 1]
        row[:PAD + 1] = np.float32(0)
        run = np.int64(0)
        for x in range(w):
            col[x] += np.int64(g0[y, x])
        for x in range(w):
            run += col[x]
            row[PAD + 1 + x] = np.float32(run)
        row[PAD + 1 + w:] = row[PAD + w]


@njit(**_JIT)
def _on_off(g0, integ, widths, g, son, soff):
    """son / soff float32 [H, W] <- the on / off centre-surround sums over the scales of the
    blurred grey g0, from its integral ``integ`` (float32 box sums ``((A + B) - C) - D``, float32
    ``trunc(g - (box - g) / area)``); g: float32 [W] scratch (one grey row)."""
    h, w = g0.shape
    zero = np.float32(0)
    for y in range(h):  # row by row, all scales: the row's sums stay in the L1 cache
        src = g0[y]
        on = son[y]
        off = soff[y]
        for x in range(w):
            g[x] = np.float32(src[x])
            on[x] = zero
            off[x] = zero
        for s in range(_SCALES.shape[0]):
            n = _SCALES[s]
            wd = widths[s]
            y1 = min(max(y - n + 1, 0), h)
            y2 = min(max(y + n + 1, 0), h)
            dy = np.int32(y2 - y1)
            r1 = integ[y1]
            r2 = integ[y2]
            # views indexed from 0, so no index can be negative: no wraparound test per load
            a2 = r2[PAD + n + 1:PAD + n + 1 + w]   # r2[x2]
            b1 = r1[PAD - n + 1:PAD - n + 1 + w]   # r1[x1]
            c2 = r2[PAD - n + 1:PAD - n + 1 + w]   # r2[x1]
            d1 = r1[PAD + n + 1:PAD + n + 1 + w]   # r1[x2]
            for x in range(w):
                box = ((a2[x] + b1[x]) - c2[x]) - d1[x]   # OpenCV's float32 order
                area = np.float32(wd[x] * dy - np.int32(1))
                gx = g[x]
                d = np.trunc(gx - (box - gx) / area)
                on[x] += d if d > zero else zero
                off[x] -= d if d < zero else zero


@njit(**_JIT)
def _normalised_argmax(son, soff, sal):
    """sal int32 [H, W] <- the map of the on / off sums, each normalised by its image maximum:
    ``trunc(255 * float64(float32(s) / float32(max)))``; returns the flat index of its first
    maximum (raster order)."""
    h, w = son.shape
    zero = np.float32(0)
    # the sums are non-negative floats (never -0.0): their bits order as int32, and integer
    # max reductions vectorise
    ion = son.reshape(h * w).view(np.int32)
    ioff = soff.reshape(h * w).view(np.int32)
    kon = np.int32(0)
    koff = np.int32(0)
    for i in range(h * w):
        v = ion[i]
        kon = v if v > kon else kon
        v = ioff[i]
        koff = v if v > koff else koff
    mon = np.array([kon]).view(np.float32)[0]
    moff = np.array([koff]).view(np.float32)[0]
    don = mon if mon > zero else np.float32(1)
    doff = moff if moff > zero else np.float32(1)
    # the final map is trunc(255 * (a + b) / top) with top = max over the image of a and b; a
    # or b reaches 255 exactly where its sum is its maximum, so top is 255 (or 0 when both sums
    # are 0 everywhere, and then a + b = 0): 255 * (a + b) / 255 is exact in float64, and the map
    # is min(a + b, 255) with no division
    best = np.int32(0)
    for y in range(h):
        son_y = son[y]
        soff_y = soff[y]
        dst = sal[y]
        for x in range(w):
            a = np.int32(np.trunc(255.0 * np.float64(son_y[x] / don)))
            b = np.int32(np.trunc(255.0 * np.float64(soff_y[x] / doff)))
            v = a + b
            v = v if v < np.int32(255) else np.int32(255)
            dst[x] = v
            best = v if v > best else best
    # first maximum in raster order: a vectorised maximum above, then a scan to its first place
    flat = sal.reshape(h * w)
    arg = 0
    while flat[arg] != best:
        arg += 1
    return arg


@njit(**_JIT)
def scratch(h, w):
    """The per-image scratch of :func:`_grey_map` for ``H x W`` images: ``(g0, g1, integ,
    widths, gf, son, soff)`` (shapes as :func:`_image_map` documents; ``widths`` filled)."""
    g0 = np.empty((h, w), dtype=np.int32)
    g1 = np.empty((h, w), dtype=np.int32)
    integ = np.empty((h + 1, w + 1 + 2 * PAD), dtype=np.float32)
    widths = np.empty((_SCALES.shape[0], w), dtype=np.int32)
    for s in range(_SCALES.shape[0]):
        n = _SCALES[s]
        for x in range(w):
            widths[s, x] = min(x + n + 1, w) - max(x - n + 1, 0)
    gf = np.empty(w, dtype=np.float32)
    son = np.empty((h, w), dtype=np.float32)
    soff = np.empty((h, w), dtype=np.float32)
    return g0, g1, integ, widths, gf, son, soff


@njit(**_JIT)
def finegrained_batch(images, keys, raw, nhwc, sal, arg):
    """images [B, C, H, W], or [B, H, W, C] when ``nhwc`` (channels-last memory: no reordering
    copy) (C = 1 or 3; float32 or float64, C-contiguous; ``raw``: True for uint8 values passed
    as float32, used as they are); keys [B, C * H * W]: the float images' bits
    as int32 / int64 (a view, ignored when ``raw``) -> sal int32 [B, H, W] (the maps) and arg
    int64 [B] (flat index of each map's first maximum)."""
    if nhwc:
        b, h, w, c = images.shape
    else:
        b, c, h, w = images.shape
    u8 = np.empty(c * h * w, dtype=np.int32)
    g0, g1, integ, widths, gf, son, soff = scratch(h, w)
    for i in range(b):
        arg[i] = _image_map(images[i], keys[i], raw, nhwc, u8, g0, g1, integ, widths, gf, son, soff, sal[i])
