"""Shared test set-up.

Without a CUDA GPU, Numba CUDA kernels run in Numba's CUDA simulator; the variable must be
set before numba is first imported, hence here. GPU tests are marked ``gpu`` and skip.
"""
import os
import shutil

import pytest


def _has_cuda_gpu() -> bool:
    if shutil.which("nvidia-smi") is None and not os.path.exists("/dev/nvidia0"):
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover - torch missing or broken driver
        return False


HAS_GPU = _has_cuda_gpu()
if not HAS_GPU:
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # a marker, not a keyword: a folder named gpu is not one
            item.add_marker(skip)


# fails any test not marked gpu that resolves device="auto" or initialises CUDA
from tests.cuda_guard import no_cuda_in_unmarked_tests  # noqa: E402,F401
