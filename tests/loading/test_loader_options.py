"""Every ``Loader`` option on CPU, checked against independent references.

* evaluation pixels equal a PIL + torchvision reference (decode, shorter side to round(S/0.875),
  centre crop, ImageNet mean/std, RGB) within a stated tolerance;
* mixed batches: the soft targets equal ``lam * onehot(y_bg) + (1 - lam) * onehot(y_fg)`` with
  ``lam`` and the partner recovered from the PIXELS (the same loader without mixing gives the
  unmixed images), for every mix kind;
* mix_prob, mix_options, dtype float16, channels_last, last_batch="pad", label smoothing without
  mixing, seed mismatch on resume, foreground_weights without mix, CAS weights ``scores ** b``,
  the corrupt-sample substitution and ``CorruptSampleError.key``.

Only public behaviour is asserted (no RNG values, no private helpers), so the tests survive a
re-keyed sample stream.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
from scipy import stats

torch = pytest.importorskip("torch")
pytest.importorskip("nvidia.dali")
TF = pytest.importorskip("torchvision.transforms.functional")

from fastcas import Loader  # noqa: E402
from fastcas.core.errors import CorruptSampleError  # noqa: E402
from fastcas.dataset.reader import ShardReader  # noqa: E402
from fastcas.dataset.shards import RawSample, ShardWriterConfig, write_shards  # noqa: E402
from tests.helpers import jpeg_bytes  # noqa: E402

pytestmark = pytest.mark.dali
NUM_CLASSES = 4
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# Measured max |DALI - PIL/torchvision| on these smooth images: 0.009 (normalised units, i.e.
# ~0.5 grey levels; resampler rounding). A 2-pixel crop shift already gives 0.5, BGR 3.1,
# missing mean/std 1.7, a squashed (not cropped) image 3.3.
EVAL_ATOL = 0.05


def smooth_jpeg(seed: int, w: int = 60, h: int = 40) -> bytes:
    """Low-frequency sinusoids, a different pattern per channel (resampler-insensitive, but
    channel order and geometry are visible)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    chans = []
    for c in range(3):
        fy, fx = rng.uniform(0.05, 0.25, 2)
        ph = rng.uniform(0, 6)
        chans.append(128 + 100 * np.sin(fx * xx + ph) * np.cos(fy * yy + c))
    img = np.clip(np.stack(chans, -1), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("opts") / "ds"
    samples = [RawSample(f"k{i:03d}", smooth_jpeg(i), i % NUM_CLASSES) for i in range(24)]
    write_shards(samples, root, ShardWriterConfig(shard_size=7, class_names=tuple("abcd")))
    return root


def collect(loader):
    return [[t.clone() for t in b] for b in loader]


def cat(batches, i):
    return torch.cat([b[i] for b in batches])


# -- evaluation pixels ---------------------------------------------------------------------------
def reference_eval(data: bytes, S: int) -> torch.Tensor:
    """Independent evaluation transform: PIL decode (RGB), torchvision resize of the shorter side
    to round(S / 0.875) (bilinear, antialias), centre crop S x S, ImageNet mean/std. [3, S, S]."""
    from PIL import Image

    x = TF.pil_to_tensor(Image.open(io.BytesIO(data)).convert("RGB")).float() / 255
    x = TF.center_crop(TF.resize(x, round(S / 0.875), antialias=True), S)
    return TF.normalize(x, MEAN, STD)


def test_eval_pixels_equal_an_independent_pil_torchvision_reference(ds):
    S = 28  # 60x40 -> 48x32 exactly, crop offsets (10, 2) exact: no half-pixel ambiguity
    r = ShardReader(ds)
    batches = collect(Loader(ds, 5, train=False, image_size=S, last_batch="partial", py_workers=0, device="cpu"))
    assert sum(len(b[1]) for b in batches) == len(r)
    images = cat(batches, 0)
    ref = torch.stack([reference_eval(bytes(r[i].data), S) for i in range(len(r))])
    assert images.shape == ref.shape == (len(r), 3, S, S)
    err = (images - ref).abs()
    assert err.max() < EVAL_ATOL, f"max |loader - reference| = {err.max():.4f}"
    assert cat(batches, 1).tolist() == r.labels.tolist()


# -- mixing: targets against the region actually applied ------------------------------------------
def recover(mixed: torch.Tensor, plain: torch.Tensor, k: int, blend: bool):
    """(partner j, foreground fraction) that explain ``mixed[k]`` from the unmixed batch:
    binary masks (cutmix/fmix/saliencymix) per pixel, MixUp as one blend weight."""
    bg, best = plain[k], None
    for j in range(len(plain)):
        fg = plain[j]
        if blend:
            d = (fg - bg).reshape(-1)
            m = float((mixed[k] - bg).reshape(-1) @ d / max(float(d @ d), 1e-12)) if j != k else 0.0
            resid = float((mixed[k] - bg - m * (fg - bg)).abs().mean())
            frac = m
        else:
            dbg = (mixed[k] - bg).abs().sum(0)
            dfg = (mixed[k] - fg).abs().sum(0)
            resid = float(torch.minimum(dbg, dfg).mean())
            frac = float((dfg < dbg).float().mean())
        if best is None or resid < best[0] - 1e-9:
            best = (resid, j, frac)
    return best


@pytest.mark.parametrize("kind", ["cutmix", "fmix", "saliencymix", "mixup"])
def test_mixed_targets_match_the_measured_region(ds, kind):
    kw = dict(image_size=16, epoch_length=32, seed=3, py_workers=0, device="cpu")
    plain = collect(Loader(ds, 8, targets="hard", **kw))  # class ids to build the expected rows
    mixed = collect(Loader(ds, 8, mix=kind, alpha=1.0, **kw))
    assert len(plain) == len(mixed) == 4
    fractions = []
    for (xp, yp), (xm, tm) in zip(plain, mixed):
        assert tm.shape == (8, NUM_CLASSES) and tm.dtype == torch.float32
        for k in range(8):
            resid, j, frac = recover(xm, xp, k, blend=kind == "mixup")
            assert resid < 1e-4, f"{kind}: sample {k} is not a mix of two batch images"
            expected = torch.zeros(NUM_CLASSES)
            expected[yp[k]] += 1 - frac
            expected[yp[j]] += frac
            torch.testing.assert_close(tm[k], expected, atol=0.03, rtol=0)
            fractions.append(frac)
    # something was actually pasted (alpha=1; SaliencyMix boxes are often clipped at the border)
    assert 0.05 < np.mean(fractions) < 0.7


def test_mix_prob_zero_one_and_half(ds):
    kw = dict(image_size=8, epoch_length=192, seed=4, py_workers=0, device="cpu")
    plain = collect(Loader(ds, 16, targets="hard", **kw))
    xp, yp = cat(plain, 0), cat(plain, 1)
    none = collect(Loader(ds, 16, mix="mixup", mix_prob=0.0, **kw))
    assert torch.equal(cat(none, 0), xp)
    torch.testing.assert_close(cat(none, 1), torch.nn.functional.one_hot(yp, NUM_CLASSES).float())
    changed = {}
    for p in (0.5, 1.0):
        xm = cat(collect(Loader(ds, 16, mix="mixup", mix_prob=p, **kw)), 0)
        changed[p] = int(((xm - xp).abs().reshape(len(xp), -1).amax(1) > 1e-6).sum())
    n = len(xp)
    # A mixed MixUp sample changes unless its partner is itself (at most 1/16 of the time with a
    # random in-batch partner, never with the g^1 pairing): so the count is Binomial(n, q) with
    # q in [p * 15/16, p].
    assert changed[1.0] >= n * 15 / 16 - 3 * np.sqrt(n * 0.06)
    # (tails of 1e-6: the bound must hold for any re-keyed stream, not for today's draws)
    lo, hi = stats.binom(n, 0.5 * 15 / 16).ppf(1e-6), stats.binom(n, 0.5).ppf(1 - 1e-6)
    assert lo <= changed[0.5] <= hi, changed


def test_mix_options_reach_the_mixer(ds):
    kw = dict(image_size=16, epoch_length=32, seed=5, py_workers=0, device="cpu")
    plain = collect(Loader(ds, 8, **kw))
    # mode="batch": one region per batch, so every sample mixed with another image has the same
    # foreground fraction
    batch = collect(Loader(ds, 8, mix="cutmix", mix_options={"mode": "batch"}, **kw))
    distinct = 0
    for (xp, _), (xm, _) in zip(plain, batch):
        fr = [recover(xm, xp, k, blend=False) for k in range(8)]
        fr = [f for _, j, f in fr if f > 0]
        distinct += len(set(np.round(fr, 6))) > 1
    assert distinct == 0
    # FMix max_soft: soft mask edges, i.e. pixels strictly between background and foreground
    soft = collect(Loader(ds, 8, mix="fmix", mix_options={"max_soft": 0.3}, **kw))
    hard = collect(Loader(ds, 8, mix="fmix", **kw))

    def blended_pixels(batches):
        total = 0
        for (xp, _), (xm, _) in zip(plain, batches):
            d = (xm[:, None] - xp[None]).abs().sum(2).amin(1)  # distance to the nearest plain image
            total += int((d > 1e-3).sum())
        return total

    assert blended_pixels(hard) == 0 and blended_pixels(soft) > 50


def test_label_smoothing_without_mixing(ds):
    kw = dict(image_size=16, epoch_length=16, seed=6, py_workers=0, device="cpu")
    (xp, yp), _ = collect(Loader(ds, 8, targets="hard", **kw))
    (xs, ts), _ = collect(Loader(ds, 8, label_smoothing=0.2, **kw))
    assert torch.equal(xs, xp) and ts.dtype == torch.float32 and ts.shape == (8, NUM_CLASSES)
    expected = torch.full((8, NUM_CLASSES), 0.2 / NUM_CLASSES)
    expected[torch.arange(8), yp] = 0.8 + 0.2 / NUM_CLASSES
    torch.testing.assert_close(ts, expected)


def test_float16_and_channels_last(ds):
    kw = dict(image_size=16, epoch_length=16, seed=7, py_workers=0, device="cpu")
    ref = collect(Loader(ds, 8, **kw))
    half = collect(Loader(ds, 8, dtype="float16", **kw))
    cl = collect(Loader(ds, 8, channels_last=True, **kw))
    for (x, y), (xh, yh), (xc, yc) in zip(ref, half, cl):
        assert xh.dtype == torch.float16 and xh.shape == x.shape
        torch.testing.assert_close(xh.float(), x, atol=4e-3, rtol=0)  # fp16 rounding of |x| < 3
        assert xc.shape == x.shape and xc.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(xc, x) and torch.equal(yh, y) and torch.equal(yc, y)
    # the mixers accept both layouts and half precision
    xm, tm = next(iter(Loader(ds, 8, mix="cutmix", dtype="float16", channels_last=True, **kw)))
    assert xm.dtype == torch.float16 and xm.shape == (8, 3, 16, 16) and tm.dtype == torch.float32


def test_last_batch_pad_repeats_real_samples(ds):
    kw = dict(train=False, image_size=16, py_workers=0, device="cpu")
    partial = collect(Loader(ds, 10, last_batch="partial", **kw))
    padded = collect(Loader(ds, 10, last_batch="pad", **kw))
    dropped = collect(Loader(ds, 10, last_batch="drop", **kw))
    assert [len(b[1]) for b in partial] == [10, 10, 4]
    assert [len(b[1]) for b in padded] == [10, 10, 10] and [len(b[1]) for b in dropped] == [10, 10]
    xp, yp = cat(partial, 0), cat(partial, 1)
    xa, ya = cat(padded, 0), cat(padded, 1)
    assert torch.equal(xa[:24], xp) and torch.equal(ya[:24], yp)
    for k in range(24, 30):  # every pad slot is a copy of a real sample of the epoch
        same = [(xp[j] == xa[k]).all() and yp[j] == ya[k] for j in range(24)]
        assert any(same)


def test_seed_mismatch_on_resume_and_foreground_without_mix(ds):
    a = Loader(ds, 4, image_size=16, epoch_length=16, seed=1, py_workers=0, device="cpu")
    b = Loader(ds, 4, image_size=16, epoch_length=16, seed=2, py_workers=0, device="cpu")
    with pytest.raises(ValueError, match="seed"):
        b.load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="foreground_weights"):
        Loader(ds, 4, foreground_weights="cmo", device="cpu")


def test_cas_weights_follow_scores_to_the_power_b(ds):
    """Delivered labels (through DALI) against the class mass of ``scores ** b``."""
    r = ShardReader(ds)
    scores = 1.0 + (np.arange(len(r)) % 5) + 3.0 * r.labels  # differs within and across classes
    b = 2.0
    loader = Loader(ds, 16, weights="cas", scores=scores, cas_power=b, image_size=8, epoch_length=640, py_workers=0,
                    seed=9, device="cpu", targets="hard")
    labels = torch.cat([y for _, y in loader]).numpy()
    assert len(labels) == 640
    w = scores ** b
    expected = np.bincount(r.labels, weights=w, minlength=NUM_CLASSES) / w.sum()
    assert stats.chisquare(np.bincount(labels, minlength=NUM_CLASSES), expected * len(labels)).pvalue > 1e-3
    # the test has power: b = 1 (or uniform weights) is rejected on the same draws
    for alt in (scores, np.ones(len(r))):
        q = np.bincount(r.labels, weights=alt, minlength=NUM_CLASSES) / alt.sum()
        assert stats.chisquare(np.bincount(labels, minlength=NUM_CLASSES), q * len(labels)).pvalue < 1e-3


# -- broken samples ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    root = tmp_path_factory.mktemp("broken") / "ds"
    samples = [RawSample(f"k{i:02d}", jpeg_bytes(i), i % 3) for i in range(12)]
    samples[5] = RawSample("k05", jpeg_bytes(5)[:150], 2)  # truncated JPEG inside a shard
    write_shards(samples, root, ShardWriterConfig(shard_size=6))
    return root


def test_corrupt_sample_is_replaced_by_the_next_readable_one(broken):
    r = ShardReader(broken)
    bad = r.keys.index("k05")
    loader = Loader(broken, 4, train=False, image_size=16, py_workers=0, last_batch="partial", device="cpu")
    with pytest.warns(RuntimeWarning, match="k05"):
        batches = collect(loader)
    x, y = cat(batches, 0), cat(batches, 1)
    assert len(y) == len(r) and loader.skipped == {"k05": 1}
    nxt = (bad + 1) % len(r)
    assert torch.equal(x[bad], x[nxt]) and y[bad] == y[nxt] == r.labels[nxt]
    others = [i for i in range(len(r)) if i != bad]
    assert y[others].tolist() == r.labels[others].tolist()


def test_strict_raises_corrupt_sample_error_with_the_key(broken):
    from fastcas.loading.source import SampleSource, SourceConfig

    strict = Loader(broken, 4, train=False, image_size=16, py_workers=0, strict=True, device="cpu")
    with pytest.raises(Exception, match="k05"):
        collect(strict)
    # the error type and its key, at the source the pipeline calls
    r = ShardReader(broken)
    src = SampleSource(SourceConfig(dataset=str(broken), streams=strict.streams, positions=len(r), strict=True,
                                    train=False))
    with pytest.raises(CorruptSampleError, match="k05") as info:
        src.fetch(r.keys.index("k05"))
    assert info.value.key == "k05"
