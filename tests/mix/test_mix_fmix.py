"""FMix on the host: the low-frequency spectrum box, its matrix-product inverse FFT,
per-position box noise, the partition threshold, and the torch twin on the same definition."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from fastcas.mix import fmix, make_params_at


def _power(h, w, decay):
    """Per-bin power of the real-FFT layout as the module docstring defines it (DC excluded)."""
    k = np.arange(w // 2 + 1)
    mult = np.where((k == 0) | (2 * k == w), 1.0, 2.0)
    p = mult * fmix.spectrum_scale(h, w, decay) ** 2
    p[0, 0] = 0.0
    return p


def _keep(h, w, decay):
    lo, hi, cols = fmix.spectrum_box(h, w, decay)
    keep = np.zeros((h, w // 2 + 1), bool)
    keep[:lo, :cols] = True
    keep[h - hi:, :cols] = True
    return keep


def _irfft2_f64(noise_full, h, w, decay, keep=None):
    spec = (noise_full[..., 0].astype(np.float64) + 1j * noise_full[..., 1]) * fmix.spectrum_scale(h, w, decay)
    if keep is not None:
        spec = spec * keep
    return np.fft.irfft2(spec, s=(h, w))


def _full_from_box(box, h, w, decay):
    """Box-layout noise back in the full real-FFT layout, zeros outside the box."""
    lo, hi, cols = fmix.spectrum_box(h, w, decay)
    full = np.zeros((len(box), h, w // 2 + 1, 2), np.float32)
    full[:, :lo, :cols] = box[:, :lo]
    full[:, h - hi:, :cols] = box[:, lo:]
    return full


@pytest.mark.parametrize("h,w,decay", [(224, 224, 3.0), (160, 224, 4.0), (96, 128, 3.0), (225, 223, 3.0)])
def test_spectrum_box_drops_at_most_the_tolerance_and_is_the_smallest_such_box(h, w, decay):
    lo, hi, cols = fmix.spectrum_box(h, w, decay)
    assert lo + hi < h and cols < w // 2 + 1  # these geometries are truncated
    p, keep = _power(h, w, decay), _keep(h, w, decay)
    fy, fx = np.abs(np.fft.fftfreq(h))[:, None], np.fft.rfftfreq(w)[None, :]
    key = np.maximum(fy, fx)
    assert keep.sum() == (key <= key[keep].max()).sum()  # the box is {max(|fy|, fx) <= t}
    assert p[~keep].sum() <= fmix.DROP_TOL * p.sum()
    smaller = key < key[keep].max()  # the next smaller cutoff drops more than the tolerance
    assert p[~smaller].sum() > fmix.DROP_TOL * p.sum()
    assert fmix.noise_shape(h, w, decay) == (lo + hi, cols, 2)


@pytest.mark.parametrize("h,w,decay", [(224, 224, 2.0), (224, 224, 2.5), (32, 32, 3.0), (24, 20, 3.0)])
def test_no_truncation_where_the_box_would_hold_over_a_quarter_the_full_mask_unchanged(h, w, decay):
    assert fmix.spectrum_box(h, w, decay) == (h, 0, w // 2 + 1)
    noise = np.random.default_rng(1).standard_normal((3, h, w // 2 + 1, 2), dtype=np.float32)
    spec = (noise[..., 0] + np.complex64(1j) * noise[..., 1]) * fmix.spectrum_scale(h, w, decay).astype(np.float32)
    # bit for bit the earlier definition: one float32 irfft2 of the whole spectrum
    np.testing.assert_array_equal(fmix.low_freq_numpy(noise, h, w, decay), np.fft.irfft2(spec, s=(h, w)))


@pytest.mark.parametrize("h,w,decay", [(224, 224, 3.0), (64, 64, 4.0), (63, 65, 4.0), (96, 128, 3.0)])
def test_box_inverse_fft_is_the_zero_padded_irfft2(h, w, decay):
    noise = np.random.default_rng(2).standard_normal((5, h, w // 2 + 1, 2), dtype=np.float32)
    ref = _irfft2_f64(noise, h, w, decay, _keep(h, w, decay))
    img = fmix.low_freq_numpy(noise, h, w, decay)  # full-layout noise: the box is cut out of it
    assert img.dtype == np.float32 and img.shape == (5, h, w)
    np.testing.assert_allclose(img, ref, rtol=0, atol=5e-6 * np.abs(ref).max())
    box = fmix.box_noise(noise, h, w, decay)
    assert box.shape == (5,) + fmix.noise_shape(h, w, decay)
    np.testing.assert_array_equal(fmix.low_freq_numpy(box, h, w, decay), img)
    with pytest.raises(ValueError, match=r"fmix noise must be \[m, "):
        fmix.low_freq_numpy(noise[:, :-1], h, w, decay)


def test_truncated_masks_differ_from_the_full_spectrum_only_slightly_near_the_boundary():
    """The documented effect of the box at 224x224, decay 3 (module docstring)."""
    h = w = 224
    b = 32
    rng = np.random.default_rng(7)
    noise = rng.standard_normal((b, h, w // 2 + 1, 2), dtype=np.float32)
    num = np.floor(rng.random(b) * h * w + 0.5).astype(np.int64)
    full = fmix._binarise_numpy(_irfft2_f64(noise, h, w, 3.0).reshape(b, -1), num, np.zeros(b, np.int64))
    got, lam = fmix.masks_from_noise(noise, num / (h * w), np.ones(b, bool), h, w, decay=3.0)
    np.testing.assert_array_equal((1 - got).reshape(b, -1).sum(1), num)  # exact counts
    np.testing.assert_array_equal(lam, num / (h * w))
    diff = got.reshape(b, h, w) != full.reshape(b, h, w)
    assert diff.mean() < 5e-4
    ref = full.reshape(b, h, w)
    for i in np.flatnonzero(diff.any(axis=(1, 2))):
        # distance of each differing pixel to the nearest pixel of the other label
        d = np.where(ref[i] == 1, ndimage.distance_transform_edt(ref[i] == 1),
                     ndimage.distance_transform_edt(ref[i] == 0))
        assert d[diff[i]].max() <= 3


def test_noise_of_a_position_does_not_depend_on_the_batch_split():
    h = w = 224
    pos = np.array([1000, 1001, 5, 77, 78, 123456, 0, 2])
    whole = fmix.noise_at(3, 2, pos, h, w)
    assert whole.shape == (8,) + fmix.noise_shape(h, w, 3.0) and whole.dtype == np.float32
    parts = np.concatenate([fmix.noise_at(3, 2, pos[i:i + 3], h, w) for i in range(0, 8, 3)])
    np.testing.assert_array_equal(parts, whole)
    one = np.stack([fmix.noise_at(3, 2, [p], h, w)[0] for p in pos[::-1]])[::-1]
    np.testing.assert_array_equal(one, whole)
    assert not np.array_equal(fmix.noise_at(3, 3, pos, h, w), whole)  # epochs differ
    assert not np.array_equal(fmix.noise_at(4, 2, pos, h, w), whole)  # seeds differ
    assert len({whole[i].tobytes() for i in range(8)}) == 8  # positions differ
    # and so the masks: a rank's half of the batch gets the same masks as the whole batch
    full = make_params_at("fmix", 3, 2, pos, h, w, alpha=1.0)
    halves = [make_params_at("fmix", 3, 2, pos[i:i + 4], h, w, alpha=1.0) for i in (0, 4)]
    np.testing.assert_array_equal(full.masks, np.concatenate([p.masks for p in halves]))
    np.testing.assert_array_equal(full.lam, (1 - full.masks).reshape(8, -1).sum(1, dtype=np.float64) / (h * w))


@pytest.mark.parametrize("h,w,decay", [(224, 224, 3.0), (64, 64, 4.0)])
def test_numpy_and_torch_masks_are_the_same_definition_on_the_box(h, w, decay):
    pos = np.arange(16)
    noise = fmix.noise_at(5, 0, pos, h, w, decay)
    drawn = np.linspace(0.0, 1.0, 16)
    mixed = np.ones(16, bool)
    masks, lam = fmix.masks_from_noise(noise, drawn, mixed, h, w, decay=decay)
    num, soft = fmix._counts(drawn, h * w, 0.0)
    t = fmix._masks_torch(noise, h, w, decay, num, soft, torch.device("cpu")).numpy()
    np.testing.assert_array_equal((1 - masks).reshape(16, -1).sum(1), num)
    np.testing.assert_array_equal((1 - t).reshape(16, -1).sum(1), num)
    # float32 matrix products vs float32 irfft2: equal but for a pixel tying the threshold
    assert (t != masks).sum() <= 2


def test_partition_threshold_is_the_exact_rank_definition_with_ties():
    rng = np.random.default_rng(4)
    n = 500
    img = np.round(rng.standard_normal((12, n)), 1).astype(np.float32)  # many ties
    img[3] = 0.25  # one row all tied
    num = np.array([0, 1, 250, 250, 499, 500, 17, 333, 100, 250, 42, 250])
    zero = np.zeros(12, np.int64)
    got = fmix._binarise_numpy(img, num, zero)
    assert got.dtype == np.float32 and set(np.unique(got)) <= {0.0, 1.0}
    np.testing.assert_array_equal((1 - got).sum(1), num)
    np.testing.assert_array_equal(got, fmix._ranked(img, num, zero))  # ties: lower index first
    # continuous values (no ties): the fast path alone, same definition
    smooth = rng.standard_normal((6, n)).astype(np.float32)
    k = np.array([0, 3, 250, 499, 500, 77])
    np.testing.assert_array_equal(fmix._binarise_numpy(smooth, k, zero[:6]), fmix._ranked(smooth, k, zero[:6]))


def test_fused_host_path_is_low_freq_then_binarise_and_soft_masks_use_the_box():
    h = w = 64
    noise = fmix.noise_at(2, 1, np.arange(6), h, w, 4.0)
    drawn = np.array([0.0, 0.1, 0.5, 0.5, 0.93, 1.0])
    num, soft = fmix._counts(drawn, h * w, 0.0)
    masks, _ = fmix.masks_from_noise(noise, drawn, np.ones(6, bool), h, w, decay=4.0)
    ref = fmix._binarise_numpy(fmix.low_freq_numpy(noise, h, w, 4.0).reshape(6, -1), num, soft)
    np.testing.assert_array_equal(masks.reshape(6, -1), ref)  # same arithmetic, bit for bit
    soft_masks, lam = fmix.masks_from_noise(noise, drawn, np.ones(6, bool), h, w, decay=4.0, max_soft=0.1)
    assert ((soft_masks > 0) & (soft_masks < 1)).any()
    np.testing.assert_allclose(lam, 1 - soft_masks.reshape(6, -1).mean(1), atol=1e-6)
    hard = soft_masks.reshape(6, -1)[(soft_masks.reshape(6, -1) == 0) | (soft_masks.reshape(6, -1) == 1)]
    assert hard.size  # the soft ramp is around the same low-frequency image's threshold
    num_s, soft_s = fmix._counts(drawn, h * w, 0.1)
    t = fmix._masks_torch(noise, h, w, 4.0, num_s, soft_s, torch.device("cpu")).numpy()
    # float32 FFTs of two libraries may swap the ranks of nearly equal pixels (which ones depends
    # on the CPU's vector width): a swap moves a ramp value by one step, 1 / (2 soft - 1)
    step = 1.0 / np.maximum(2 * soft_s - 1, 1)
    assert (np.abs(t - soft_masks).reshape(6, -1).max(1) <= 2 * step + 1e-6).all()


def test_every_matrix_product_is_small_enough_for_one_blas_thread(monkeypatch):
    """A product OpenBLAS threads stalls 16-32 ms on a loaded 2-core box (fmix._matmul_1t)."""
    sizes = []
    real = np.matmul

    def spy(a, b, out=None):
        sizes.append(a.shape[0] * a.shape[1] * b.shape[1])
        return real(a, b, out=out)

    monkeypatch.setattr(fmix.np, "matmul", spy)
    noise = fmix.noise_at(0, 0, np.arange(3), 224, 224)
    img = fmix.low_freq_numpy(noise, 224, 224, 3.0)
    masks, _ = fmix.masks_from_noise(noise, np.array([0.2, 0.5, 0.9]), np.ones(3, bool), 224, 224)
    assert len(sizes) > 6 and max(sizes) <= 1 << 18
    monkeypatch.undo()
    np.testing.assert_allclose(img, _irfft2_f64(_full_from_box(noise, 224, 224, 3.0), 224, 224, 3.0),
                               rtol=0, atol=5e-6 * np.abs(img).max())


# ---------------------------------------------------------------- the faster host path (fmixfast2)
def _full_size_products(noise, h, w, decay):
    """The earlier definition of the box image: float32 ``(ey @ [[Re, Im], [-Im, Re]]) @ ex``
    with the full-size bases (every row, every column), as before the symmetric split."""
    lo, hi, cols = fmix.spectrum_box(h, w, decay)
    box = fmix.box_noise(noise, h, w, decay)
    scale = fmix._box_scale(h, w, decay)
    re, im = box[..., 0] * scale, box[..., 1] * scale
    q = np.concatenate([np.concatenate([re, im], 2), np.concatenate([-im, re], 2)], 1)
    ky = np.r_[0:lo, -hi:0]
    ang = 2 * np.pi * np.outer(np.arange(h), ky) / h
    ey = np.concatenate([np.cos(ang), np.sin(ang)], 1).astype(np.float32)
    k = np.arange(cols)
    wgt = np.where((k == 0) | (2 * k == w), 1.0, 2.0) / (h * w)
    ang = 2 * np.pi * np.outer(k, np.arange(w)) / w
    ex = np.concatenate([wgt[:, None] * np.cos(ang), -wgt[:, None] * np.sin(ang)]).astype(np.float32)
    return np.stack([(ey @ qi) @ ex for qi in q])


@pytest.mark.parametrize("h,w,decay", [(224, 224, 3.0), (225, 223, 3.0), (160, 226, 4.0), (63, 65, 4.0),
                                       (64, 64, 4.0), (96, 128, 3.0), (97, 130, 5.0)])
def test_symmetric_products_equal_the_full_size_products(h, w, decay):
    """Half-height rows, quarter- (even W) or half-width (odd W) columns, folded: the same sum
    as the full-size products but for float32 rounding (measured <= 1.2e-6 of the image's
    peak at 224x224; the bound here is 4e-6)."""
    noise = fmix.noise_at(11, 3, np.arange(6), h, w, decay)
    ref = _full_size_products(noise, h, w, decay)
    got = fmix.low_freq_numpy(noise, h, w, decay)
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=4e-6 * np.abs(ref).max())
    # and the exact (float64) zero-padded irfft2 of the box, as before
    exact = _irfft2_f64(_full_from_box(noise, h, w, decay), h, w, decay)
    np.testing.assert_allclose(got, exact, rtol=0, atol=5e-6 * np.abs(exact).max())


def test_fold_quarters_and_fold_cols_place_every_column():
    from fastcas.mix import _fmix_cpu as K

    rng = np.random.default_rng(0)
    for w in (224, 226, 8, 10):  # h = W / 2 even and odd
        h = w // 2
        ec, oc, es, os_ = (rng.standard_normal((5, h // 2 + 1)).astype(np.float32) for _ in range(4))
        img = np.full((5, w), np.nan, np.float32)
        K.fold_quarters(ec, oc, es, os_, img)
        ref = np.empty_like(img)
        for x in range(h // 2 + 1):  # the module's order: later assignments win
            u, v, u2, v2 = ec[:, x] + oc[:, x], es[:, x] + os_[:, x], ec[:, x] - oc[:, x], es[:, x] - os_[:, x]
            if h + x < w:
                ref[:, h + x] = u2 + v2
            ref[:, h - x] = u2 - v2
        for x in range(h // 2 + 1):
            u, v = ec[:, x] + oc[:, x], es[:, x] + os_[:, x]
            if x:
                ref[:, w - x] = u - v
            ref[:, x] = u + v
        np.testing.assert_array_equal(img, ref)
    for w in (223, 9):
        d, e = (rng.standard_normal((4, w // 2 + 1)).astype(np.float32) for _ in range(2))
        img = np.full((4, w), np.nan, np.float32)
        K.fold_cols(d, e, img)
        np.testing.assert_array_equal(img[:, :w // 2 + 1], d + e)
        np.testing.assert_array_equal(img[:, w // 2 + 1:], (d - e)[:, 1:w // 2 + 1][:, ::-1])


def _tied_rows(rng, n):
    return [np.round(rng.standard_normal(n), 1).astype(np.float32),  # many ties
            np.full(n, 0.25, np.float32),  # all tied
            (rng.random(n) < 0.5).astype(np.float32),  # two values
            np.repeat(rng.standard_normal(n // 64 + 1), 64)[:n].astype(np.float32)]  # runs of 64


@pytest.mark.parametrize("n", [50176, 4096, 5000, 4095, 500])
def test_kth_is_the_partition_value_and_flags_ties(n):
    """_kth (sampled bracket for long float32 rows, ndarray.partition otherwise) returns the
    k-th order statistic and flags a tie below rank k, on smooth, random and tied rows."""
    rng = np.random.default_rng(n)
    img = fmix.low_freq_numpy(fmix.noise_at(1, 0, np.arange(2), 224, 224), 224, 224, 3.0).reshape(2, -1)[:, :n]
    rows = [img[0], img[1], rng.standard_normal(n).astype(np.float32), np.sort(rng.random(n)).astype(np.float32)]
    buf = np.empty(n, np.float32)
    for tied, row in [(False, r) for r in rows] + [(True, r) for r in _tied_rows(rng, n)]:
        srt = np.sort(row)
        for k in [1, 2, n // 3, n // 2, n - 2, n - 1] + list(rng.integers(1, n, 6)):
            thr, tie = fmix._kth(row, int(k), buf)
            assert thr == srt[k] == np.partition(row, k)[k]
            assert tie == bool(srt[k - 1] == thr)
            if not tied:
                assert not tie


def test_kth_falls_back_when_the_sample_misses_the_threshold():
    """A row whose every 16th value lies far off the rest: the bracket misses, and the whole
    row is partitioned (same value)."""
    rng = np.random.default_rng(5)
    row = rng.standard_normal(8192).astype(np.float32)
    row[::16] += 100.0
    buf = np.empty_like(row)
    for k in (100, 4000, 8000):
        assert fmix._kth(row, k, buf) == (np.partition(row, k)[k], False)


def test_bracket_counts_below_and_gathers_inside():
    from fastcas.mix import _fmix_cpu as K

    rng = np.random.default_rng(6)
    for n in (50176, 1000, 70, 5):
        row = np.round(rng.standard_normal(n), 2).astype(np.float32)
        lo, hi = np.float32(-0.3), np.float32(0.41)
        cand = np.empty(n, np.float32)
        below, m = K.bracket(row, lo, hi, cand)
        assert below == (row < lo).sum()
        np.testing.assert_array_equal(cand[:m], row[(row >= lo) & (row <= hi)])
    row = np.full(300, 5.0, np.float32)  # chunks whose only bracketed value is an end of it
    row[[3, 130, 299]] = [-0.3, 0.41, 0.41]
    cand = np.empty(300, np.float32)
    below, m = K.bracket(row, np.float32(-0.3), np.float32(0.41), cand)
    assert (below, m) == (0, 3)
    np.testing.assert_array_equal(cand[:3], np.float32([-0.3, 0.41, 0.41]))


def test_long_rows_exact_counts_and_ties_on_the_sampled_path():
    """Hard masks of 224x224 images: exactly num background pixels for every num (0, 1, N - 1,
    N included), equal to the exact-rank definition, also when values tie (sampled select, then
    the tie fallback to exact ranks)."""
    h = w = 224
    n = h * w
    img = fmix.low_freq_numpy(fmix.noise_at(8, 0, np.arange(4), h, w), h, w, 3.0).reshape(4, -1)
    rng = np.random.default_rng(9)
    tied = np.stack(_tied_rows(rng, n))
    rows = np.concatenate([img, tied, np.round(img * (200 / np.abs(img).max()))]).astype(np.float32)
    for num in ([0, 1, n - 1, n], list(rng.integers(0, n + 1, 4))):
        nums = np.resize(np.array(num), len(rows))
        zero = np.zeros(len(rows), np.int64)
        got = fmix._binarise_numpy(rows, nums, zero)
        np.testing.assert_array_equal((1 - got).sum(1), nums)
        np.testing.assert_array_equal(got, fmix._ranked(rows, nums, zero))


def test_host_masks_unchanged_by_the_symmetric_products_but_for_threshold_pixels():
    """The documented change (module docstring): masks of the symmetric products against the
    full-size products' masks, same noise: lam and counts identical, pixels nearly all equal."""
    h = w = 224
    pos = np.arange(64)
    noise = fmix.noise_at(0, 0, pos, h, w)
    drawn = np.random.default_rng(0).random(64)
    num, soft = fmix._counts(drawn, h * w, 0.0)
    old = fmix._binarise_numpy(_full_size_products(noise, h, w, 3.0).reshape(64, -1), num, soft)
    new, lam = fmix.masks_from_noise(noise, drawn, np.ones(64, bool), h, w)
    np.testing.assert_array_equal(lam, num / (h * w))
    np.testing.assert_array_equal((1 - new).reshape(64, -1).sum(1), num)
    assert (new.reshape(64, -1) != old).mean() < 1e-5
