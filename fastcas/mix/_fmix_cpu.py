"""Numba CPU kernels of the host FMix mask builder (:mod:`fastcas.mix.fmix`), private to it.

The two folds turn the half-size products of :func:`fastcas.mix.fmix.low_freq_numpy` into the
whole image (real-DFT symmetry: the cosine part of a row or column is even about ``H - y`` /
``W - x``, the sine part odd); :func:`bracket` is the one pass over a mask's image that the
exact-count threshold needs once a sample of the image has bracketed it.

``fastmath=False`` (no reassociation, no FMA contraction: the sums are the ones written here),
``nogil=True`` (the loader's prefetch thread runs them without the GIL), ``cache=True`` (a fresh
DALI worker loads the compiled code instead of compiling it). No ``prange``: no threads.
"""
from __future__ import annotations

import numpy as np
from numba import njit

_JIT = dict(nogil=True, cache=True, fastmath=False, error_model="numpy", boundscheck=False)
_CHUNK = 64  # bracket(): pixels counted (vectorised) before the rare scalar gather of a chunk


@njit(**_JIT)
def fold_rows(g, tr, ti):
    """Rows of the column-transformed spectrum from the half-height product.

    g float32 ``[2 * Hh, 2C]``, ``Hh = H // 2 + 1``: rows ``[0, Hh)`` are ``cos(2 pi ky y / H)``
    times the box's ``[Re | Im]``, rows ``[Hh, 2 Hh)`` the same with ``sin``. Writes tr, ti float32
    ``[H, C]`` (real and imaginary part): row ``y`` is ``cos - i sin`` parts combined as
    ``(c_re - s_im, c_im + s_re)``, row ``H - y`` (``0 < y < H - y``) as ``(c_re + s_im, c_im - s_re)``
    (the sine flips sign there)."""
    h, c = tr.shape
    hh = g.shape[0] // 2
    for y in range(min(hh, h)):
        for j in range(c):
            tr[y, j] = g[y, j] - g[hh + y, c + j]
            ti[y, j] = g[y, c + j] + g[hh + y, j]
    for y in range(1, (h - 1) // 2 + 1):
        for j in range(c):
            tr[h - y, j] = g[y, j] + g[hh + y, c + j]
            ti[h - y, j] = g[y, c + j] - g[hh + y, j]


@njit(**_JIT)
def fold_cols(d, e, img):
    """The image from its half-width cosine and sine parts: d, e float32 ``[H, Wh]``,
    ``Wh = W // 2 + 1``; writes img float32 ``[H, W]``: column ``x <= W // 2`` is ``d + e``,
    column ``W - x`` (``0 < x < W - x``) is ``d - e``."""
    h, w = img.shape
    wh = d.shape[1]
    for y in range(h):
        for x in range(min(wh, w)):
            img[y, x] = d[y, x] + e[y, x]
        for x in range(1, (w - 1) // 2 + 1):
            img[y, w - x] = d[y, x] - e[y, x]


@njit(**_JIT)
def bracket(row, lo, hi, cand):
    """One pass over row float32 ``[N]``: returns ``(below, m)``, the count of values ``< lo``
    and of values in ``[lo, hi]``, which are copied (in index order) to ``cand[:m]`` (float32
    ``[N]``). Chunks of ``_CHUNK`` pixels are first only counted (a loop LLVM vectorises); a
    chunk is gathered value by value only when it holds a
    value in the bracket (at 224x224 about half of them: the threshold's contour is long, but
    the count alone is ~3 of the ~12 us)."""
    n = row.shape[0]
    full = n - n % _CHUNK
    below = 0
    m = 0
    for s in range(0, full, _CHUNK):
        blk = row[s:s + _CHUNK]
        cb = np.int32(0)
        ch = np.int32(0)
        for i in range(_CHUNK):  # a constant trip count: LLVM vectorises the two counts
            v = blk[i]
            cb += np.int32(v < lo)
            ch += np.int32(v <= hi)
        below += cb
        if ch > cb:
            for i in range(_CHUNK):  # (a branch-free gather measured 2x slower)
                v = blk[i]
                if v >= lo and v <= hi:
                    cand[m] = v
                    m += 1
    for i in range(full, n):
        v = row[i]
        if v < lo:
            below += 1
        elif v <= hi:
            cand[m] = v
            m += 1
    return below, m


@njit(**_JIT)
def fold_quarters(ec, oc, es, os_, img):
    """The image of an even width ``W = 2 h`` from quarter-width parts: ec, oc, es, os_ float32
    ``[H, Wq]``, ``Wq = h // 2 + 1``, the cosine (``c``) and sine (``s``) parts of the even
    (``e``) and odd (``o``) column frequencies at ``x <= h // 2``. Shifting ``x`` by ``h``
    flips the sign of the odd frequencies, mirroring it to ``W - x`` that of the sines, so with
    ``u = ec + oc``, ``v = es + os``, ``u' = ec - oc``, ``v' = es - os``: column ``x`` is
    ``u + v``, ``W - x`` is ``u - v``, ``h + x`` is ``u' + v'``, ``h - x`` is ``u' - v'``.
    Where two of these name one column (``x = 0``: ``h``; ``x = h / 2``) the later write below
    wins, the same every time."""
    rows, w = img.shape
    wq = ec.shape[1]
    h = w // 2
    nc = min(wq, w - h)  # columns h + x inside the image
    for y in range(rows):  # one loop per output range, through views indexed from 0 (no
        out = img[y]  # wraparound tests), forward ones vectorise
        a, b, c, d = ec[y], oc[y], es[y], os_[y]
        o_hp, o_hm = out[h:h + nc], out[h - wq + 1:h + 1][::-1]  # h + x, h - x
        o_wm, o_x = out[w - wq + 1:][::-1], out[:wq]  # w - (x + 1), x
        for x in range(nc):
            o_hp[x] = (a[x] - b[x]) + (c[x] - d[x])
        for x in range(wq):
            o_hm[x] = (a[x] - b[x]) - (c[x] - d[x])
        for x in range(wq - 1):
            o_wm[x] = (a[x + 1] + b[x + 1]) - (c[x + 1] + d[x + 1])
        for x in range(wq):
            o_x[x] = (a[x] + b[x]) + (c[x] + d[x])


@njit(**_JIT)
def below(row, thr, out):
    """out float32 ``[N]`` = 1.0 where row ``[N]`` ``< thr``, else 0.0 (the foreground of a hard
    mask; a vectorised loop, ~3x faster than ``np.less`` into float32)."""
    for i in range(row.shape[0]):
        out[i] = np.float32(1.0) if row[i] < thr else np.float32(0.0)
