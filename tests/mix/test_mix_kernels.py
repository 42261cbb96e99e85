"""Numba CUDA mixing kernels: under the CUDA simulator here (tiny grids), on the GPU when marked."""
from __future__ import annotations

import numba.cuda  # noqa: F401  (module level: the simulator needs it imported early)
import numpy as np
import pytest

from fastcas.core.rng import generator
from fastcas.mix import KINDS, apply, make_params, mix


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [np.uint8, np.float16, np.float32])
def test_numba_kernels_equal_numpy_reference(kind, dtype):
    rng = np.random.default_rng(0)
    bg = (rng.random((2, 3, 8, 8)) * 255).astype(dtype)
    fg = (rng.random((2, 3, 8, 8)) * 255).astype(dtype)
    opts = {"max_soft": 0.2} if kind == "fmix" else {}
    p = make_params(kind, 2, 8, 8, alpha=1.0, generator=generator(3), foreground=fg, **opts)
    ref = apply(p, bg, fg, backend="numpy")
    out = apply(p, bg, fg, backend="numba")
    assert out.dtype == bg.dtype and out.shape == bg.shape
    np.testing.assert_array_equal(out, ref)


def test_numba_box_paste_non_multiple_grid():
    bg = np.zeros((3, 1, 9, 35), np.float32)  # W > one 32-wide block, H not a multiple of 8
    fg = np.ones_like(bg)
    p = make_params("cutmix", 3, 9, 35, alpha=0.5, generator=generator(1))
    np.testing.assert_array_equal(apply(p, bg, fg, backend="numba"), apply(p, bg, fg))


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", ["uint8", "float16", "float32"])
def test_cuda_torch_equals_numpy_reference(kind, dtype):
    import torch

    rng = np.random.default_rng(1)
    bg = (rng.random((33, 3, 64, 48)) * 255).astype(dtype)
    fg = (rng.random((33, 3, 64, 48)) * 255).astype(dtype)
    p = make_params(kind, 33, 64, 48, generator=generator(2), foreground=fg)
    ref = apply(p, bg, fg)
    out = apply(p, torch.from_numpy(bg).cuda(), torch.from_numpy(fg).cuda())
    assert out.is_cuda
    # the Numba kernels are exact (explicitly rounded fmul_rn/fadd_rn, no FMA contraction)
    np.testing.assert_array_equal(out.cpu().numpy(), ref)
    torch_ops = apply(p, torch.from_numpy(bg).cuda(), torch.from_numpy(fg).cuda(), backend="torch")
    np.testing.assert_allclose(torch_ops.cpu().numpy().astype(np.float64), ref.astype(np.float64),
                               atol=1 if dtype == "uint8" else 1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_mix_end_to_end(kind):
    import torch

    bg = torch.zeros(17, 3, 32, 32, device="cuda")
    fg = torch.ones_like(bg)
    y = torch.arange(17, device="cuda") % 5
    img, t, p = mix(kind, bg, fg, y, (y + 1) % 5, num_classes=5, generator=generator(0),
                    return_params=True)
    assert img.is_cuda and t.is_cuda
    frac = img.mean(dim=(1, 2, 3)).cpu().numpy()
    np.testing.assert_allclose(p.lam, 1 - frac, atol=1e-5)
    np.testing.assert_allclose(t.sum(1).cpu().numpy(), 1, atol=1e-5)
