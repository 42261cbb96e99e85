"""Transform options of the Loader (fastcas.loading.transforms, docs/loader-options.md) on CPU DALI.

Each option is checked by what it must do to the pixels: flat-colour PNGs make the expected
values exact (mean/std, colour jitter, erasing), framed images show what a crop keeps (crop_pct,
the cifar policy's evaluation), and a padded border shows the cifar crop's offset. The draws are
read from the policy (keyed by position) and compared with the pixels DALI produced.
"""
from __future__ import annotations

import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nvidia.dali")

from fastcas import Loader  # noqa: E402
from fastcas.dataset.shards import RawSample, ShardWriterConfig, write_shards  # noqa: E402
from fastcas.loading.config import LoaderConfig  # noqa: E402
from fastcas.loading.transforms import AugmentPolicy  # noqa: E402
from tests.helpers import collect, make_dataset  # noqa: E402

pytestmark = pytest.mark.dali
FLAT = (200, 100, 50)
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.1)
CPU = dict(py_workers=0, device="cpu")


def png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def framed(w: int, h: int, frame: int) -> np.ndarray:
    """uint8 [h, w, 3]: blue inside, a red frame ``frame`` pixels wide."""
    img = np.zeros((h, w, 3), np.uint8)
    img[...] = (0, 0, 255)
    img[:frame], img[-frame:], img[:, :frame], img[:, -frame:] = (255, 0, 0), (255, 0, 0), (255, 0, 0), (255, 0, 0)
    return img


def write(root, images, labels=None):
    labels = [i % 2 for i in range(len(images))] if labels is None else labels
    samples = [RawSample(f"k{i:03d}", png(im), lab) for i, (im, lab) in enumerate(zip(images, labels))]
    write_shards(samples, root, ShardWriterConfig(shard_size=4, class_names=("a", "b")))
    return root


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    """8 flat-colour 16 x 16 PNGs (every pixel FLAT)."""
    img = np.broadcast_to(np.array(FLAT, np.uint8), (16, 16, 3))
    return write(tmp_path_factory.mktemp("flat") / "ds", [img] * 8)


@pytest.fixture(scope="module")
def textured(tmp_path_factory):
    root = tmp_path_factory.mktemp("tex") / "ds"
    make_dataset(root, counts=(6, 6), size=(40, 32), seed=5)
    return root


def unnormalise(x: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    """[B, 3, H, W] normalised -> [B, 3, H, W] pixel values 0..255 (float)."""
    m, s = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
    return (x * s + m) * 255


def first_positions(loader, step=0):
    return loader.positions(step)


# -- mean / std --------------------------------------------------------------------------------
@pytest.mark.parametrize("train", [True, False])
def test_mean_std_give_pixels_minus_mean_over_std(flat, train):
    loader = Loader(flat, 4, image_size=8, mean=MEAN, std=STD, train=train, **CPU)
    images = torch.cat([b[0] for b in collect(loader)])
    want = (torch.tensor(FLAT, dtype=torch.float32) / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(images, want[None, :, None, None].expand_as(images), atol=1e-5, rtol=0)


# -- evaluation crops ----------------------------------------------------------------------------
def edges_red(x: torch.Tensor) -> dict:
    """Which edges of a [3, S, S] image (ImageNet-normalised) are red (the frame)."""
    px = unnormalise(x, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    red = (px[0] > 128) & (px[2] < 128)
    return {"top": bool(red[0].all()), "bottom": bool(red[-1].all()), "left": bool(red[:, 0].all()),
            "right": bool(red[:, -1].all()), "centre": bool(red[red.shape[0] // 2, red.shape[1] // 2])}


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """A 64 x 48 image and a 64 x 64 image, each with a red frame 4 px wide around blue."""
    return write(tmp_path_factory.mktemp("frames") / "ds", [framed(64, 48, 4), framed(64, 64, 4)])


def eval_images(ds, **kw):
    return torch.cat([b[0] for b in collect(Loader(ds, 2, train=False, image_size=16, **CPU, **kw))])


def test_cifar_evaluation_resizes_the_whole_image(frames):
    wide = eval_images(frames, augment="cifar")[0]
    assert edges_red(wide) == {"top": True, "bottom": True, "left": True, "right": True, "centre": False}
    # the imagenet policy's centre crop (shorter side 18, 24 x 18 -> 16 x 16) cuts the left and right frame
    cropped = edges_red(eval_images(frames)[0])
    assert not cropped["left"] and not cropped["right"]


def test_crop_pct_sets_the_centre_crop(frames):
    # square image: crop_pct 1 resizes to 16 and keeps the frame (1 px at 16); 0.5 resizes to 32 and
    # keeps the centre 16 x 16, far inside the frame (2 px at 32)
    full = edges_red(eval_images(frames, crop_pct=1.0)[1])
    half = edges_red(eval_images(frames, crop_pct=0.5)[1])
    assert full == {"top": True, "bottom": True, "left": True, "right": True, "centre": False}
    assert half == {"top": False, "bottom": False, "left": False, "right": False, "centre": False}


# -- the cifar policy's padded crop --------------------------------------------------------------
def test_cifar_crop_pads_at_the_drawn_offset(flat):
    S, pad = 16, 4
    loader = Loader(flat, 4, image_size=S, augment="cifar", padding=pad, epoch_length=32, seed=2, **CPU)
    policy = loader.config.transforms
    shifts = []
    for step, (images, _) in enumerate(collect(loader)):
        assert images.shape == (4, 3, S, S)
        shift = policy.draws(loader.config.seed, 0, 0, loader.positions(step), S)["shift"]
        np.testing.assert_array_equal(loader.plan(step)["augment"][0]["shift"], shift)  # what plan() reports
        px = unnormalise(images, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        padded = (px.abs() < 0.5).all(1)  # zero pixels: the padding (the image is FLAT everywhere)
        for k, (ay, ax) in enumerate(shift.astype(int)):
            rows, cols = np.arange(S)[:, None] + ay, np.arange(S)[None, :] + ax
            outside = (rows < 0) | (rows >= S) | (cols < 0) | (cols >= S)
            assert np.array_equal(padded[k].numpy(), outside), f"step {step} sample {k} anchor {(ay, ax)}"
        shifts.append(shift)
    shifts = np.concatenate(shifts)
    assert shifts.min() == -pad and shifts.max() == pad and (shifts == 0).all(1).sum() < len(shifts)


def test_cifar_policy_decodes_the_whole_image(textured):
    loader = Loader(textured, 4, image_size=16, augment="cifar", epoch_length=8, **CPU)
    assert all((w == np.array([0, 0, 1, 1], np.float32)).all() for w in loader.plan(0)["windows"][0])


# -- RandomResizedCrop options and interpolation -------------------------------------------------
def test_scale_and_ratio_set_the_crop_windows(textured):
    full = Loader(textured, 4, image_size=16, scale=(1, 1), ratio=(40 / 32, 40 / 32), epoch_length=8, **CPU)
    np.testing.assert_allclose(full.plan(0)["windows"][0], np.tile([0, 0, 1, 1], (4, 1)))
    small = Loader(textured, 4, image_size=16, scale=(0.1, 0.2), epoch_length=8, **CPU).plan(0)["windows"][0]
    area = small[:, 2] * small[:, 3]
    assert ((area > 0.09) & (area < 0.21)).all()


def test_interpolation_changes_the_resampler_not_the_windows(textured):
    kw = dict(image_size=16, epoch_length=8, seed=1, **CPU)
    lin, cub = Loader(textured, 4, **kw), Loader(textured, 4, interpolation="bicubic", **kw)
    np.testing.assert_array_equal(lin.plan(0)["windows"][0], cub.plan(0)["windows"][0])
    a, b = collect(lin)[0][0], collect(cub)[0][0]
    assert not torch.equal(a, b) and (a - b).abs().mean() < 0.2  # same crop, another filter


# -- colour jitter and random erasing --------------------------------------------------------------
def test_brightness_jitter_scales_each_sample_by_its_drawn_factor(flat):
    loader = Loader(flat, 4, image_size=8, color_jitter=(0.4, 0, 0), epoch_length=8, mean=MEAN, std=STD, **CPU)
    factors = []
    for step, (images, _) in enumerate(collect(loader)):
        b = loader.config.transforms.draws(loader.config.seed, 0, 0, loader.positions(step), 8)["jitter"][:, 0]
        px = unnormalise(images).mean((2, 3))
        want = np.clip(np.array(FLAT)[None, :] * b[:, None], 0, 255)
        np.testing.assert_allclose(px.numpy(), want, atol=1.01)
        factors.extend(b)
    assert 0.6 <= min(factors) < max(factors) <= 1.4 and np.ptp(factors) > 0.1


@pytest.mark.parametrize("remode", ["const", "rand", "pixel"])
def test_random_erasing_fills_exactly_the_drawn_rectangle(flat, remode):
    S = 16
    loader = Loader(
        flat, 4, image_size=S, reprob=0.75, remode=remode, epoch_length=16, mean=MEAN, std=STD, seed=4, **CPU
    )
    policy = loader.config.transforms
    field = torch.from_numpy(policy.noise_field(loader.config.seed, S)).permute(2, 0, 1)
    plain = ((torch.tensor(FLAT) / 255 - torch.tensor(MEAN)) / torch.tensor(STD)).float()[:, None, None]
    erased_count = 0
    for step, (images, _) in enumerate(collect(loader)):
        d = policy.draws(loader.config.seed, 0, 0, loader.positions(step), S)
        for k, (y, x, h, w) in enumerate(d["erase"].astype(int)):
            want = plain.expand(3, S, S).clone()
            if h:
                erased_count += 1
                if remode == "const":
                    fill = torch.zeros(3, h, w)
                elif remode == "rand":
                    fill = torch.from_numpy(d["efill"][k, :3])[:, None, None].expand(3, h, w)
                else:
                    oy, ox = d["efill"][k, 3:5].astype(int)
                    fill = field[:, oy + y:oy + y + h, ox + x:ox + x + w]
                want[:, y:y + h, x:x + w] = fill
            torch.testing.assert_close(images[k], want, atol=1e-4, rtol=0)
    assert 6 <= erased_count <= 15  # p = 0.75 of 16 (and some rectangles never fit)


# -- AutoAugment family ----------------------------------------------------------------------------
@pytest.mark.parametrize("aa", ["rand-m9-n2", "trivialaugment", "autoaugment"])
def test_auto_augment_is_keyed_by_position(textured, aa):
    """Changing the batch size keeps every position's pixels (the op/magnitude/sign choices are
    drawn from the position, not from DALI's RNG), so the stream is resumable and elastic."""
    kw = dict(image_size=16, epoch_length=8, seed=7, auto_augment=aa, **CPU)
    by4 = torch.cat([b[0] for b in collect(Loader(textured, 4, **kw))])
    by2 = torch.cat([b[0] for b in collect(Loader(textured, 2, **kw))])
    plain = torch.cat([b[0] for b in collect(Loader(textured, 4, **{**kw, "auto_augment": None}))])
    assert torch.equal(by4, by2)
    assert not torch.equal(by4, plain)


# -- mixing: the MixUp/CutMix switch and the schedule ---------------------------------------------
def mixed_batches(ds, **kw):
    return collect(Loader(ds, 4, image_size=16, epoch_length=16, seed=9, mix_in_pipeline=False, **CPU, **kw))


@pytest.mark.parametrize("switch_prob,kind,alpha", [(0.0, "mixup", 0.4), (1.0, "cutmix", 2.0)])
def test_switch_prob_zero_or_one_gives_one_kind(textured, switch_prob, kind, alpha):
    opts = {"switch_prob": switch_prob, "mixup_alpha": 0.4, "cutmix_alpha": 2.0}
    got = mixed_batches(textured, mix="mixup_cutmix", mix_options=opts)
    want = mixed_batches(textured, mix=kind, alpha=alpha)
    for (xg, tg), (xw, tw) in zip(got, want):
        assert torch.equal(xg, xw) and torch.equal(tg, tw)


def test_switch_draws_one_kind_per_batch(textured):
    loader = Loader(textured, 4, image_size=16, epoch_length=64, seed=3, mix="mixup_cutmix", **CPU)
    kinds = [loader.plan(step)["params"].kind for step in range(len(loader))]
    assert set(kinds) == {"mixup", "cutmix"}
    again = Loader(textured, 4, image_size=16, epoch_length=64, seed=3, mix="mixup_cutmix", **CPU)
    assert kinds == [again.plan(step)["params"].kind for step in range(len(again))]


@pytest.mark.parametrize("in_pipeline", [True, False])
def test_schedule_mixes_only_inside_its_window(textured, in_pipeline):
    kw = dict(image_size=16, epoch_length=8, seed=2, mix_in_pipeline=in_pipeline, **CPU)
    loader = Loader(textured, 4, mix="cutmix", mix_prob=1.0, mix_start_epoch=1, mix_stop_epoch=2, **kw)
    plain = Loader(textured, 4, targets="hard", **kw)  # class ids to one-hot below (training defaults to soft)
    for epoch in range(3):
        loader.set_epoch(epoch)
        plain.set_epoch(epoch)
        got, ref = collect(loader), collect(plain)
        onehot = all(torch.equal(t, torch.nn.functional.one_hot(y, 2).float()) for (_, t), (_, y) in zip(got, ref))
        same = all(torch.equal(x, xr) for (x, _), (xr, _) in zip(got, ref))
        assert got[0][1].shape == (4, 2)
        assert onehot == same == (epoch != 1), f"epoch {epoch}"


# -- resume with every option --------------------------------------------------------------------
def test_resume_with_the_transform_options_gives_the_identical_stream(textured):
    kw = dict(image_size=16, epoch_length=16, seed=5, augment="cifar", color_jitter=0.3, auto_augment="rand-m5-n1",
              reprob=0.5, remode="pixel", mix="mixup_cutmix", **CPU)
    full = collect(Loader(textured, 4, **kw))
    first = Loader(textured, 4, **kw)
    head = collect(first, 2)
    resumed = Loader(textured, 4, **kw)
    resumed.load_state_dict(first.state_dict())
    tail = collect(resumed)
    assert len(head) + len(tail) == len(full)
    for (x, t), (xf, tf) in zip(head + tail, full):
        assert torch.equal(x, xf) and torch.equal(t, tf)


def test_resume_refuses_other_transform_options_mid_epoch(textured):
    first = Loader(textured, 4, image_size=16, epoch_length=16, color_jitter=0.3, **CPU)
    collect(first, 1)
    other = Loader(textured, 4, image_size=16, epoch_length=16, color_jitter=0.2, **CPU)
    with pytest.raises(ValueError, match="transforms"):
        other.load_state_dict(first.state_dict())


# -- validation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("opts,match", [
    (dict(augment="svhn"), "unknown augment policy 'svhn'"),
    (dict(mean=(0.5, 0.5)), "mean must be 3"),
    (dict(std=(0.2, 0, 0.2)), "std > 0"),
    (dict(scale=(0.5, 0.1)), "scale must satisfy"),
    (dict(interpolation="area"), "unknown interpolation 'area'"),
    (dict(crop_pct=1.5), "crop_pct must be in"),
    (dict(reprob=2), "reprob must be a probability"),
    (dict(remode="noise"), "unknown remode 'noise'"),
    (dict(color_jitter=-1), "color_jitter must be >= 0"),
    (dict(auto_augment="rand-m9-mstd0.5"), "only the m<int> and n<int>"),
    (dict(auto_augment="augmix"), "unknown auto_augment 'augmix'"),
    (dict(auto_augment="rand-m9-n5"), "need 1 <= n <= 4"),
    (dict(mix="mixup_cutmix", mix_options={"switch_prob": 1.5}), "switch_prob must be in"),
    (dict(mix="mixup_cutmix", mix_options={"cutmix_alpha": 0}), "cutmix_alpha must be > 0"),
    (dict(mix="cutmix", mix_start_epoch=3, mix_stop_epoch=2), "mix_stop_epoch must be None or an integer >= "),
])
def test_bad_transform_options_name_the_option(opts, match):
    with pytest.raises(ValueError, match=match):
        LoaderConfig(batch_size=2, **opts)


def test_policy_object_and_overrides():
    base = AugmentPolicy(name="cifar", padding=2)
    cfg = LoaderConfig(batch_size=2, augment=base, crop_pct=0.9)
    assert cfg.transforms == AugmentPolicy(name="cifar", padding=2, crop_pct=0.9)
    assert LoaderConfig(batch_size=2).transforms == AugmentPolicy()


def test_the_torchvision_baseline_refuses_what_it_cannot_reproduce(textured):
    from fastcas.loading.baseline import TorchvisionLoader

    loader = TorchvisionLoader(textured, 4, image_size=16, augment="cifar", epoch_length=8, py_workers=0, device="cpu")
    with pytest.raises(ValueError, match="TorchvisionLoader reproduces the imagenet policy.*not: cifar"):
        next(iter(loader))


# -- the cifar policy at native size equals the reference transforms exactly ------------------------
@pytest.fixture(scope="module")
def native(tmp_path_factory):
    """6 random 32 x 32 PNGs (CIFAR's size), and their pixels."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(6)]
    return write(tmp_path_factory.mktemp("native") / "ds", images), images


def normalised(px: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 [H, W, 3] -> ToTensor + Normalize, float32 [3, H, W]."""
    t = torch.from_numpy(px).permute(2, 0, 1).float() / 255
    return (t - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def test_cifar_policy_at_native_size_is_the_reference_crop_and_flip(native):
    """naver-ai/cmo cifar_train.py: RandomCrop(32, padding=4) + RandomHorizontalFlip + Normalize in
    training, Normalize alone in evaluation; at S = 32 the resize is the identity, so the pixels
    equal NumPy's pad + crop + flip at the drawn offset and flip, exactly."""
    from fastcas.loading.transforms import CIFAR_MEAN, CIFAR_STD

    ds, images = native
    kw = dict(image_size=32, augment="cifar", mean=CIFAR_MEAN, std=CIFAR_STD, **CPU)
    evals = torch.cat([b[0] for b in collect(Loader(ds, 3, train=False, **kw))])
    for k, px in enumerate(images):
        torch.testing.assert_close(evals[k], normalised(px, CIFAR_MEAN, CIFAR_STD), atol=1e-6, rtol=0)
    loader = Loader(ds, 3, epoch_length=12, seed=8, **kw)
    for step, (x, _) in enumerate(collect(loader)):
        plan = loader.plan(step)
        shift = loader.config.transforms.draws(loader.config.seed, 0, 0, plan["positions"], 32)["shift"]
        for k, (i, flip, (ay, ax)) in enumerate(zip(plan["indices"][0], plan["flips"][0], shift.astype(int))):
            px = images[int(i)][:, ::-1] if flip else images[int(i)]
            padded = np.pad(px, ((4, 4), (4, 4), (0, 0)))
            want = padded[4 + ay:4 + ay + 32, 4 + ax:4 + ax + 32]
            torch.testing.assert_close(x[k], normalised(np.ascontiguousarray(want), CIFAR_MEAN, CIFAR_STD),
                                       atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["cutmix", "fmix", "saliencymix"])
def test_in_graph_mixing_sees_the_transformed_images(textured, kind):
    """The policy's transforms run per stream before the in-graph paste: the graph's mixed batches
    equal torch's mix of the transformed, unmixed images (mix_in_pipeline=False), bit for bit."""
    kw = dict(image_size=16, epoch_length=8, seed=6, augment="cifar", color_jitter=0.3, auto_augment="rand-m7-n1",
              mix=kind, **CPU)
    graph, torch_path = collect(Loader(textured, 4, **kw)), collect(Loader(textured, 4, mix_in_pipeline=False, **kw))
    for (xg, tg), (xt, tt) in zip(graph, torch_path):
        assert torch.equal(xg, xt)
        torch.testing.assert_close(tg, tt)
