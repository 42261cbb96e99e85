"""Dispatch of mixing by array type and device; the only module that loads ``kernels/``.

* NumPy arrays -> :mod:`fastcas.mix.reference` (or the Numba kernels with ``backend="numba"``,
  which on a machine without a GPU runs them in Numba's CUDA simulator — used by the tests).
* torch CPU tensors -> vectorised torch ops (masks built from boxes by broadcasting).
* torch CUDA tensors and CuPy arrays -> Numba CUDA kernels, one launch per batch, on the
  current torch / CuPy stream, zero-copy through ``__cuda_array_interface__``; dtypes the
  kernels do not cover (float64, bfloat16) use the torch ops on the device.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np

from fastcas.core.errors import GPU_EXTRAS, missing

from . import reference
from .params import MixParams

BACKENDS = ("auto", "numpy", "torch", "numba")
KERNEL_DTYPES = ("uint8", "float16", "float32")


def array_kind(x) -> str:
    """'numpy' | 'torch' | 'cupy' (ValueError otherwise)."""
    if isinstance(x, np.ndarray):
        return "numpy"
    mod = type(x).__module__
    if mod.startswith("torch"):
        return "torch"
    if mod.startswith("cupy"):
        return "cupy"
    raise ValueError(f"images must be numpy arrays, torch tensors or cupy arrays, got {type(x).__name__}")


def dtype_name(x) -> str:
    return str(x.dtype).replace("torch.", "")


def device_of(x) -> str:
    k = array_kind(x)
    if k == "numpy":
        return "cpu"
    if k == "cupy":
        return f"cuda:{x.device.id}"
    return str(x.device)


def _checkout_kernels_dir():
    """``kernels/`` beside the imported ``fastcas`` package when it runs from a source checkout
    (``PYTHONPATH=<repo>``, as ``benchmarks/gpu.sh`` does), else None. An installed wheel has
    ``fastcas/kernels/`` (setup.py's ``package_dir`` mapping) and no ``setup.py`` beside it."""
    import fastcas  # noqa: PLC0415 (lazy: the package imports the loader, which imports this module)

    pkg = Path(fastcas.__file__).resolve().parent
    if (pkg / "kernels" / "__init__.py").exists():
        return None  # installed: the real subpackage
    root = pkg.parent / "kernels"
    if (pkg.parent / "setup.py").exists() and (root / "__init__.py").exists():
        return root
    return None


def _import_kernels_package():
    """Import ``fastcas.kernels`` (the top-level ``kernels/`` folder of the repository) in every
    supported layout: a wheel (a real subpackage), an editable install (setuptools' finder maps
    it), and a plain checkout on ``PYTHONPATH`` with no install, where it is loaded from
    ``kernels/`` beside this ``fastcas`` (taking precedence over an editable install of another
    checkout, so the kernels always match the code calling them)."""
    root = _checkout_kernels_dir()
    if root is None or "fastcas.kernels" in sys.modules:
        return importlib.import_module("fastcas.kernels")
    spec = importlib.util.spec_from_file_location("fastcas.kernels", root / "__init__.py",
                                                  submodule_search_locations=[str(root)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["fastcas.kernels"] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules["fastcas.kernels"]
        raise
    import fastcas  # noqa: PLC0415 (lazy: the package imports the loader, which imports this module)

    fastcas.kernels = mod
    return mod


@functools.lru_cache(maxsize=1)
def _kernels():
    try:
        from numba import cuda  # noqa: F401  (simulator honoured when NUMBA_ENABLE_CUDASIM=1)
    except ImportError:
        raise missing("the CUDA mixing kernels", "numba-cuda", GPU_EXTRAS) from None

    _import_kernels_package()
    from fastcas.kernels import box_paste, mask_blend  # noqa: PLC0415 (lazy: CUDA kernels: numba)

    return box_paste, mask_blend


# ----------------------------------------------------------------------------- torch ops
def _torch_compute_dtype(dtype):
    import torch

    return torch.float64 if dtype == torch.float64 else torch.float32


def _torch_finish(v, dtype):
    import torch

    if not dtype.is_floating_point:
        v = torch.floor(v + 0.5)
    return v.to(dtype)


def apply_torch(params: MixParams, bg, fg):
    """Vectorised torch apply on the tensors' device (CPU or CUDA); returns a new tensor."""
    import torch

    dev, (b, _, h, w) = bg.device, bg.shape
    if params.boxes is not None:
        bx = torch.as_tensor(params.boxes, device=dev)
        rows = torch.arange(h, device=dev).view(1, h)
        cols = torch.arange(w, device=dev).view(1, w)
        # a box is (rows in [y0, y1)) x (cols in [x0, x1)): two small per-axis masks, one product
        in_rows = (rows >= bx[:, 0:1]) & (rows < bx[:, 2:3])          # [B, H]
        in_cols = (cols >= bx[:, 1:2]) & (cols < bx[:, 3:4])          # [B, W]
        if bg.dtype.is_floating_point:
            # lerp with weights 0 / 1 returns exactly bg / fg (finite pixels), in one vectorised
            # pass: about 3x faster than torch.where with a broadcast mask on the CPU
            wt = in_rows.to(bg.dtype)[:, None, :, None] * in_cols.to(bg.dtype)[:, None, None, :]
            return torch.lerp(bg, fg, wt)
        return torch.where(in_rows[:, None, :, None] & in_cols[:, None, None, :], fg, bg)
    ct = _torch_compute_dtype(bg.dtype)
    if params.masks is not None:
        m = torch.as_tensor(params.masks, device=dev)
        if bg.dtype.is_floating_point and not m.is_cuda and bool(((m == 0) | (m == 1)).all()):
            return torch.lerp(bg, fg, m[:, None].to(bg.dtype))  # binary masks (FMix max_soft=0): exact, as above
        m = m.to(ct)[:, None]
        v = (1 - m) * bg.to(ct) + m * fg.to(ct)
    else:
        wt = torch.as_tensor(params.lam, device=dev).to(ct).view(b, 1, 1, 1)
        v = wt * bg.to(ct) + (1 - wt) * fg.to(ct)
    return _torch_finish(v, bg.dtype)


# ----------------------------------------------------------------------------- numba kernels
def _stream_for(x, kind: str):
    from numba import cuda

    if kind == "torch":
        import torch

        return cuda.external_stream(torch.cuda.current_stream(x.device).cuda_stream)
    if kind == "cupy":
        import cupy

        return cuda.external_stream(cupy.cuda.get_current_stream().ptr)
    return 0


def _as_device(arr, like, kind):
    """Host/param array -> array on the images' device, in the images' framework."""
    if kind == "torch":
        import torch

        return torch.as_tensor(arr, device=like.device)
    if kind == "cupy":
        import cupy

        if array_kind(arr) == "torch":
            return cupy.from_dlpack(arr)
        return cupy.asarray(arr)
    return np.asarray(arr.detach().cpu().numpy() if array_kind(arr) == "torch" else arr)


def _empty_like(bg, kind):
    """The kernels' output: same shape, dtype, device and memory format (strides) as ``bg``."""
    if kind == "torch":
        import torch

        return torch.empty_like(bg, memory_format=torch.preserve_format)
    if kind == "cupy":
        import cupy

        return cupy.empty_like(bg, order="K")
    return np.empty_like(bg, order="K")


def apply_numba(params: MixParams, bg, fg, out=None):
    """Run the Numba kernels: torch CUDA tensors, CuPy arrays, or NumPy arrays (simulator)."""
    from numba import cuda

    kind = array_kind(bg)
    if dtype_name(bg) not in KERNEL_DTYPES:
        raise ValueError(f"the Numba kernels take {KERNEL_DTYPES}, got {dtype_name(bg)}")
    box_paste, mask_blend = _kernels()
    if out is None:
        out = _empty_like(bg, kind)
    b, c, h, w = bg.shape
    if b * c * h * w == 0:
        return out
    grid = (math.ceil(w / box_paste.TX), math.ceil(h / box_paste.TY), b * c)
    block = (box_paste.TX, box_paste.TY)
    # sync=False: the launch goes on the producer's (torch / CuPy) current stream, so no host
    # synchronisation is needed to order it after the work that made the inputs.
    conv = (lambda a: cuda.as_cuda_array(a, sync=False)) if kind != "numpy" else (lambda a: a)
    # no .contiguous(): the kernels index by strides, so channels-last stays channels-last
    d_out, d_bg, d_fg = conv(out), conv(bg), conv(fg)
    is_int = dtype_name(bg) == "uint8"
    stream = _stream_for(bg, kind)
    if params.boxes is not None:
        boxes = conv(_as_device(params.boxes, bg, kind))
        box_paste.box_paste[grid, block, stream](d_out, d_bg, d_fg, boxes)
    elif params.masks is not None:
        masks = _as_device(params.masks, bg, kind)
        if kind == "torch":
            import torch

            masks = masks.to(torch.float32).contiguous()
        else:
            masks = masks.astype("float32", copy=False)
        mask_blend.mask_blend[grid, block, stream](d_out, d_bg, d_fg, conv(masks), is_int)
    else:
        lam = params.lam  # host array, or a tensor already on the device (fastcas.mix.device)
        lam = lam.float() if array_kind(lam) == "torch" else lam.astype(np.float32)
        w_bg = conv(_as_device(lam, bg, kind))
        mask_blend.lam_blend[grid, block, stream](d_out, d_bg, d_fg, w_bg, is_int)
    return out


def apply(params: MixParams, bg, fg, backend: str = "auto"):
    """Mix ``fg`` into ``bg`` with ``params``; same type and device as the inputs."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    kind = array_kind(bg)
    if backend == "auto":
        if kind == "numpy":
            backend = "numpy"
        elif kind == "cupy":
            backend = "numba"
        elif bg.is_cuda and dtype_name(bg) in KERNEL_DTYPES:
            backend = "numba"
        else:
            backend = "torch"
    if backend == "numpy":
        if kind != "numpy":
            raise ValueError(f"backend='numpy' needs numpy arrays, got {kind}")
        return reference.apply_numpy(params, bg, fg)
    if backend == "torch":
        if kind != "torch":
            raise ValueError(f"backend='torch' needs torch tensors, got {kind}")
        return apply_torch(params, bg, fg)
    return apply_numba(params, bg, fg)
