"""The GPU kernels as the GPU compiles them: no FMA contraction in the
real PTX (libNVVM runs without a GPU), ``fastcas.kernels`` importable from a plain checkout, and
channels-last kept through the kernels."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numba.cuda  # noqa: F401  (module level: the simulator needs it imported early)
import numpy as np
import pytest

from fastcas.core.rng import generator
from fastcas.mix import apply, make_params

ROOT = Path(__file__).resolve().parents[2]

_PTX = r"""
import importlib.util, sys
from numba import cuda, types
spec = importlib.util.spec_from_file_location("k", sys.argv[1])
k = importlib.util.module_from_spec(spec); spec.loader.exec_module(k)
for dt in (types.uint8, types.float16, types.float32):
    img = types.Array(dt, 4, "A")
    for name, extra in (("mask_blend", types.Array(types.float32, 3, "A")),
                        ("lam_blend", types.Array(types.float32, 1, "A"))):
        ptx, _ = cuda.compile_ptx(getattr(k, name).py_func, (img, img, img, extra, types.boolean), cc=(8, 0))
        print(name, dt, "fma" if "fma." in ptx else "no-fma", "mul.rn" if "mul.rn.f32" in ptx else "")
"""


def _no_sim_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # compile only; never touch a GPU
    return env


@pytest.mark.slow
def test_blend_kernels_compile_to_ptx_without_fma_contraction():
    """NVVM contracts a*b + c*d into an FMA by default, which rounds once where the NumPy
    reference rounds twice. The kernels' real PTX (compiled by libNVVM, no GPU needed) must
    contain no FMA, so the GPU result is bitwise the reference's."""
    p = subprocess.run([sys.executable, "-c", _PTX, str(ROOT / "kernels" / "mask_blend.py")], cwd=ROOT,
                       env=_no_sim_env(), capture_output=True, text=True, timeout=300)
    if p.returncode != 0 and ("NVVM" in p.stderr or "libnvvm" in p.stderr.lower()):
        pytest.skip(f"libNVVM not available: {p.stderr.strip().splitlines()[-1]}")
    assert p.returncode == 0, p.stderr[-3000:]
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 6, p.stdout
    assert all("no-fma" in line and "mul.rn" in line for line in lines), p.stdout


def test_numba_kernels_index_channels_last_by_strides():
    """Channels-last inputs go through the kernels as they are (indexed by strides, no
    .contiguous() copies): the output keeps their strides and is bitwise the NumPy reference.
    Device arrays here are the simulator's (wrapping the strided host memory, as
    ``cuda.as_cuda_array`` wraps a torch channels-last tensor on the GPU)."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        pytest.skip("simulator device arrays (a GPU machine runs the gpu-marked kernel tests)")
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    from fastcas.mix import _backend

    box_paste, mask_blend = _backend._kernels()
    rng = np.random.default_rng(5)
    nhwc = lambda: (rng.random((3, 12, 10, 3)) * 255).astype(np.float32)  # noqa: E731
    bg, fg = nhwc().transpose(0, 3, 1, 2), nhwc().transpose(0, 3, 1, 2)  # NCHW views, channels-last strides
    grid, block = (1, 2, 3 * 3), (box_paste.TX, box_paste.TY)
    for kind in ("cutmix", "fmix", "mixup"):
        p = make_params(kind, 3, 12, 10, alpha=1.0, generator=generator(7))
        ref = apply(p, np.ascontiguousarray(bg), np.ascontiguousarray(fg), backend="numpy")
        out = _backend._empty_like(bg, "numpy")
        assert out.strides == bg.strides
        d = [FakeCUDAArray(a) for a in (out, bg, fg)]
        if kind == "cutmix":
            box_paste.box_paste[grid, block](*d, FakeCUDAArray(p.boxes.astype(np.int32)))
        elif kind == "fmix":
            mask_blend.mask_blend[grid, block](*d, FakeCUDAArray(np.asarray(p.masks, np.float32)), False)
        else:
            mask_blend.lam_blend[grid, block](*d, FakeCUDAArray(p.lam.astype(np.float32)), False)
        np.testing.assert_array_equal(out, ref)


def test_torch_output_keeps_the_inputs_memory_format():
    torch = pytest.importorskip("torch")
    from fastcas.mix import _backend

    x = torch.zeros(2, 3, 8, 8).to(memory_format=torch.channels_last)
    out = _backend._empty_like(x, "torch")
    assert out.is_contiguous(memory_format=torch.channels_last) and out.stride() == x.stride()


_IMPORT = r"""
import sys
if "--no-install" in sys.argv:  # drop the editable install's finder: a bare checkout
    sys.meta_path = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()
                     and "editable" not in getattr(f, "__name__", "").lower()]
import fastcas
from fastcas.mix import _backend
box_paste, mask_blend = _backend._kernels()
print(box_paste.__file__)
print(fastcas.kernels.__name__)
"""


@pytest.mark.parametrize("install", ["--no-install", "--editable-elsewhere"])
def test_kernels_import_from_a_plain_checkout(tmp_path, install):
    """benchmarks/gpu.sh runs from a checkout with PYTHONPATH=$PWD: fastcas.kernels must come from
    that checkout's top-level kernels/, with no install and despite an editable install of
    another checkout."""
    repo = tmp_path / "checkout"
    shutil.copytree(ROOT / "fastcas", repo / "fastcas", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "kernels", repo / "kernels", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "setup.py", repo / "setup.py")
    env = {**os.environ, "PYTHONPATH": str(repo), "NUMBA_ENABLE_CUDASIM": "1", "CUDA_VISIBLE_DEVICES": ""}
    p = subprocess.run([sys.executable, "-c", _IMPORT, install], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    path, name = p.stdout.strip().splitlines()[-2:]
    assert Path(path).resolve() == (repo / "kernels" / "box_paste.py").resolve()
    assert name == "fastcas.kernels"
