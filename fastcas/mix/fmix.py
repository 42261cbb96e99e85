"""FMix masks (Harris et al. 2020, "FMix: Enhancing Mixed Sample Data Augmentation", Sec. 3),
batched over the whole batch, per sample.

Behaviour of ecs-vlc/FMix ``sample_mask`` (read, not copied): a complex Gaussian spectrum in
the real-FFT layout is scaled by ``1 / max(f, 1/max(H, W)) ** decay``, inverse-real-FFT'd into a
low-frequency grey image, and the top ``lam * H * W`` pixels are binarised (optionally with a
linear soft ramp of half-width ``max_soft * H * W``). Differences, on purpose:

* one mask per sample (the reference draws one per batch; ``batch_mode=True`` reproduces it);
* the kept count is ``round(lam * H * W)`` (the reference picks floor or ceil at random);
* odd widths use the exact ``rfftfreq`` layout (the reference takes ``w // 2 + 2`` columns);
* the mask here is 1 where the FOREGROUND is taken, so the top ``round(lam*N)`` pixels are 0
  and the measured kept-background fraction is exactly ``round(lam*N) / N``;
* the spectrum is truncated to a low-frequency box (:func:`spectrum_box`): frequencies with
  ``max(|f_y|, f_x)`` above a cutoff are zero. The cutoff is the smallest that keeps all but
  ``DROP_TOL = 1e-6`` of the spectrum's power (``sum mult * scale**2``, DC excluded, ``mult`` = 2
  for the columns the real FFT stores once for two), so it depends on ``(H, W, decay)`` only:
  at 224x224 with the default decay 3 the box is 45 x 23 of the 224 x 113 frequencies; when
  the box would hold more than a quarter of them (``decay <= 2.5`` at 224, or small images)
  nothing is dropped and the mask is the full-spectrum one, bit for bit as before.
  Effect, measured on 256 masks at 224x224, decay 3, against the float64 full-spectrum mask of
  the same noise: 3.0e-4 of the pixels differ (15 of 50176 per mask on average, at most 58), all
  within 3 pixels of the mask's boundary (decays 3.5, 4 and 5, 128 masks each: 2.3-2.9e-4 of
  the pixels, within 2 pixels); the kept count and ``lam`` are exact either way. A looser
  tolerance (1e-5: 1.5 ms less per batch) would also truncate decay 2.5, where the dropped
  detail moves small islands far from the boundary; hence 1e-6. Why the box at all:
  the 96% of the noise outside the box cost ~15 ms of host time per batch of 32 (~10 ns per
  normal on the 2-core box) and its full-size inverse FFT ~10 ms; the box's inverse FFT is two
  small matrix products (:func:`low_freq_numpy`).

Host arithmetic (branch fmixfast2; the mask definition changed in the last bits only): the box's
inverse FFT uses the real-DFT symmetry (:func:`_box_image`: half-height row products,
quarter-width column products for even widths, half-width for odd, folded by the Numba kernels
of :mod:`fastcas.mix._fmix_cpu`), about a third of the multiply-adds of the earlier full-size
products, the same terms summed in another float32 order. Measured against the earlier host
masks of the same noise: the images differ by at most 1.2e-6 of their peak; masks at 224x224,
decay 3: 0 of 12.8M pixels differ on 256 masks; decay 4: 2 of 6.4M on 128 masks (3e-7, one
pair swapped across the threshold, 1 pixel from the boundary); 160x224 decay 4: 2 of 2.3M;
225x223 decay 3: 0. The kept counts and ``lam`` are identical (exact either way), soft masks
go through the same exact ranks, and the threshold is the same order statistic
(:func:`_kth`: a sampled bracket instead of partitioning the whole row; ties still fall back
to exact ranks). Host time per batch of 32 at 224x224, decay 3, one thread, on the 2-core box:
``make_params_at`` 6.3 -> 4.6 ms, of which the masks 5.0 -> 3.3 ms and the per-position noise
~1.0 ms (unchanged: 32 generators, ~14 ns per float32 normal).

The spectrum noise is always drawn with NumPy on the host, for the kept box only (:func:`fmix_masks`
from the generator it is given; :func:`noise_at` per global position, from ``(seed, epoch,
position)`` alone), so the same parameters give the same noise on every device. (Where the box is truncated, a sample's
noise is the first ``R * C * 2`` normals of
its generator in box layout, so those masks differ from releases before the box; lam does not.) With ``device`` a CUDA
torch device the FFT, sort and binarisation then run on the
device (:func:`_masks_torch`: the same truncated spectrum, zero-padded, through ``irfft2``);
float32 FFTs of different libraries may differ in the last bits, which can move a pixel whose
value ties the threshold, but the kept count (and so lam) is exact everywhere.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from fastcas.core.device import array_to_device
from fastcas.core.rng import generator

from ._fmix_cpu import below as _below
from ._fmix_cpu import bracket as _bracket
from ._fmix_cpu import fold_cols as _fold_cols
from ._fmix_cpu import fold_quarters as _fold_quarters
from ._fmix_cpu import fold_rows as _fold_rows

DROP_TOL = 1e-6  # share of the spectrum's power the low-frequency box may drop
_MATMUL_COLS = 48  # the box's inverse FFT as matrix products up to this many columns (else irfft2)


def _freqs(height: int, width: int) -> np.ndarray:
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    return np.sqrt(fx * fx + fy * fy)


def spectrum_scale(height: int, width: int, decay: float) -> np.ndarray:
    """float64 ``[H, W // 2 + 1]``: ``1 / max(f, 1 / max(H, W)) ** decay``."""
    return 1.0 / np.maximum(_freqs(height, width), 1.0 / max(height, width)) ** decay


@lru_cache(maxsize=64)
def spectrum_box(height: int, width: int, decay: float) -> tuple[int, int, int]:
    """The kept low-frequency box of the real-FFT layout ``[H, W//2+1]`` as ``(rows_lo,
    rows_hi, cols)``: rows ``[0, rows_lo)`` and ``[H - rows_hi, H)``, columns ``[0, cols)``.

    It is ``{max(|f_y|, f_x) <= t}`` for the smallest cutoff ``t`` whose dropped power (see the
    module docstring) is at most ``DROP_TOL`` of the total; ``(H, 0, W//2+1)`` when nothing is
    dropped."""
    if not decay > 0:
        raise ValueError(f"fmix decay must be > 0, got decay={decay!r}")
    fy = np.abs(np.fft.fftfreq(height))[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    mult = np.where((np.arange(width // 2 + 1) == 0) | (2 * np.arange(width // 2 + 1) == width), 1.0, 2.0)
    power = mult * spectrum_scale(height, width, decay) ** 2
    power[0, 0] = 0.0  # the mean shifts every pixel alike: it never moves the threshold's rank
    key = np.maximum(fy, fx)
    cuts, inv = np.unique(key, return_inverse=True)
    kept = np.cumsum(np.bincount(inv.reshape(-1), power.reshape(-1), minlength=len(cuts)))
    t = cuts[np.argmax(kept >= (1.0 - DROP_TOL) * kept[-1])]
    rows = fy[:, 0] <= t
    cols = int((fx[0] <= t).sum())
    if rows.all() or 4 * rows.sum() * cols > height * (width // 2 + 1):
        return height, 0, width // 2 + 1  # too little to drop to be worth a different mask
    lo = int(np.argmin(rows))  # rows [0, lo) kept, then a gap, then the kept negative rows
    return lo, int(rows[lo:].sum()), cols


def noise_shape(height: int, width: int, decay: float) -> tuple[int, int, int]:
    """Shape of one sample's spectrum noise (float32): ``(rows_lo + rows_hi, cols, 2)``, the
    kept box of :func:`spectrum_box` (real and imaginary parts last)."""
    lo, hi, cols = spectrum_box(height, width, decay)
    return lo + hi, cols, 2


def box_noise(noise: np.ndarray, height: int, width: int, decay: float) -> np.ndarray:
    """Host noise float32 ``[m, *noise_shape]`` as given, or the box cut out of full-layout
    noise ``[m, H, W//2+1, 2]`` (what :func:`fastcas.mix.make_params` draws)."""
    lo, hi, cols = spectrum_box(height, width, decay)
    box = (lo + hi, cols, 2)
    if noise.ndim == 4 and noise.shape[1:] == box:
        return noise
    if noise.ndim == 4 and noise.shape[1:] == (height, width // 2 + 1, 2):
        return np.concatenate([noise[:, :lo, :cols], noise[:, height - hi:, :cols]], axis=1)
    raise ValueError(f"fmix noise must be [m, {box[0]}, {box[1]}, 2] or [m, {height}, {width // 2 + 1}, 2] "
                     f"for H={height} W={width} decay={decay}, got {list(noise.shape)}")


def _counts(drawn: np.ndarray, n: int, max_soft: float):
    """Per sample: kept-background count ``num`` and soft half-width ``soft`` (int64)."""
    num = np.floor(drawn * n + 0.5).astype(np.int64)
    eff = np.where((max_soft > drawn) | (max_soft > 1 - drawn), np.minimum(drawn, 1 - drawn), max_soft)
    soft = (n * eff).astype(np.int64) if max_soft > 0 else np.zeros_like(num)
    soft = np.minimum(soft, np.minimum(num, n - num))
    return num, soft


def _ranked(img: np.ndarray, num: np.ndarray, soft: np.ndarray) -> np.ndarray:
    """The definition, by exact ranks: pixel ranks by decreasing value (ties: lower index
    first); rank < num - soft is background (0), >= num + soft foreground (1), a linear ramp
    between. img float ``[b, N]`` -> float32 ``[b, N]``."""
    n = img.shape[1]
    ranks = np.empty(img.shape, np.int64)
    np.put_along_axis(ranks, np.argsort(-img, axis=1, kind="stable"), np.arange(n)[None, :], axis=1)
    lo, hi = (num - soft)[:, None], (num + soft)[:, None]
    ramp = 1.0 - (ranks - lo) / np.maximum(hi - lo - 1, 1)
    t = np.where(ranks < lo, 1.0, np.where(ranks >= hi, 0.0, ramp))
    return (1.0 - t).astype(np.float32)


_SAMPLE_STEP = 17  # _kth(): every 17th pixel brackets the threshold (see there why 17)
_SAMPLE_MIN = 4096  # _kth(): rows shorter than this go straight to ndarray.partition
_NEG_INF, _POS_INF = np.float32(-np.inf), np.float32(np.inf)


def _kth(row: np.ndarray, k: int, buf: np.ndarray) -> tuple[float, bool]:
    """The ``k``-th smallest value (0-based) of row float ``[N]``, and whether a value of rank
    ``< k`` ties it. ``buf``: scratch ``[N]`` of row's dtype. Long float32 rows: the ranks
    ``k / 17 +- margin`` of every 17th value bracket the threshold, one pass
    (:func:`~fastcas.mix._fmix_cpu.bracket`) counts the values below the bracket and gathers
    the ~1300 inside, and the threshold is selected among those (~20 instead of ~35 us at
    224x224 for ``ndarray.partition`` of a copy of the row). Why 17: a stride that divides the
    width samples the same columns of every row, and the samples of a smooth image are
    correlated: at 224x224, decay 3, the sample's rank error was at most 719 pixels with 16,
    221 with 17 (1024 draws). The margin, ``ns / 100 + 8`` of the ``ns`` sampled values (37 at
    224x224, ~630 pixels), missed none of 512 draws at 224x224, 256x256, 225x223, 160x224 and
    14 of 512 at 221x221 (a multiple of 17). A miss costs a second pass, as do short rows:
    ``ndarray.partition`` of the whole row (linear time, the SIMD select). The value is the same
    either way: the k-th order statistic."""
    n = row.shape[0]
    if n >= _SAMPLE_MIN and row.dtype == np.float32:
        s = buf[: (n + _SAMPLE_STEP - 1) // _SAMPLE_STEP]
        s[:] = row[::_SAMPLE_STEP]
        ns = len(s)
        centre, margin = (k * ns) // n, ns // 100 + 8
        r1, r2 = max(centre - margin, 0), min(centre + margin, ns - 1)
        s.partition(r1)  # two single-rank selects: ~4x faster than one two-rank partition
        s[r1:].partition(r2 - r1)
        lo = s[r1] if r1 > 0 else _NEG_INF  # the ends are open: every value is inside them
        hi = s[r2] if r2 < ns - 1 else _POS_INF
        below, m = _bracket(row, lo, hi, buf)
        j = k - below
        if 0 <= j < m:
            cand = buf[:m]
            cand.partition(j)
            thr = cand[j]
            return thr, bool(j > 0 and cand[:j].max() == thr)
    buf[:] = row
    buf.partition(k)
    thr = buf[k]
    return thr, bool(buf[:k].max() == thr)


def _binarise_row(row: np.ndarray, num: int, out: np.ndarray, buf: np.ndarray) -> None:
    """One hard mask: ``row`` float ``[N]`` -> ``out`` float32 ``[N]`` (1 = foreground), the top
    ``num`` pixels background. The threshold is the row's ``k = N - num``-th smallest value
    (:func:`_kth`, with the scratch ``buf`` ``[N]``); pixels ``>= threshold`` are background,
    exactly ``num`` of them unless a value below rank ``k`` ties the threshold: then the row is
    redone by exact ranks (:func:`_ranked`)."""
    n = row.shape[0]
    k = n - min(max(int(num), 0), n)
    if k == n or k == 0:  # no background pixel / every pixel background
        out[:] = 1.0 if k == n else 0.0
        return
    thr, tie = _kth(row, k, buf)
    if tie:
        out[:] = _ranked(row[None], np.array([num]), np.zeros(1, np.int64))[0]
        return
    if row.dtype == np.float32:
        _below(row, thr, out)
    else:
        np.less(row, thr, out=out, casting="unsafe")


def _binarise_numpy(img: np.ndarray, num: np.ndarray, soft: np.ndarray) -> np.ndarray:
    """img float [B, N] -> foreground mask float32 [B, N]; top ``num`` pixels are background.

    Soft masks: exact ranks (:func:`_ranked`). Hard masks: :func:`_binarise_row`, row by row
    (each row has its own rank: a multi-rank ``np.partition`` of every row measured 3x slower
    than a full sort, and a full sort 2-4x slower than the per-row select)."""
    b, n = img.shape
    if soft.any():
        return _ranked(img, num, soft)
    masks = np.empty((b, n), np.float32)
    buf = np.empty(n, img.dtype)  # one scratch row, reused: it stays in cache
    for i in range(b):
        _binarise_row(img[i], num[i], masks[i], buf)
    return masks


@lru_cache(maxsize=8)
def _box_scale(height: int, width: int, decay: float) -> np.ndarray:
    """float32 ``[R, C]``: :func:`spectrum_scale` on the box's rows and columns (read-only)."""
    lo, hi, cols = spectrum_box(height, width, decay)
    scale = spectrum_scale(height, width, decay).astype(np.float32)
    scale = np.concatenate([scale[:lo, :cols], scale[height - hi:, :cols]])
    scale.setflags(write=False)
    return scale


def _col_order(width: int, cols: int) -> np.ndarray:
    """int64 ``[C]``: the order of the box's columns in :func:`_box_spectra`: even then odd
    frequencies for an even width (:func:`_half_bases`' quarter split), else as they are."""
    k = np.arange(cols)
    return np.r_[k[0::2], k[1::2]] if width % 2 == 0 else k


@lru_cache(maxsize=8)
def _half_bases(height: int, width: int, lo: int, hi: int, cols: int):
    """float32 matrices of the box's inverse real FFT on half the rows and half (even width: a
    quarter of) the columns (read-only), as :func:`_box_image` uses them:

    * ``eyh [2 Hh, R]``, ``Hh = H // 2 + 1``: ``cos`` then ``sin`` of the kept rows' phases
      ``2 pi ky y / H`` for ``y <= H // 2`` (rows ``H - y`` follow by symmetry);
    * ``exc, exs [C, X]``: ``w cos`` and ``-w sin`` of ``2 pi kx x / W``, ``w`` the irfft weight
      (1 for DC and Nyquist columns, else 2) times ``irfft2``'s ``1 / (H W)``, for ``x <= W // 2``
      (odd width, ``X = W // 2 + 1``; columns ``W - x`` follow by symmetry), or for
      ``x <= W // 4`` (even width, ``X = W // 4 + 1``, rows in :func:`_col_order`: columns
      ``W / 2 +- x`` and ``W - x`` follow by symmetry);
    * ``ne``: how many of the (reordered) columns are even frequencies (0 for an odd width).

    The entries are those of the full-size bases before the symmetric split (float64 cos / sin
    rounded once to float32)."""
    ky = np.r_[0:lo, -hi:0]
    ang = 2 * np.pi * np.outer(np.arange(height // 2 + 1), ky) / height
    eyh = np.concatenate([np.cos(ang), np.sin(ang)], axis=0)
    k = _col_order(width, cols)
    wgt = np.where((k == 0) | (2 * k == width), 1.0, 2.0) / (height * width)
    xs = np.arange(width // 4 + 1 if width % 2 == 0 else width // 2 + 1)
    ang = 2 * np.pi * np.outer(k, xs) / width
    exc, exs = wgt[:, None] * np.cos(ang), -wgt[:, None] * np.sin(ang)
    out = tuple(np.ascontiguousarray(x, dtype=np.float32) for x in (eyh, exc, exs))
    for x in out:
        x.setflags(write=False)
    return out + ((cols + 1) // 2 if width % 2 == 0 else 0,)


_ONE_THREAD_MNK = 1 << 18  # OpenBLAS runs a product with M*N*K at most this on the calling thread


def _matmul_1t(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """``out[:] = a @ b`` (2-D float32) in row blocks small enough that OpenBLAS never wakes its
    worker threads (``M N K <= 65536 * GEMM_MULTITHREAD_THRESHOLD``, 4 by default). Why: on the
    2-core box under load (DALI decoding on both cores), every threaded product measured
    16-32 ms of wall time and 8-16 ms of CPU (its workers spin for a scheduler tick) instead of
    ~0.05 ms; torch's matmul with 2 threads stalls the same way."""
    kn = b.shape[0] * b.shape[1]
    if a.shape[0] * kn <= _ONE_THREAD_MNK:  # one block (most products here): no slicing
        np.matmul(a, b, out=out)
        return
    rows = max(1, _ONE_THREAD_MNK // max(1, kn))
    for s in range(0, a.shape[0], rows):
        np.matmul(a[s:s + rows], b, out=out[s:s + rows])


def _box_spectra(noise: np.ndarray, height: int, width: int, decay: float):
    """The box's scaled spectrum, or None when :func:`low_freq_numpy` uses ``irfft2`` (whole
    spectrum, or more than ``_MATMUL_COLS`` columns). Returns ``(z, bases)``: ``z`` float32
    ``[B, R, 2C]`` = ``[Re | Im]`` per sample (kept rows ``ky = 0..lo-1, -hi..-1``, columns in
    :func:`_col_order`), ``bases`` those of :func:`_half_bases`."""
    lo, hi, cols = spectrum_box(height, width, decay)
    if lo == height or cols > _MATMUL_COLS:
        return None
    noise = box_noise(noise, height, width, decay)
    scale = _box_scale(height, width, decay)
    order = _col_order(width, cols)
    z = np.concatenate([noise[..., 0] * scale, noise[..., 1] * scale], axis=2)[..., np.r_[order, cols + order]]
    return z, _half_bases(height, width, lo, hi, cols)


class _Scratch:
    """Per-batch scratch arrays of :func:`_box_image` (float32; reused for every sample so they
    stay in cache): ``g [2 Hh, 2C]``, ``tr, ti [H, C]``, and the column parts: ``d, e [H, X]``
    (odd width) or ``ec, oc, es, os [H, X]`` (even width)."""

    def __init__(self, bases, height: int):
        eyh, exc, _, ne = bases
        c, x = exc.shape
        self.g = np.empty((eyh.shape[0], 2 * c), np.float32)
        self.tr, self.ti = np.empty((height, c), np.float32), np.empty((height, c), np.float32)
        self.parts = [np.empty((height, x), np.float32) for _ in range(4 if ne else 2)]


def _box_image(z: np.ndarray, bases, scr: _Scratch, img: np.ndarray) -> None:
    """One sample's low-frequency image: z float32 ``[R, 2C]`` (:func:`_box_spectra`) -> img
    float32 ``[H, W]``. The inverse real FFT of the box as small products, using the real-DFT
    symmetry (cos even, sin odd about ``H - y`` and ``W - x``; odd frequencies flip sign from
    ``x`` to ``W / 2 + x``): ``g = eyh @ z`` (half the rows' cos and sin parts),
    :func:`~fastcas.mix._fmix_cpu.fold_rows` -> ``tr, ti [H, C]``; then for an even width the
    four quarter-width parts ``tr_even @ exc_even``, ``tr_odd @ exc_odd``, ``ti_even @
    exs_even``, ``ti_odd @ exs_odd`` folded into the image by
    :func:`~fastcas.mix._fmix_cpu.fold_quarters`, for an odd width the half-width ``tr @ exc``,
    ``ti @ exs`` folded by :func:`~fastcas.mix._fmix_cpu.fold_cols`. About half (odd width) or
    a third (even) of the multiply-adds of the full-size products (``[H, 2R] @ [2R, 2C]``
    then ``[H, 2C] @ [2C, W]``), the same terms summed in another order (float32: the last
    bits differ, see the module docstring)."""
    eyh, exc, exs, ne = bases
    _matmul_1t(eyh, z, scr.g)
    _fold_rows(scr.g, scr.tr, scr.ti)
    p = scr.parts
    if ne:
        _matmul_1t(scr.tr[:, :ne], exc[:ne], p[0])
        _matmul_1t(scr.tr[:, ne:], exc[ne:], p[1])
        _matmul_1t(scr.ti[:, :ne], exs[:ne], p[2])
        _matmul_1t(scr.ti[:, ne:], exs[ne:], p[3])
        _fold_quarters(p[0], p[1], p[2], p[3], img)
    else:
        _matmul_1t(scr.tr, exc, p[0])
        _matmul_1t(scr.ti, exs, p[1])
        _fold_cols(p[0], p[1], img)


def low_freq_numpy(noise: np.ndarray, height: int, width: int, decay: float) -> np.ndarray:
    """noise float32 ``[B, *noise_shape]`` (or full layout ``[B, H, W//2+1, 2]``) ->
    low-frequency images float32 ``[B, H, W]``: the inverse real FFT of the box's spectrum,
    zero elsewhere (single precision throughout, as on the GPU). A narrow box is inverted with
    small matrix products per sample (:func:`_box_image`; ~40x fewer operations than a
    full-size ``irfft2`` at 224x224); the same sum either way."""
    blocks = _box_spectra(noise, height, width, decay)
    if blocks is not None:
        z, bases = blocks
        img = np.empty((len(z), height, width), np.float32)
        scr = _Scratch(bases, height)
        for i in range(len(z)):
            _box_image(z[i], bases, scr, img[i])
        return img
    lo, hi, cols = spectrum_box(height, width, decay)
    noise = box_noise(noise, height, width, decay)
    spec = (noise[..., 0] + np.complex64(1j) * noise[..., 1]) * _box_scale(height, width, decay)
    if lo < height:  # a wide box: zero-padded
        zeros = np.zeros((len(spec), height - lo - hi, cols), spec.dtype)
        spec = np.concatenate([spec[:, :lo], zeros, spec[:, lo:]], 1)
    return np.fft.irfft2(spec, s=(height, width), axes=(-2, -1)).astype(np.float32, copy=False)


def _masks_numpy(noise: np.ndarray, height: int, width: int, decay: float, num, soft) -> np.ndarray:
    """float32 ``[m, H, W]`` masks on the host: :func:`low_freq_numpy` then
    :func:`_binarise_numpy`, with the same arithmetic fused per sample for hard masks on a
    narrow box (each 224x224 image is made and binarised while it is in cache; see the module
    docstring for the time)."""
    blocks = _box_spectra(noise, height, width, decay)
    m, n = len(num), height * width
    if blocks is None or soft.any():
        img = low_freq_numpy(noise, height, width, decay).reshape(m, n)
        return _binarise_numpy(img, num, soft).reshape(m, height, width)
    z, bases = blocks
    masks = np.empty((m, n), np.float32)
    scr = _Scratch(bases, height)
    img, buf = np.empty((height, width), np.float32), np.empty(n, np.float32)
    for i in range(m):
        _box_image(z[i], bases, scr, img)
        _binarise_row(img.reshape(n), num[i], masks[i], buf)
    return masks.reshape(m, height, width)


_NOISE_TAG = 0x314  # purpose tag of the per-position FMix noise


def noise_at(seed: int, epoch: int, positions, height: int, width: int, decay: float = 3.0) -> np.ndarray:
    """float32 ``[n, *noise_shape(H, W, decay)]`` spectrum noise of each global position: one
    NumPy generator per position seeded from ``(seed, tag, epoch, position)``, drawing the
    kept box only, so any subset of positions (any split of the batch over ranks) gets the
    same per-sample noise. (Building the 32 generators of a batch costs ~0.3 ms; the normals
    themselves cost ~10 ns each on the 2-core box, bulk or not, hence the box.)"""
    g = np.asarray(positions, np.int64).reshape(-1)
    out = np.empty((len(g),) + noise_shape(height, width, decay), np.float32)
    for j, p in enumerate(g.tolist()):
        generator(int(seed), _NOISE_TAG, int(epoch), p).standard_normal(out.shape[1:], dtype=np.float32, out=out[j])
    return out


def _masks_torch(noise, height: int, width: int, decay: float, num, soft, device):
    """Torch twin of the NumPy mask builder: host ``noise`` (as :func:`low_freq_numpy` takes it)
    is cut to the box and copied to ``device`` (pinned, non-blocking, like every host input
    here); the same truncated spectrum is zero-padded and inverted with ``irfft2`` there, then
    sorted and binarised there."""
    import torch

    lo, hi, cols = spectrum_box(height, width, decay)
    noise = array_to_device(box_noise(noise, height, width, decay), device, torch.float32)
    m = noise.shape[0]
    scale = array_to_device(_box_scale(height, width, decay).copy(), device)  # a writable copy for torch
    box = torch.complex(noise[..., 0], noise[..., 1]) * scale
    spec = torch.zeros((m, height, width // 2 + 1), dtype=box.dtype, device=device)
    spec[:, :lo, :cols] = box[:, :lo]
    spec[:, height - hi:, :cols] = box[:, lo:]
    img = torch.fft.irfft2(spec, s=(height, width)).reshape(m, -1)
    n = height * width
    num_t = array_to_device(num, device)[:, None]
    if not soft.any() and m:
        s = torch.sort(img, dim=1).values
        thr = torch.gather(s, 1, torch.clamp(n - num_t, 0, n - 1))
        bg = (img >= thr) & (num_t > 0)
        # exactness under ties is checked lazily only when asked (no host sync on the fast path)
        return (~bg).to(torch.float32).reshape(m, height, width)
    order = torch.argsort(-img, dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(n, device=device).expand(m, n))
    soft_t = array_to_device(soft, device)[:, None]
    lo_t = num_t - soft_t
    hi_t = num_t + soft_t
    ramp = 1.0 - (ranks - lo_t).double() / torch.clamp(hi_t - lo_t - 1, min=1).double()
    t = torch.where(ranks < lo_t, 1.0, torch.where(ranks >= hi_t, 0.0, ramp))
    return (1.0 - t).to(torch.float32).reshape(m, height, width)


def fmix_masks(rng: np.random.Generator, drawn: np.ndarray, mixed: np.ndarray, height: int,
               width: int, *, decay: float = 3.0, max_soft: float = 0.0, batch_mode: bool = False,
               device=None):
    """Per-sample FMix masks and measured lam.

    drawn: float64 ``[B]`` Beta draws; mixed: bool ``[B]``. Returns ``(masks, lam)``: masks float32
    ``[B, H, W]`` (NumPy, or a torch tensor on ``device`` when that is a CUDA device), 1 =
    foreground, zero for unmixed samples; lam float64 ``[B]`` = kept-background fraction,
    exactly ``round(drawn * H * W) / (H * W)`` for mixed samples, 1 otherwise. The noise is
    drawn from ``rng`` for the kept box only (:func:`noise_shape`).
    """
    b = len(drawn)
    m = min(b, 1) if batch_mode else b
    noise = rng.standard_normal((m,) + noise_shape(height, width, decay), dtype=np.float32)
    return masks_from_noise(noise, drawn, mixed, height, width, decay=decay, max_soft=max_soft,
                            batch_mode=batch_mode, device=device)


def masks_from_noise(noise: np.ndarray, drawn: np.ndarray, mixed: np.ndarray, height: int, width: int, *,
                     decay: float = 3.0, max_soft: float = 0.0, batch_mode: bool = False, device=None):
    """Masks and lam (as :func:`fmix_masks`) from host ``noise`` float32 ``[m, *noise_shape]``
    or in the full layout ``[m, H, W//2+1, 2]`` (``m = B``, or 1 in batch mode; only the box
    is used); NumPy, or torch on ``device`` when it is a CUDA device."""
    if not decay > 0:
        raise ValueError(f"fmix decay must be > 0, got decay={decay!r}")
    if not 0.0 <= max_soft <= 0.5:
        raise ValueError(f"fmix max_soft must be in [0, 0.5], got max_soft={max_soft!r}")
    b, n = len(drawn), height * width
    m = min(b, 1) if batch_mode else b
    num, soft = _counts(drawn[:m], n, max_soft)
    lam = np.where(mixed, np.repeat(num, b // max(m, 1)) / n if batch_mode else num / n, 1.0)
    on_cuda = device is not None and str(device).startswith("cuda")
    if on_cuda:
        import torch

        masks = _masks_torch(noise[:m], height, width, decay, num, soft, torch.device(device))
        if batch_mode:
            masks = masks.expand(b, height, width)
        keep = array_to_device(mixed, masks.device)[:, None, None]
        return (masks * keep).contiguous(), lam.astype(np.float64)
    masks = _masks_numpy(noise[:m], height, width, decay, num, soft)
    if batch_mode:
        masks = np.repeat(masks, b, axis=0)
    masks[~mixed] = 0.0
    return masks, lam.astype(np.float64)
