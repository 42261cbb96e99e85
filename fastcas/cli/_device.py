"""Shared CLI check: ``--device cuda`` without a visible GPU fails before any work starts."""
from __future__ import annotations


def require_device(device: str, flag: str = "--device") -> None:
    """``ValueError`` (printed as ``fastcas CMD: error: ...``, exit 2) when ``device`` is not
    auto / cpu / cuda[:N], or names CUDA while torch sees no GPU."""
    if device in ("auto", "cpu"):
        return
    if not (device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ValueError(f"{flag} {device!r}: expected auto, cpu or cuda")
    try:
        import torch

        available = torch.cuda.is_available()
        count = torch.cuda.device_count() if available else 0
    except ImportError:
        available, count = False, 0
    if not available:
        raise ValueError(f"{flag} {device}: no CUDA GPU is visible to torch (torch.cuda.is_available() is False); "
                         "use --device cpu, or auto to take a GPU when there is one")
    if ":" in device and int(device[5:]) >= count:
        raise ValueError(f"{flag} {device}: only {count} CUDA device(s) visible")
