"""SaliencyMix on CuPy input: CuPy forbids the implicit host conversion
``np.asarray`` needs, so CuPy arrays go to the torch twin through DLPack. A duck with CuPy's
module name and CuPy's refusal stands in for CuPy here (no GPU)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fastcas.mix.saliency import saliency_centres  # noqa: E402


class FakeCupyArray:
    """What saliency_centres may touch on a cupy.ndarray: shape, dtype, DLPack; no __array__."""

    __module__ = "cupy._core.core"

    def __init__(self, t):
        self._t = t
        self.shape, self.dtype = tuple(t.shape), t.dtype

    def __array__(self, *a, **k):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()`")

    def __dlpack__(self, *a, **k):
        return self._t.__dlpack__(*a, **k)

    def __dlpack_device__(self):
        return self._t.__dlpack_device__()

    def __len__(self):
        return len(self._t)


def test_cupy_input_goes_to_the_torch_twin_not_numpy():
    rng = np.random.default_rng(0)
    x = torch.from_numpy((rng.random((3, 3, 48, 40)) * 255).astype(np.float32))
    x[1, :, 30:36, 5:11] += 400  # a clear peak
    want = saliency_centres(x)
    got = saliency_centres(FakeCupyArray(x))
    assert all(np.array_equal(g, w) for g, w in zip(got, want))
    assert isinstance(got[0], np.ndarray) and got[0].dtype == np.int64


def test_saliencymix_params_from_a_cupy_foreground():
    from fastcas.core.rng import generator
    from fastcas.mix import make_params

    rng = np.random.default_rng(1)
    fg = torch.from_numpy((rng.random((4, 3, 32, 32)) * 255).astype(np.float32))
    a = make_params("saliencymix", 4, 32, 32, generator=generator(3), foreground=fg)
    b = make_params("saliencymix", 4, 32, 32, generator=generator(3), foreground=FakeCupyArray(fg))
    assert np.array_equal(a.boxes, b.boxes)
