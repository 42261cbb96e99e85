"""Mixing: parameters, NumPy reference, torch CPU apply, targets, errors (fastcas.mix)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from fastcas.core.rng import generator
from fastcas.mix import KINDS, MixParams, apply, in_batch_partner, make_params, mix, soft_targets
from fastcas.mix.params import cut_sizes
from fastcas.mix.saliency import finegrained_map, saliency_centres, spectral_residual_numpy

B, C, H, W = 7, 3, 24, 20  # odd batch, non-square


def zero_one(b=B, c=C, h=H, w=W, dtype=np.float32):
    return np.zeros((b, c, h, w), dtype), np.ones((b, c, h, w), dtype)


@pytest.mark.parametrize("kind", KINDS)
def test_lam_is_measured_background_fraction_and_targets_match(kind):
    bg, fg = zero_one()
    y_bg = np.arange(B) % 4
    y_fg = (np.arange(B) + 1) % 4  # always different from y_bg
    img, t, p = mix(kind, bg, fg, y_bg, y_fg, num_classes=4, generator=generator(1),
                    return_params=True)
    assert img.shape == bg.shape and img.dtype == bg.dtype
    fg_frac = img.mean(axis=(1, 2, 3))
    np.testing.assert_allclose(p.lam, 1.0 - fg_frac, atol=1e-6)
    np.testing.assert_allclose(t.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(t[np.arange(B), y_fg], fg_frac, atol=1e-6)
    np.testing.assert_allclose(t[np.arange(B), y_bg], 1.0 - fg_frac, atol=1e-6)
    assert p.lam.dtype == np.float64 and p.lam.shape == (B,)
    assert (p.lam < 1).any()


@pytest.mark.parametrize("kind", KINDS)
def test_prob_zero_and_partial(kind):
    bg, fg = zero_one(b=40)
    y = np.zeros(40, np.int64)
    img, t, p = mix(kind, bg, fg, y, y + 1, num_classes=2, prob=0.0, generator=generator(2),
                    return_params=True)
    assert not p.mixed.any() and (p.lam == 1).all() and (img == 0).all()
    np.testing.assert_array_equal(t, np.tile([1.0, 0.0], (40, 1)))
    img, t, p = mix(kind, bg, fg, y, y + 1, num_classes=2, prob=0.5, generator=generator(3),
                    return_params=True)
    assert 5 < p.mixed.sum() < 35
    assert (p.lam[~p.mixed] == 1).all() and (img[~p.mixed] == 0).all()
    if p.boxes is not None:
        assert (p.boxes[~p.mixed] == 0).all()


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_with_seed(kind):
    rng = np.random.default_rng(0)
    bg = rng.random((5, 3, 16, 16), dtype=np.float32)
    fg = rng.random((5, 3, 16, 16), dtype=np.float32)
    y = np.arange(5) % 3
    a = mix(kind, bg, fg, y, y[::-1], num_classes=3, generator=generator(7, 1))
    b = mix(kind, bg, fg, y, y[::-1], num_classes=3, generator=generator(7, 1))
    c = mix(kind, bg, fg, y, y[::-1], num_classes=3, generator=generator(7, 2))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert mix(kind, bg, fg, y, y, num_classes=3, generator=5)[0].shape == bg.shape  # int seed


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [np.uint8, np.float16, np.float32, np.float64])
def test_torch_cpu_equals_numpy_reference(kind, dtype):
    rng = np.random.default_rng(4)
    bg = (rng.random((5, 3, 12, 10)) * 255).astype(dtype)
    fg = (rng.random((5, 3, 12, 10)) * 255).astype(dtype)
    opts = {"max_soft": 0.1} if kind == "fmix" else {}  # soft ramp exercises the rounding
    p = make_params(kind, 5, 12, 10, generator=generator(5), foreground=fg, **opts)
    ref = apply(p, bg, fg)
    out = apply(p, torch.from_numpy(bg), torch.from_numpy(fg))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.from_numpy(bg).dtype
    np.testing.assert_array_equal(out.numpy(), ref)


def test_torch_mix_returns_torch_targets():
    bg = torch.zeros(3, 3, 8, 8)
    img, t = mix("cutmix", bg, torch.ones_like(bg), torch.tensor([0, 1, 2]), torch.tensor([2, 1, 0]),
                 num_classes=3, generator=generator(0))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.shape == (3, 3)
    torch.testing.assert_close(t.sum(1), torch.ones(3))


def test_cutmix_lambda_and_box_statistics_follow_clovaai_rule():
    n, h, w, alpha = 4000, 32, 48, 1.0
    p = make_params("cutmix", n, h, w, alpha=alpha, generator=generator(11))
    # drawn lambda ~ Beta(alpha, alpha)
    assert stats.kstest(p.drawn, stats.beta(alpha, alpha).cdf).pvalue > 0.01
    cut_h, cut_w = cut_sizes(p.drawn, h, w)
    np.testing.assert_array_equal(cut_h, (h * np.sqrt(1 - p.drawn)).astype(int))
    y0, x0, y1, x1 = p.boxes.T.astype(int)
    inner = (y0 > 0) & (y1 < h) & (x0 > 0) & (x1 < w)
    assert inner.sum() > 100
    np.testing.assert_array_equal((y1 - y0)[inner], 2 * (cut_h[inner] // 2))
    np.testing.assert_array_equal((x1 - x0)[inner], 2 * (cut_w[inner] // 2))
    assert ((y1 - y0) <= 2 * (cut_h // 2)).all() and ((x1 - x0) <= 2 * (cut_w // 2)).all()
    # uniform integer centre on [0, side): recover it from the clipped box (y0 = cy - half unless
    # clipped at 0, else y1 = cy + half) where a side cannot be clipped on both ends (half <
    # side / 2, a condition on the drawn size only, so it does not bias the centres), then
    # chi-square against uniform
    for lo, hi, cut, side in ((y0, y1, cut_h, h), (x0, x1, cut_w, w)):
        half = cut // 2
        ok = half < side / 2
        centre = np.where(lo > 0, lo + half, hi - half)[ok]
        assert ok.sum() > 1000 and centre.min() >= 0 and centre.max() < side
        counts = np.bincount(centre, minlength=side)
        assert stats.chisquare(counts).pvalue > 1e-3
    # lam corrected from the clipped area
    np.testing.assert_allclose(p.lam, 1 - (y1 - y0) * (x1 - x0) / (h * w))
    # 2 * (cut // 2) <= cut <= side * sqrt(1 - drawn), and clipping only shrinks the box
    assert (p.lam >= p.drawn - 1e-12).all()


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_fmix_lambda_distribution_and_exact_counts(alpha):
    n, h, w = 300, 16, 24
    p = make_params("fmix", n, h, w, alpha=alpha, generator=generator(12))
    m = p.masks
    assert m.dtype == np.float32 and m.shape == (n, h, w) and set(np.unique(m)) <= {0.0, 1.0}
    kept = (1 - m).reshape(n, -1).sum(1)
    np.testing.assert_array_equal(kept, np.floor(p.drawn * h * w + 0.5))
    np.testing.assert_allclose(p.lam, kept / (h * w))
    # measured lam is the Beta draw quantised to 1/(H*W) (a KS test on the quantised values
    # would reject for small alpha, where many draws round to exactly 0 or 1)
    assert stats.kstest(p.drawn, stats.beta(alpha, alpha).cdf).pvalue > 0.01
    assert (np.abs(p.lam - p.drawn) <= 0.5 / (h * w) + 1e-12).all()


def test_fmix_masks_are_low_frequency_and_soft_option():
    p = make_params("fmix", 8, 32, 32, generator=generator(13))
    m = p.masks
    # low frequency: far fewer label changes between neighbours than random noise (50%)
    changes = (np.diff(m, axis=2) != 0).mean()
    assert changes < 0.15
    q = make_params("fmix", 8, 32, 32, generator=generator(13), max_soft=0.1)
    assert ((q.masks > 0) & (q.masks < 1)).any()
    np.testing.assert_allclose(q.lam, 1 - q.masks.reshape(8, -1).mean(1), atol=1e-6)
    np.testing.assert_allclose(q.lam, np.floor(q.drawn * 1024 + 0.5) / 1024, atol=1e-6)


def spot_images(centres, h=96, w=128, seed=0):
    rng = np.random.default_rng(seed)
    img = (0.4 + 0.05 * rng.random((len(centres), 3, h, w))).astype(np.float32)
    for i, (y, x) in enumerate(centres):
        img[i, :, y - 1:y + 2, x - 1:x + 2] = 1.0
    return img


def test_spectral_saliency_centre_on_bright_spot_numpy_and_torch():
    centres = [(10, 20), (50, 100), (90, 5), (48, 64)]
    img = spot_images(centres)
    for x in (img, torch.from_numpy(img)):
        cy, cx = saliency_centres(x, "spectral")
        f = 2  # downsampling factor for 128 wide
        assert (np.abs(cy - [c[0] for c in centres]) <= f).all(), cy
        assert (np.abs(cx - [c[1] for c in centres]) <= f).all(), cx
    sal = spectral_residual_numpy(img)
    assert sal.shape == (4, 48, 64)


def test_saliencymix_box_centred_on_salient_pixel():
    centres = [(30, 40), (60, 90), (20, 100)]
    img = spot_images(centres)
    p = make_params("saliencymix", 3, 96, 128, alpha=1.0, generator=generator(3), foreground=img,
                    saliency="spectral")
    # independent construction: the SaliencyMix/clovaai box (half-size int(side*sqrt(1-lam))//2
    # each way, clipped) around a centre within the saliency map's block size (2) of the spot
    for i, (y, x) in enumerate(centres):
        ch, cw = int(96 * np.sqrt(1 - p.drawn[i])), int(128 * np.sqrt(1 - p.drawn[i]))
        candidates = [[max(cy - ch // 2, 0), max(cx - cw // 2, 0), min(cy + ch // 2, 96), min(cx + cw // 2, 128)]
                      for cy in range(y - 2, y + 3) for cx in range(x - 2, x + 3)]
        assert p.boxes[i].tolist() in candidates, (i, p.boxes[i])
        b = p.boxes[i]
        assert p.lam[i] == pytest.approx(1 - (b[2] - b[0]) * (b[3] - b[1]) / (96 * 128))
    for (y0, x0, y1, x1), (y, x) in zip(p.boxes, centres):
        assert y0 <= y < max(y1, y0 + 1) + 2 and x0 <= x < max(x1, x0 + 1) + 2


def test_saliencymix_finegrained_matches_opencv_reference():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(9)
    yy, xx = np.mgrid[0:40, 0:56]
    img = np.stack([np.stack([np.sin(xx / (3 + k + c)) * np.cos(yy / (4 + k)) for c in range(3)])
                    for k in range(4)]).astype(np.float32) + 0.1 * rng.random((4, 3, 40, 56), dtype=np.float32)
    cy, cx = saliency_centres(img, "finegrained")
    sal = cv2.saliency.StaticSaliencyFineGrained_create()
    for i in range(4):
        x = np.moveaxis(img[i], 0, -1)
        u8 = ((x - x.min()) / (x.max() - x.min()) * 255).astype(np.uint8)
        ok, m = sal.computeSaliency(u8)
        q = (m * 255).astype(np.uint8)
        assert ok and (cy[i], cx[i]) == np.unravel_index(np.argmax(q), q.shape)
        np.testing.assert_array_equal(finegrained_map(img[i]), q)
    p = make_params("saliencymix", 4, 40, 56, generator=generator(1), foreground=img,
                    saliency="finegrained")
    for i in range(4):  # independent box around the OpenCV reference's peak (checked above)
        ch, cw = int(40 * np.sqrt(1 - p.drawn[i])), int(56 * np.sqrt(1 - p.drawn[i]))
        want = [max(cy[i] - ch // 2, 0), max(cx[i] - cw // 2, 0), min(cy[i] + ch // 2, 40), min(cx[i] + cw // 2, 56)]
        assert p.boxes[i].tolist() == want


def test_batch_mode_reproduces_reference_one_region_per_batch():
    for kind in KINDS:
        fg = spot_images([(10, 10)] * 6, h=32, w=32)
        p = make_params(kind, 6, 32, 32, generator=generator(8), mode="batch", foreground=fg)
        assert (p.lam == p.lam[0]).all() and (p.mixed == p.mixed[0]).all()
        if p.boxes is not None:
            assert (p.boxes == p.boxes[0]).all()
        if p.masks is not None:
            assert (p.masks == p.masks[0]).all()


def test_soft_targets_label_smoothing_timm_rule():
    p = MixParams("mixup", 4, 4, np.array([1.0, 0.25, 0.5, 0.0]), np.ones(4, bool))
    t = soft_targets(p, [0, 1, 2, 3], [1, 1, 0, 2], num_classes=5, label_smoothing=0.1)
    off, on = 0.1 / 5, 1 - 0.1 + 0.1 / 5
    np.testing.assert_allclose(t.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(t[0], [on, off, off, off, off], atol=1e-7)
    np.testing.assert_allclose(t[1, 1], on, atol=1e-7)  # same label on both sides
    np.testing.assert_allclose(t[2, [2, 0]], [0.5 * on + 0.5 * off] * 2, atol=1e-7)
    np.testing.assert_allclose(t[3, 2], on, atol=1e-7)


def test_in_batch_partner_and_odd_partial_batches():
    perm = in_batch_partner(9, generator(0))
    assert perm.dtype == np.int64 and sorted(perm) == list(range(9))
    rng = np.random.default_rng(1)
    x = rng.random((9, 3, 8, 8), dtype=np.float32)
    y = np.arange(9) % 4
    for b in (1, 2, 9):
        for kind in KINDS:
            pb = np.random.default_rng(b).permutation(b)  # a true permutation of the partial batch
            img, t, p = mix(kind, x[:b], x[pb], y[:b], y[pb], num_classes=4, generator=generator(b),
                            return_params=True)
            assert img.shape == (b, 3, 8, 8) and t.shape == (b, 4)
            # targets follow the region applied to each sample of the odd/partial batch
            fg_frac = apply(p, np.zeros_like(x[:b]), np.ones_like(x[:b])).mean(axis=(1, 2, 3))
            want = np.zeros((b, 4))
            np.add.at(want, (np.arange(b), y[:b]), 1 - fg_frac)
            np.add.at(want, (np.arange(b), y[pb]), fg_frac)
            np.testing.assert_allclose(t, want, atol=1e-6)
    img, t = mix("cutmix", x[:0], x[:0], y[:0], y[:0], num_classes=4, generator=generator(0))
    assert img.shape == (0, 3, 8, 8) and t.shape == (0, 4)


def test_errors():
    bg, fg = zero_one(b=2, h=8, w=8)
    y = np.array([0, 1])
    kw = dict(num_classes=2, generator=generator(0))
    with pytest.raises(ValueError, match="unknown mix kind 'mosaic'; accepted kinds: cutmix, fmix"):
        mix("mosaic", bg, fg, y, y, **kw)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        mix("cutmix", bg, fg, y, y, alpha=0.0, **kw)
    with pytest.raises(ValueError, match=r"prob must be in \[0, 1\]"):
        mix("cutmix", bg, fg, y, y, prob=1.5, **kw)
    with pytest.raises(ValueError, match="shape mismatch"):
        mix("cutmix", bg, fg[:, :, :4], y, y, **kw)
    with pytest.raises(ValueError, match="must be 4-D"):
        mix("cutmix", bg[0], fg[0], y, y, **kw)
    with pytest.raises(ValueError, match="unsupported dtype int32"):
        mix("cutmix", bg.astype(np.int32), fg.astype(np.int32), y, y, **kw)
    with pytest.raises(ValueError, match=r"y_fg has label 2 outside \[0, 2\)"):
        mix("cutmix", bg, fg, y, np.array([0, 2]), **kw)
    with pytest.raises(ValueError, match=r"y_bg must have shape \[2\]"):
        mix("cutmix", bg, fg, np.array([0]), y, **kw)
    with pytest.raises(ValueError, match="background is a numpy array but foreground is a torch"):
        mix("cutmix", bg, torch.from_numpy(fg), y, y, **kw)
    with pytest.raises(ValueError, match="dtype mismatch"):
        mix("cutmix", bg, fg.astype(np.float16), y, y, **kw)
    with pytest.raises(ValueError, match="generator must be"):
        mix("cutmix", bg, fg, y, y, num_classes=2, generator="seed")
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        mix("cutmix", bg, fg, y, y, label_smoothing=1.0, **kw)
    with pytest.raises(ValueError, match="saliencymix needs the foreground"):
        make_params("saliencymix", 2, 8, 8, generator=generator(0))
    with pytest.raises(ValueError, match="saliency method must be one of"):
        mix("saliencymix", bg, fg, y, y, saliency="itti", **kw)
    with pytest.raises(ValueError, match="fmix max_soft must be in"):
        mix("fmix", bg, fg, y, y, max_soft=0.7, **kw)
    with pytest.raises(ValueError, match="params are for B=3"):
        apply(make_params("mixup", 3, 8, 8, generator=generator(0)), bg, fg)
    with pytest.raises(ValueError, match="mode must be one of"):
        mix("cutmix", bg, fg, y, y, mode="pair", **kw)


def test_torch_targets_equal_numpy_targets_and_errors():
    p = make_params("cutmix", 6, 16, 16, generator=generator(4))
    yb, yf = np.array([0, 1, 2, 3, 4, 0]), np.array([4, 3, 2, 1, 0, 0])
    ref = soft_targets(p, yb, yf, 5, label_smoothing=0.1)
    out = soft_targets(p, torch.from_numpy(yb), torch.from_numpy(yf).int(), 5, label_smoothing=0.1)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-7)
    with pytest.raises(ValueError, match=r"y_fg has label 5 outside \[0, 5\)"):
        soft_targets(p, torch.from_numpy(yb), torch.from_numpy(yf + 1), 5)
    with pytest.raises(ValueError, match="y_bg must hold integer class ids"):
        soft_targets(p, torch.zeros(6), torch.from_numpy(yf), 5)


def test_fmix_torch_mask_builder_exact_counts():
    """The on-device FMix builder (used for CUDA tensors) run on CPU: same counting rules."""
    from fastcas.mix.fmix import _counts, _masks_torch

    drawn = np.array([0.0, 0.3, 0.77, 1.0])
    noise = generator(3).standard_normal((4, 16, 11, 2), dtype=np.float32)
    for max_soft in (0.0, 0.1):
        num, soft = _counts(drawn, 16 * 20, max_soft)
        m = _masks_torch(noise, 16, 20, 3.0, num, soft, torch.device("cpu")).numpy()
        assert m.shape == (4, 16, 20) and m.dtype == np.float32
        np.testing.assert_allclose((1 - m).reshape(4, -1).sum(1), num, atol=1e-4)
        if max_soft:
            assert ((m > 0) & (m < 1)).any()
        else:
            assert set(np.unique(m)) <= {0.0, 1.0}


def test_cmo_two_stream_paste_targets():
    """CMO: background from the uniform stream, foreground from the rebalanced stream."""
    rng = np.random.default_rng(0)
    bg = rng.random((6, 3, 16, 16), dtype=np.float32)
    fg = rng.random((6, 3, 16, 16), dtype=np.float32) + 2.0  # distinguishable pixels
    y_bg, y_fg = np.zeros(6, np.int64), np.full(6, 9)
    img, t, p = mix("cutmix", bg, fg, y_bg, y_fg, num_classes=10, prob=0.5, alpha=1.0,
                    generator=generator(1), return_params=True)
    from_fg = (img >= 2.0).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(t[:, 9], from_fg, atol=1e-6)
    np.testing.assert_allclose(t[:, 0], p.lam, atol=1e-6)
