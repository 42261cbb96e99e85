"""SaliencyMix inside the DALI graph. The per-sample Numba functions DALI runs
(:mod:`fastcas.mix.graph_ops`) against their definitions; the de-normalisation the torch path
uses against DALI's own normalisation; and, end to end on real photos, the loader's default
SaliencyMix pastes a box that holds OpenCV's most salient pixel of the foreground."""
import io

import numpy as np
import pytest
import torch
from numba import njit
from PIL import Image

from fastcas import Loader
from fastcas import mix as mixing
from fastcas.loading.augment import IMAGENET_MEAN, IMAGENET_STD
from fastcas.mix import graph_ops
from fastcas.mix.finegrained import finegrained_argmax
from fastcas.mix.params import box_lam, boxes_at
from fastcas.mix.reference import apply_numpy
from fastcas.tools.demo.data import shipped_photos

centre_fn = njit(graph_ops.saliency_centre)  # what DALI's numba_function compiles, called directly
paste_fn = njit(graph_ops.saliency_paste)
ONE = np.ones(1, np.int32)


def _photos(size, limit=17):
    paths = shipped_photos()[:limit]
    if len(paths) < 4:
        pytest.skip("fewer than 4 real photos installed")
    return np.stack([np.asarray(Image.open(p).convert("RGB").resize(size)) for p in paths])  # NHWC uint8


@pytest.mark.parametrize("size", [(224, 224), (61, 97)])
def test_saliency_centre_is_the_first_argmax_of_opencv_on_the_pixels(size):
    cv2 = pytest.importorskip("cv2")
    x = _photos(size)
    sal = cv2.saliency.StaticSaliencyFineGrained_create()
    for img in x:
        got = np.zeros(2, np.int32)
        centre_fn(got, np.ascontiguousarray(img), ONE)
        ok, m = sal.computeSaliency(np.ascontiguousarray(img))
        ref = np.argmax((m * 255).astype(np.uint8))  # the reference's quantised map, first maximum
        assert ok and got.tolist() == [ref // img.shape[1], ref % img.shape[1]]
    # the torch definition on the same uint8 pixels (CHW view) agrees
    flat = finegrained_argmax(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    for img, f in zip(x, flat):
        got = np.zeros(2, np.int32)
        centre_fn(got, np.ascontiguousarray(img), ONE)
        assert got[0] * img.shape[1] + got[1] == f


def test_saliency_centre_of_a_flat_image_or_one_not_needed_is_the_origin():
    got = np.full(2, -1, np.int32)
    centre_fn(got, np.full((20, 30, 3), 9, np.uint8), ONE)
    assert got.tolist() == [0, 0]
    img = np.zeros((20, 30, 3), np.uint8)
    img[12, 17] = 255  # a peak away from the origin
    centre_fn(got, img, ONE)
    assert got.tolist() != [0, 0]
    centre_fn(got, img, np.zeros(1, np.int32))  # no box is centred on it: skipped
    assert got.tolist() == [0, 0]


def test_saliency_paste_is_the_clipped_box_and_its_lam():
    rng = np.random.default_rng(0)
    h, w = 40, 56
    for _ in range(300):
        cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
        lam_drawn = float(rng.random())
        cut_h, cut_w = mixing.params.cut_sizes(np.array([lam_drawn]), h, w)
        mixed = bool(rng.random() < 0.8)
        _, a0, s0 = mixing.paste_args(np.zeros((1, 4), np.int64), h, w, np.array([0]))
        anchors, shapes, lam = np.zeros((2, 2), np.int32), np.zeros((2, 2), np.int32), np.zeros(1)
        half = np.array([cut_h[0] // 2, cut_w[0] // 2, int(mixed)], np.int32)
        paste_fn(anchors, shapes, lam, a0[0], s0[0], np.ones(1), half, np.array([cy, cx], np.int32))
        box = boxes_at(np.array([cy]), np.array([cx]), cut_h, cut_w, h, w) * mixed
        _, ra, rs = mixing.paste_args(box, h, w, np.array([0]))
        np.testing.assert_array_equal(anchors, ra[0])
        np.testing.assert_array_equal(shapes, rs[0])
        assert lam[0] == box_lam(box, h, w)[0]  # exactly: the same float64 expression


def test_pixels_u8_inverts_dalis_normalisation_exactly():
    """Every uint8 value in every channel, normalised by DALI's own crop_mirror_normalize to
    float32 and float16, comes back exactly (the torch path's saliency input)."""
    from nvidia.dali import fn, pipeline_def, types

    img = np.stack([np.roll(np.arange(256), 85 * c) for c in range(3)], -1).astype(np.uint8).reshape(16, 16, 3)

    for dtype, torch_dtype in ((types.FLOAT, torch.float32), (types.FLOAT16, torch.float16)):
        @pipeline_def(batch_size=1, num_threads=1, device_id=None)
        def pipe():
            x = fn.external_source(source=lambda: [img], layout="HWC", dtype=types.UINT8)
            return fn.crop_mirror_normalize(x, mean=[255 * m for m in IMAGENET_MEAN],
                                            std=[255 * s for s in IMAGENET_STD], dtype=dtype, output_layout="CHW")

        p = pipe()
        p.build()
        out = torch.from_numpy(np.array(p.run()[0].as_tensor()))
        assert out.dtype == torch_dtype
        back = graph_ops.pixels_u8(out, IMAGENET_MEAN, IMAGENET_STD)
        assert back.dtype == torch.uint8
        np.testing.assert_array_equal(back[0].permute(1, 2, 0).numpy(), img)
        # channels-last memory stays channels-last, and the input is not modified
        cl = out.contiguous(memory_format=torch.channels_last)
        keep = cl.clone()
        back = graph_ops.pixels_u8(cl, IMAGENET_MEAN, IMAGENET_STD)
        assert back.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, keep)
        np.testing.assert_array_equal(back[0].permute(1, 2, 0).numpy(), img)


@pytest.fixture(scope="module")
def photo_ds(tmp_path_factory):
    """48 samples: crops of the real photos installed packages ship, 3 classes."""
    from fastcas.dataset.shards import RawSample, ShardWriterConfig, write_shards

    paths = shipped_photos()
    if len(paths) < 4:
        pytest.skip("fewer than 4 real photos installed")
    rng = np.random.default_rng(0)
    samples = []
    for i in range(48):
        im = Image.open(paths[i % len(paths)]).convert("RGB")
        w, h = im.size
        s = int(min(w, h) * rng.uniform(0.6, 1.0))
        x0, y0 = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
        buf = io.BytesIO()
        im.crop((x0, y0, x0 + s, y0 + s)).resize((128, 128)).save(buf, "JPEG", quality=92)
        samples.append(RawSample(f"p{i:03d}", buf.getvalue(), i % 3, None))
    root = tmp_path_factory.mktemp("photos") / "ds"
    write_shards(samples, root, ShardWriterConfig(shard_size=16, class_names=("a", "b", "c")))
    return root


def test_default_saliencymix_pastes_the_box_around_opencvs_peak_on_real_photos(photo_ds):
    """The loader's defaults (SaliencyMix in the DALI graph, fine-grained saliency): each mixed
    sample's pixels are its own with the partner's box pasted, the box holds the most salient
    pixel of the partner's image by OpenCV's StaticSaliencyFineGrained (the reference's
    method), and the targets weigh the labels by the pasted area."""
    cv2 = pytest.importorskip("cv2")
    sal = cv2.saliency.StaticSaliencyFineGrained_create()
    kw = dict(image_size=96, epoch_length=48, seed=2, device="cpu", py_workers=0)
    graph = Loader(photo_ds, 16, mix="saliencymix", **kw)
    assert graph.graph_mix  # the default path is the graph
    plain = Loader(photo_ds, 16, targets="hard", **kw)
    inside, boxes = [], 0
    for step, ((xm, tm), (xp, yp)) in enumerate(zip(graph, plain)):
        partner = mixing.pair_partner(graph.positions(step))
        fg = graph_ops.pixels_u8(xp[partner], IMAGENET_MEAN, IMAGENET_STD)
        p = mixing.make_params_at("saliencymix", 2, 0, graph.positions(step), 96, 96, foreground=fg)
        np.testing.assert_array_equal(xm.numpy(), apply_numpy(p, xp.numpy(), xp.numpy()[partner]))
        np.testing.assert_allclose(tm.numpy(), mixing.soft_targets(p, yp.numpy(), yp.numpy()[partner], 3), atol=1e-6)
        for j, (y0, x0, y1, x1) in enumerate(p.boxes):
            if y1 <= y0 or x1 <= x0:
                continue
            boxes += 1
            ok, m = sal.computeSaliency(np.ascontiguousarray(fg[j].permute(1, 2, 0).numpy()))
            peak = np.argmax((m * 255).astype(np.uint8))
            inside.append(y0 <= peak // 96 < y1 and x0 <= peak % 96 < x1)
    assert boxes >= 30
    assert np.mean(inside) >= 0.85 and all(inside)  # centred on the peak: every box holds it


@pytest.mark.parametrize("channels", [3, 1])
def test_fmix_select_takes_the_foreground_where_the_mask_is_set(channels):
    rng = np.random.default_rng(channels)
    bg = rng.integers(0, 256, (23, 17, channels), dtype=np.uint8)
    fg = rng.integers(0, 256, (23, 17, channels), dtype=np.uint8)
    mask = np.where(rng.random((23, 17, 1)) < 0.4, 255, 0).astype(np.uint8)
    out = np.zeros_like(bg)
    njit(graph_ops.fmix_select)(out, bg, fg, mask)
    np.testing.assert_array_equal(out, np.where(mask == 255, fg, bg))
