"""Reference saliency for SaliencyMix: the batched torch fine-grained saliency equals OpenCV's
StaticSaliencyFineGrained (the SaliencyMix reference's method) on real photos, and with the
default settings the reference's most salient pixel lies inside the pasted box."""
import numpy as np
import pytest
import torch
from PIL import Image

from fastcas.core.rng import generator
from fastcas.mix import make_params
from fastcas.mix.finegrained import finegrained_saliency
from fastcas.mix.saliency import finegrained_map, saliency_centres
from fastcas.tools.demo.data import shipped_photos

cv2 = pytest.importorskip("cv2")


def _photos(size, limit=12):
    """uint8 [N, 3, h, w] real photos shipped by installed packages, resized to ``size`` (w, h)."""
    paths = shipped_photos()[:limit]
    if len(paths) < 4:
        pytest.skip("fewer than 4 real photos installed")
    return np.stack([np.asarray(Image.open(p).convert("RGB").resize(size)).transpose(2, 0, 1) for p in paths])


def _opencv_maps(images):
    """The reference: OpenCV on each HWC image (float images min-max scaled to uint8 first)."""
    return np.stack([finegrained_map(img) for img in np.asarray(images)]).astype(np.int32)


@pytest.mark.parametrize("backend", ["torch", "numba"])
@pytest.mark.parametrize("size", [(224, 224), (97, 61), (33, 130)])
def test_batched_finegrained_equals_opencv_on_real_photos(size, backend):
    x = _photos(size)
    got = finegrained_saliency(torch.from_numpy(x), backend=backend).numpy()
    np.testing.assert_array_equal(got, _opencv_maps(x))  # bit-exact, every pixel


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_float_normalised_batches_and_numpy_input_match_opencv(backend):
    x = _photos((64, 48), limit=6)
    xf = (torch.from_numpy(x).float() / 255 - 0.45) / 0.225  # what the loader hands over
    ref = _opencv_maps(xf.numpy())
    np.testing.assert_array_equal(finegrained_saliency(xf, backend=backend).numpy(), ref)
    np.testing.assert_array_equal(finegrained_saliency(xf.numpy(), backend=backend).numpy(), ref)
    # a sample's map does not depend on the rest of the batch
    np.testing.assert_array_equal(finegrained_saliency(xf[2:3], backend=backend).numpy()[0], ref[2])


def test_default_saliency_centre_is_the_reference_argmax_and_inside_the_box():
    x = _photos((128, 96))
    img = (torch.from_numpy(x).float() / 255 - 0.45) / 0.225
    ref = _opencv_maps(img.numpy()).reshape(len(x), -1).argmax(1)
    cy, cx = saliency_centres(img)  # the default method
    np.testing.assert_array_equal(cy * 128 + cx, ref)
    p = make_params("saliencymix", len(x), 96, 128, alpha=1.0, generator=generator(5), foreground=img)
    ry, rx = ref // 128, ref % 128
    y0, x0, y1, x1 = p.boxes.T
    nonempty = (y1 > y0) & (x1 > x0)
    assert nonempty.sum() >= len(x) // 2
    inside = (y0 <= ry) & (ry < y1) & (x0 <= rx) & (rx < x1)
    # the bar is 85% of real photos; centring on the reference argmax gives all of them
    assert inside[nonempty].mean() >= 0.85 and inside[nonempty].all()


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_single_channel_and_flat_images(backend):
    x = _photos((40, 30), limit=4)[:, :1]
    np.testing.assert_array_equal(finegrained_saliency(torch.from_numpy(x), backend=backend).numpy(),
                                  _opencv_maps(x))
    flat = torch.full((2, 3, 20, 20), 7, dtype=torch.uint8)
    assert (finegrained_saliency(flat, backend=backend) == 0).all()
    with pytest.raises(ValueError, match="1 or 3 channels"):
        finegrained_saliency(torch.zeros(1, 2, 8, 8))


@pytest.mark.gpu
def test_finegrained_on_cuda_equals_cpu():
    x = torch.from_numpy(_photos((224, 224)))
    cpu = finegrained_saliency(x)
    gpu = finegrained_saliency(x.cuda())
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=0)
