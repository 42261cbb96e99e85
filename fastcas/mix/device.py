"""Mixing parameters that live where the images are: the loader's zero-host-sync path.

The random draws of a batch (lambda, mix decisions, box centres, FMix noise) are made on the
host from position keys (:func:`fastcas.mix.make_params_at`); everything after them is
deterministic. This module moves the drawn parameters to the images' device with one
host-to-device copy each (``to_device``: pinned memory, ``non_blocking``: the host never waits
for the GPU) and computes what depends on pixels — the SaliencyMix box, whose centre is the
foreground's saliency argmax — on that device with torch ops, so the steady-state loop never
reads a device value back. On the CPU the same functions run with ``device="cpu"`` (the copies
are no-ops), which is how the CPU test suite exercises the GPU's code.

:class:`DeviceParams` has :class:`~fastcas.mix.params.MixParams`'s fields as torch tensors on
one device (``mixed`` and ``drawn`` stay host arrays: they are inputs, known before any pixel),
so :func:`fastcas.mix.apply` and :func:`fastcas.mix.soft_targets` take it unchanged;
:meth:`DeviceParams.host` gives the equivalent MixParams (a host copy, for tests and reports).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .finegrained import finegrained_argmax
from .params import MixParams, clip_box, saliency_draws
from .saliency import ALIASES, _factor, saliency_centres, spectral_residual_torch


@dataclass(frozen=True)
class DeviceParams:
    """kind, height, width: as MixParams. lam: float64 [B] tensor (measured kept-background
    fraction). boxes: int32 [B, 4] tensor or None; masks: float32 [B, H, W] tensor or None;
    mixed, drawn: host NumPy arrays (bool / float64 [B])."""

    kind: str
    height: int
    width: int
    lam: Any
    mixed: np.ndarray
    boxes: Any = None
    masks: Any = None
    drawn: np.ndarray | None = None

    @property
    def batch_size(self) -> int:
        return len(self.mixed)

    def host(self) -> MixParams:
        """The same parameters as a host :class:`MixParams` (copies device values back: a host
        synchronisation, for tests and reports only)."""
        def np_(t, dtype):
            return None if t is None else t.detach().cpu().numpy().astype(dtype)

        return MixParams(self.kind, self.height, self.width, np_(self.lam, np.float64), self.mixed,
                         boxes=np_(self.boxes, np.int32), masks=np_(self.masks, np.float32),
                         drawn=self.drawn)

    def box_masks(self) -> np.ndarray:
        return self.host().box_masks()


def on_device(params: MixParams, to_device: Callable) -> DeviceParams:
    """Host MixParams -> DeviceParams, each array moved once with ``to_device`` (a callable
    taking a CPU tensor, e.g. :func:`fastcas.loading.pipeline.to_device` bound to the images' device).
    FMix masks already made on the device stay where they are."""
    import torch

    def mv(a):
        if a is None:
            return None
        if isinstance(a, torch.Tensor):
            return to_device(a) if not a.is_cuda else a
        return to_device(torch.from_numpy(np.ascontiguousarray(a)))

    return DeviceParams(params.kind, params.height, params.width, mv(params.lam), params.mixed,
                        boxes=mv(params.boxes), masks=mv(params.masks), drawn=params.drawn)


def saliency_params(seed: int, epoch: int, positions, foreground, *, alpha: float, prob: float,
                    to_device: Callable, saliency: str = "finegrained", mode: str = "elem") -> DeviceParams:
    """SaliencyMix parameters with the box computed on the foreground's device.

    Same numbers as ``make_params_at("saliencymix", ...)`` (drawn lambda and decisions keyed by
    position; box = CutMix size centred at the first saliency argmax of each foreground sample,
    clipped; lam measured from the clipped box), but the argmax, the boxes and lam never leave
    the device. foreground: [B, C, H, W] tensor (the loader passes the uint8 pixels,
    :func:`fastcas.mix.graph_ops.pixels_u8`). saliency: "finegrained" (default, the
    reference's) or "spectral"; "opencv" runs on the host (it synchronises).
    """
    import torch

    method = ALIASES.get(saliency, saliency)
    b, _, height, width = foreground.shape
    pos = np.asarray(positions, np.int64).reshape(-1)
    drawn, mixed, halves = saliency_draws(seed, epoch, pos, height, width, alpha, prob, mode)
    img = foreground[:1] if (mode == "batch" and b) else foreground
    if method == "finegrained":
        flat = finegrained_argmax(img)
        cy, cx = flat // width, flat % width
    elif method == "spectral":
        sal = spectral_residual_torch(img)
        w = sal.shape[-1]
        flat = sal.reshape(len(img), -1).argmax(dim=1)
        f = _factor(height, width)
        cy = torch.clamp((flat // w) * f + f // 2, max=height - 1)
        cx = torch.clamp((flat % w) * f + f // 2, max=width - 1)
    else:  # "opencv": the host loop of the reference (synchronises; an explicit choice)
        hy, hx = saliency_centres(img, method=method)
        cy, cx = to_device(torch.from_numpy(hy)), to_device(torch.from_numpy(hx))
    if mode == "batch":
        cy, cx = cy.expand(b), cx.expand(b)
    half = to_device(torch.from_numpy(np.ascontiguousarray(halves.T)))
    keep = to_device(torch.from_numpy(mixed))
    boxes = torch.stack(clip_box(torch, cy, cx, half[0], half[1], height, width), dim=1) * keep[:, None]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    lam = 1.0 - area.to(torch.float64) / float(height * width)
    return DeviceParams("saliencymix", height, width, lam, mixed, boxes=boxes.to(torch.int32), drawn=drawn)
