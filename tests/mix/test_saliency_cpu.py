"""The Numba CPU twin of the fine-grained saliency (fastcas.mix._finegrained_cpu) equals the torch
definition bit for bit — maps and first-maximum argmax — on random images of many shapes and
dtypes, and OpenCV's StaticSaliencyFineGrained on real photos; the CPU default uses it."""
import numpy as np
import pytest
import torch

from fastcas.mix import finegrained
from fastcas.mix.finegrained import finegrained_argmax, finegrained_saliency

SHAPES = [(1, 1), (2, 3), (3, 2), (1, 7), (7, 1), (5, 5), (13, 29), (25, 26), (50, 49), (61, 97),
          (130, 33), (230, 225)]


def _random(rng, b, c, h, w, dtype):
    if dtype == "uint8":
        return torch.from_numpy(rng.integers(0, 256, (b, c, h, w), dtype=np.uint8))
    x = torch.from_numpy(rng.standard_normal((b, c, h, w)))
    if dtype == "quantised":  # what the loader hands over: normalised uint8 pixels, whose scaled
        # values land exactly on integers, where a rounding slip shows
        u = torch.from_numpy(rng.integers(0, 256, (b, c, h, w), dtype=np.uint8))
        return (u.float() / 255 - 0.45) / 0.225
    return x.to(getattr(torch, dtype))


def _both(x):
    t_map = finegrained_saliency(x, backend="torch")
    n_map = finegrained_saliency(x, backend="numba")
    return t_map, n_map


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("c", [1, 3])
def test_numba_maps_and_argmax_equal_the_torch_definition(shape, c):
    rng = np.random.default_rng(hash((shape, c)) % 2**32)
    for dtype in ("uint8", "float32", "quantised", "float64", "float16", "bfloat16", "int16",
                  "int32", "channels_last"):
        if dtype.startswith("int"):  # int32 values beyond 2**24: float32 would round them
            top = 2**15 if dtype == "int16" else 2**30
            x = torch.from_numpy(rng.integers(-top, top, (3, c, *shape)).astype(dtype))
        elif dtype == "channels_last":  # read in place, in channels-last order
            x = _random(rng, 3, c, *shape, "quantised").contiguous(memory_format=torch.channels_last)
        else:
            x = _random(rng, 3, c, *shape, dtype)
        t_map, n_map = _both(x)
        assert n_map.dtype == torch.int32 and n_map.shape == (3, *shape)
        torch.testing.assert_close(n_map, t_map, rtol=0, atol=0, msg=f"{dtype} {c}x{shape}")
        t_arg = finegrained_argmax(x, backend="torch")
        n_arg = finegrained_argmax(x, backend="numba")
        assert n_arg.dtype == torch.int64
        torch.testing.assert_close(n_arg, t_arg, rtol=0, atol=0, msg=f"{dtype} {c}x{shape}")


def test_argmax_is_the_first_maximum_in_raster_order():
    # maps saturate at 255, so ties are common: the centre is the FIRST 255 in raster order
    rng = np.random.default_rng(7)
    x = _random(rng, 8, 3, 64, 80, "quantised")
    maps = finegrained_saliency(x, backend="torch").reshape(8, -1)
    ties = (maps == maps.max(1, keepdim=True).values).sum(1)
    assert (ties > 1).any()  # the test exercises ties
    first = torch.tensor([int(np.flatnonzero(m == m.max())[0]) for m in maps.numpy()])
    torch.testing.assert_close(finegrained_argmax(x), first, rtol=0, atol=0)


def test_large_images_where_the_float32_integral_rounds():
    # 255 * H * W > 2**24: the float32 integral and the corner sums round; the twin rounds
    # exactly as the definition does
    x = torch.from_numpy(np.random.default_rng(3).integers(200, 256, (1, 3, 300, 280), dtype=np.uint8))
    t_map, n_map = _both(x)
    torch.testing.assert_close(n_map, t_map, rtol=0, atol=0)


def test_flat_and_empty_batches():
    flat = torch.full((2, 3, 9, 11), -1.5)
    assert (finegrained_saliency(flat, backend="numba") == 0).all()
    torch.testing.assert_close(finegrained_argmax(flat, backend="numba"), torch.zeros(2, dtype=torch.int64))
    assert finegrained_argmax(torch.zeros(0, 3, 8, 8)).shape == (0,)
    x = torch.randn(2, 3, 16, 16)
    x0 = x.clone()
    finegrained_saliency(x.double(), backend="torch")  # the input is never scaled in place
    finegrained_argmax(x)
    assert torch.equal(x, x0)


def test_cpu_default_is_the_numba_twin_and_backends_are_validated(monkeypatch):
    def boom(images):
        raise AssertionError("the torch path ran on the CPU")

    monkeypatch.setattr(finegrained, "_saliency_torch", boom)
    x = torch.randn(2, 3, 20, 24)
    assert finegrained_argmax(x).shape == (2,)
    assert finegrained_saliency(x.numpy()).shape == (2, 20, 24)
    with pytest.raises(ValueError, match="backend must be one of"):
        finegrained_argmax(x, backend="cuda")
    with pytest.raises(ValueError, match="1 or 3 channels"):
        finegrained_argmax(torch.zeros(1, 2, 8, 8))


def test_numba_equals_opencv_on_real_photos():
    cv2 = pytest.importorskip("cv2")  # noqa: F841
    from PIL import Image

    from fastcas.mix.saliency import finegrained_map
    from fastcas.tools.demo.data import shipped_photos

    paths = shipped_photos()[:12]
    if len(paths) < 4:
        pytest.skip("fewer than 4 real photos installed")
    for size in [(224, 224), (97, 61)]:
        u8 = np.stack([np.asarray(Image.open(p).convert("RGB").resize(size)).transpose(2, 0, 1)
                       for p in paths])
        for x in (torch.from_numpy(u8), (torch.from_numpy(u8).float() / 255 - 0.45) / 0.225):
            ref = np.stack([finegrained_map(img) for img in x.numpy()]).astype(np.int32)
            np.testing.assert_array_equal(finegrained_saliency(x, backend="numba").numpy(), ref)
            np.testing.assert_array_equal(finegrained_argmax(x, backend="numba").numpy(),
                                          ref.reshape(len(x), -1).argmax(1))


def test_wide_integers_are_scaled_exactly_like_the_definition():
    # int32 values just below a level boundary, which float32 would round onto the boundary
    rng = np.random.default_rng(11)
    levels = rng.integers(1, 255, (2, 3, 12, 10))
    x = torch.from_numpy((levels * 2**23 - 1).astype(np.int32))
    x[:, 0, 0, 0], x[:, 0, 0, 1] = 0, 255 * 2**23 - 1  # lo and hi
    t_map, n_map = _both(x)
    torch.testing.assert_close(n_map, t_map, rtol=0, atol=0)
    lossy = finegrained_saliency(x.float(), backend="torch")
    assert not torch.equal(lossy, t_map)  # the test input does tell float32 from float64
