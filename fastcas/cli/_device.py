"""Shared CLI checks: ``--device cuda`` without a visible GPU, CAS weights without ``--scores``: both fail before any
work starts."""

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


def require_scores(weights: str | None, scores: str | None, flag: str = "--weights", recipe: str | None = None) -> None:
    """``ValueError`` naming the CLI flags (not the Python ``scores=``) when CAS weights have no
    score file."""
    if weights in ("cas", "cas-cmo") and not scores:
        where = f" (recipe {recipe} draws by {weights})" if recipe else ""
        raise ValueError(f"{flag} {weights} needs a CAS score file{where}: add --scores FILE "
                         "(made by `fastcas score DATASET --out FILE`)")
