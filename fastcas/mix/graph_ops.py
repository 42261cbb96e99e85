"""Mixing inside the DALI graph on the CPU: the per-sample functions DALI's Numba operator runs
(SaliencyMix's saliency peak and box, FMix's bit-mask select).

:mod:`fastcas.loading.pipeline` (the only module that imports DALI) wraps these plain functions with
``nvidia.dali.plugin.numba``'s ``numba_function`` (CPU, one call per sample on DALI's thread
pool); this module imports no DALI, so the tests call the same functions through ``numba.njit``.
Each function's first arguments are its outputs, then its inputs, as that operator calls them.

The graph (CPU pipelines; see :func:`fastcas.loading.pipeline.build_pipeline`)::

    images uint8 [S, S, 3] (decoded, resized, flipped)
      -> saliency_centre          -> centre int32 [2] (y, x): first maximum of the sample's own
                                     fine-grained saliency map (:mod:`fastcas.mix.finegrained`)
      -> permute_batch(centre_ids) -> the centre of each sample's foreground
      -> saliency_paste(unmixed multi_paste arguments, half, centre)
                                  -> multi_paste anchors / shapes, and lam, for the box
      -> multi_paste(images, ...)  -> the foreground's box copied at the same place

The saliency is the map of the sample's **uint8 pixels** (RGB as decoded, the HWC image
before normalisation). It equals the torch path (:func:`fastcas.mix.device.saliency_params`
on the loader's de-normalised pixels, :func:`pixels_u8`) bit for bit, and it is exactly
OpenCV's ``StaticSaliencyFineGrained`` of that image, which is what the SaliencyMix reference
calls. (The reference hands OpenCV the *normalised float* tensor, but OpenCV's fine-grained code
does not treat float input as the picture: the same pixel values stored as float32 give another
map (measured on a 224 px photo: the peak moves from flat index 15414 to 1041), so no faithful
float variant exists; the decoded 8-bit picture is the image the saliency of a photo is defined
on. fastcas before 2026-12 min-max scaled the normalised floats to 8 bits instead.)

Why Numba operators in the graph (measured on the 2-core box):
after the pipeline, SaliencyMix cost a float32 gather of the partner images, a float32 blend
and the saliency on the prefetch thread (~20 ms of CPU a batch of 32, more under load with
torch's intra-op threads); in the graph the saliency runs on DALI's threads beside decoding
(~0.19 ms an image on the 2-core AMD EPYC) and the paste is a uint8 box copy, as for CutMix.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from numba import njit

from ._finegrained_cpu import _grey_map, grey_hwc, scratch
from .params import box_rule

_box_rule = njit(box_rule)  # the one box rule (fastcas.mix.params.clip_box), compiled for scalars


@njit
def _clip(value, low, high):
    """``clip`` of one scalar, the argument :func:`fastcas.mix.params.box_rule` takes in Numba."""
    return min(max(value, low), high)


@dataclass(frozen=True)
class NumbaOp:
    """One per-sample function of this module as DALI's CPU Numba operator wants it declared:
    ``run`` (outputs first, then inputs) and its ``setup`` (output shapes), the numpy dtype names
    of its outputs and inputs and their dimensions. :func:`fastcas.loading.pipeline` builds (and
    caches) the operator from it; a mix kind's graph fragment names the op it calls
    (:mod:`fastcas.mix.kinds`)."""

    run: Callable
    setup: Callable
    out_types: tuple
    in_types: tuple
    outs_ndim: tuple
    ins_ndim: tuple


def saliency_centre_setup(outs, ins):
    """Output shapes of :func:`saliency_centre`: ``[2]`` per sample (DALI's setup callback:
    ``outs[output][sample][dim]``)."""
    for i in range(len(outs[0])):
        outs[0][i][0] = 2


def saliency_centre(centre, image, need):
    """centre int32 ``[2]`` <- the ``(y, x)`` of the first maximum (raster order) of the
    fine-grained saliency map of image uint8 ``[H, W, C]`` (C-contiguous HWC, C = 1 or 3),
    taken as it is (no min-max scaling): :func:`fastcas.mix._finegrained_cpu.finegrained_batch`
    with ``raw`` and ``nhwc``, for one sample (scratch is per call: DALI runs samples on
    several threads at once). ``need`` int32 ``[1]``: 0 when no box is centred on this sample
    (not a mixed sample's foreground; in batch mode all but one): the map is skipped and the
    centre is ``(0, 0)``."""
    if need[0] == 0:
        centre[0] = 0
        centre[1] = 0
        return
    h = image.shape[0]
    w = image.shape[1]
    if h == 0 or w == 0:
        centre[0] = 0
        centre[1] = 0
        return
    g0, g1, integ, widths, gf, son, soff = scratch(h, w)
    grey_hwc(image, g0)  # straight from the uint8 pixels, as the twin does for channels-last images
    arg = _grey_map(g0, g1, integ, widths, gf, son, soff, np.empty((h, w), dtype=np.int32))
    centre[0] = arg // w
    centre[1] = arg % w


def saliency_paste_setup(outs, ins):
    """Output shapes of :func:`saliency_paste`: anchors and shapes ``[2, 2]``, lam ``[1]``.
    (DALI wants a setup callback whenever outputs and inputs differ in number; it reads the
    shapes of as many inputs as there are outputs, so the outputs must not outnumber them.)"""
    for i in range(len(outs[0])):
        outs[0][i][0] = 2
        outs[0][i][1] = 2
        outs[1][i][0] = 2
        outs[1][i][1] = 2
        outs[2][i][0] = 1


def saliency_paste(anchors, shapes, lam, anchors0, shapes0, lam0, half, centre):
    """``multi_paste`` arguments and lam of one sample's SaliencyMix box.

    Inputs: ``anchors0`` / ``shapes0`` int32 ``[2, 2]`` and ``lam0`` float64 ``[1]``: the
    unmixed sample's arguments (:func:`fastcas.mix.paste_args` of an empty box: paste 0 is the
    sample itself, whole, ``shapes0[0] = (H, W)``; paste 1 empty); ``half`` int32 ``[3]``:
    ``(cut_h // 2, cut_w // 2, mixed)``; ``centre`` int32
    ``[2]``: the foreground's saliency peak ``(y, x)``.
    Outputs: the same with paste 1 the box ``[cy - cut_h // 2, cy + cut_h // 2) x [cx -
    cut_w // 2, cx + cut_w // 2)`` clipped to the image (clovaai's rule, as
    :func:`fastcas.mix.params.boxes_at`), parked empty at ``(H, W)`` when unmixed or clipped
    to nothing (DALI's GPU ``multi_paste`` never closes a zero-width paste inside the canvas);
    lam ``= 1 - area / (H W)`` in float64, as :func:`fastcas.mix.device.saliency_params`."""
    height = shapes0[0, 0]
    width = shapes0[0, 1]
    for i in range(2):
        for j in range(2):
            anchors[i, j] = anchors0[i, j]
            shapes[i, j] = shapes0[i, j]
    y0, x0, y1, x1 = _box_rule(_clip, centre[0], centre[1], half[0], half[1], height, width)
    if half[2] == 0 or y1 <= y0 or x1 <= x0:
        anchors[1, 0] = height
        anchors[1, 1] = width
        shapes[1, 0] = 0
        shapes[1, 1] = 0
        lam[0] = lam0[0]
        return
    anchors[1, 0] = y0
    anchors[1, 1] = x0
    shapes[1, 0] = y1 - y0
    shapes[1, 1] = x1 - x0
    area = np.int64(y1 - y0) * np.int64(x1 - x0)
    lam[0] = 1.0 - np.float64(area) / np.float64(np.int64(height) * np.int64(width))


def fmix_select_setup(outs, ins):
    """Output shape of :func:`fmix_select`: the background's ``[H, W, C]``."""
    for i in range(len(outs[0])):
        for d in range(3):
            outs[0][i][d] = ins[0][i][d]


def fmix_select(out, bg, fg, mask):
    """out uint8 ``[H, W, C]`` <- ``bg ^ ((bg ^ fg) & mask)``: the foreground's pixels where the
    FMix bit mask uint8 ``[H, W, 1]`` is 255, the background's where it is 0 (exact: bitwise
    on uint8). bg, fg: uint8 ``[H, W, C]``, C-contiguous. The expression of the GPU graph (DALI
    arithmetic operators), as one vectorised pass (~7 us a 224 px sample against ~100 us for
    DALI's broadcasting arithmetic on the CPU)."""
    h = bg.shape[0]
    w = bg.shape[1]
    c = bg.shape[2]
    o = out.reshape(h * w * c)
    b = bg.reshape(h * w * c)
    f = fg.reshape(h * w * c)
    m = mask.reshape(h * w)
    if c == 3:  # unrolled: LLVM vectorises the three interleaved channels
        for p in range(h * w):
            mm = m[p]
            i = 3 * p
            o[i] = b[i] ^ ((b[i] ^ f[i]) & mm)
            o[i + 1] = b[i + 1] ^ ((b[i + 1] ^ f[i + 1]) & mm)
            o[i + 2] = b[i + 2] ^ ((b[i + 2] ^ f[i + 2]) & mm)
    else:
        for p in range(h * w):
            for k in range(c):
                i = c * p + k
                o[i] = b[i] ^ ((b[i] ^ f[i]) & m[p])


def pixels_u8(images, mean, std):
    """The uint8 pixels behind normalised images: ``round(x * 255 std + 255 mean)`` per channel,
    clamped to [0, 255], as a uint8 torch tensor of the same shape and memory format on the same
    device (no host synchronisation). images: float32 / float16 ``[B, C, H, W]`` torch tensor
    normalised as ``(pixel - 255 mean) / (255 std)`` (DALI's ``crop_mirror_normalize``). Exact:
    float32 normalisation is off by ~1e-5 of a level, float16 by at most ~0.06 of a level at
    224 px ImageNet statistics, both far from the 0.5 that rounding forgives."""
    import torch  # noqa: PLC0415 (lazy: torch)

    x = images.to(torch.float32, copy=True)  # never the caller's tensor; strides kept
    for k in range(x.shape[1]):  # Python scalars: no host-to-device copy of the statistics
        x[:, k].mul_(255.0 * float(std[k])).add_(255.0 * float(mean[k]))
    return x.round_().clamp_(0, 255).to(torch.uint8)


SALIENCY_CENTRE = NumbaOp(saliency_centre, saliency_centre_setup, ("int32",), ("uint8", "int32"), (1,), (3, 1))
SALIENCY_PASTE = NumbaOp(saliency_paste, saliency_paste_setup, ("int32", "int32", "float64"),
                         ("int32", "int32", "float64", "int32", "int32"), (2, 2, 1), (2, 2, 1, 1, 1))
FMIX_SELECT = NumbaOp(fmix_select, fmix_select_setup, ("uint8",), ("uint8", "uint8", "uint8"), (3,), (3, 3, 3))
