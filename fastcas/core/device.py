"""Host-to-device copies that never make the host wait: the one place fastcas does them.

Used by the loader's hand-off (:func:`fastcas.loading.pipeline.to_device`) and by the mixing code's
device paths (:mod:`fastcas.mix.fmix`, :mod:`fastcas.mix.saliency`). Shared utility: imports
only torch (lazily) and NumPy.
"""
from __future__ import annotations

import numpy as np


def to_device(tensor, device):
    """``tensor`` on ``device``. Host -> GPU goes through pinned memory with
    ``non_blocking=True``: no host synchronisation (a pageable copy would wait), ordered on
    torch's current stream (torch keeps the pinned buffer alive until the copy has run).
    Unchanged when already there."""
    import torch

    device = torch.device(device)
    if tensor.device == device:
        return tensor
    if tensor.device.type == "cpu" and device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def array_to_device(array, device, dtype=None):
    """A host NumPy array as a torch tensor on ``device`` (``dtype`` converted on the host),
    through :func:`to_device`; a zero-copy view when ``device`` is the CPU and no conversion
    is needed."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(array))
    if dtype is not None:
        t = t.to(dtype)
    return to_device(t, device)
