"""The weight-free pixel encoder (v2): the vocabulary's primaries that pixels can measure.

Computed with torch on the images' device from batches [B, 3, H, W] (uint8 in [0, 255] or
float in [0, 1]). :meth:`PixelEncoder.measure` returns raw measurements float64 NumPy [B, P];
:mod:`fastcas.scoring.bins` turns them into secondary ids, with bins FITTED to the
training set (the default of ``fastcas score``) or fixed (``--bins fixed``, for comparing
datasets). Luma Y = 0.299 R + 0.587 G + 0.114 B, all values in [0, 1]. The foreground is
every pixel whose RGB differs from the background colour (mean of the 2-pixel border ring) by
more than 0.15 in some channel: crude on cluttered photos, exact on objects on a plain ground.

=====================  ====================================================================
vocabulary primary     measurement (``MEASURES``)
=====================  ====================================================================
color                  hue sector of the chroma-weighted mean colour (categorical:
                       achromatic when mean chroma max-min < 0.08, else red / yellow /
                       green / cyan / blue / magenta)
texture                mean gradient magnitude of Y (central differences): smooth .. rough
pattern                coarse / fine gradient energy ratio (4 x mean at 1/4 scale / full)
shape                  foreground elongation sqrt(l1 / l2) of the mask's second moments
size                   foreground area fraction
lighting               contrast: standard deviation of Y (soft .. harsh light)
brightness             mean Y
background             mean Y of the border ring (black .. white background)
count                  connected foreground components of >= 1% of the image (scipy, CPU)
occlusion              share of border-ring pixels that are foreground (cropped at the edge)
style                  colourfulness, Hasler & Suesstrunk (2003) (black-and-white .. vivid)
orientation            angle of the foreground's principal axis, degrees in [0, 180)
position in frame      distance of the foreground centroid from the image centre, / half
                       the diagonal
=====================  ====================================================================

Not measurable from pixels without a learned model (the CLIP encoder covers them):
material, viewpoint, scene, weather, time of day, pose, condition (``UNMEASURABLE``).
"""
from __future__ import annotations

import math

import numpy as np

from fastcas.scoring.bins import fixed_bins
from fastcas.scoring.primaries import MEASURES, PRIMARIES, UNMEASURABLE

FOREGROUND_DELTA = 0.15
RING = 2


def _gradients(gray):
    import torch.nn.functional as F

    g = gray[:, None]
    gx = F.pad(g, (1, 1, 0, 0), mode="replicate")
    gy = F.pad(g, (0, 0, 1, 1), mode="replicate")
    return ((gx[..., 2:] - gx[..., :-2]) / 2)[:, 0], ((gy[..., 2:, :] - gy[..., :-2, :]) / 2)[:, 0]


def _count_components(mask: np.ndarray, min_area: float) -> np.ndarray:
    """bool [B, H, W] -> float64 [B]: 8-connected components with >= min_area pixels."""
    from scipy import ndimage

    out = np.zeros(len(mask))
    structure = np.ones((3, 3), bool)
    for i, m in enumerate(mask):  # per image; ~20 us each at 64 px
        lab, n = ndimage.label(m, structure)
        if n:
            sizes = np.bincount(lab.ravel())[1:]
            out[i] = float((sizes >= min_area).sum())
    return out


def measure(images) -> np.ndarray:
    """float64 NumPy [B, len(PRIMARIES)] raw measurements, columns in :data:`PRIMARIES` order."""
    import torch
    import torch.nn.functional as F

    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"pixel encoder needs images [B, 3, H, W], got shape {tuple(images.shape)}")
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float().clamp(0, 1)
    B, _, H, W = x.shape
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    flat = lambda t: t.flatten(1)
    # colour: chroma-weighted mean of the unit hue vector (so grey pixels do not vote)
    mx, mn = x.max(1).values, x.min(1).values
    chroma = mx - mn
    hue_x = r - 0.5 * (g + b)
    hue_y = (math.sqrt(3) / 2) * (g - b)
    ang = torch.atan2(flat(hue_y * chroma).sum(1), flat(hue_x * chroma).sum(1))  # radians, red = 0
    sector = (((ang % (2 * math.pi)) + math.pi / 6) // (math.pi / 3)).long() % 6 + 1
    colour = torch.where(flat(chroma).mean(1) < 0.08, torch.zeros_like(sector), sector)
    # texture / pattern
    dx, dy = _gradients(luma)
    mag = (dx ** 2 + dy ** 2).sqrt()
    fine = flat(mag).mean(1)
    small = F.avg_pool2d(luma[:, None], 4, ceil_mode=True)[:, 0]
    sdx, sdy = _gradients(small)
    coarse = flat((sdx ** 2 + sdy ** 2).sqrt()).mean(1)
    pattern = 4 * coarse / fine.clamp_min(1e-6)
    # background colour and foreground mask
    ring = torch.ones(H, W, dtype=torch.bool, device=x.device)
    ring[RING:H - RING, RING:W - RING] = False
    bg = x[:, :, ring].mean(2)  # [B, 3]
    fg = (x - bg[:, :, None, None]).abs().amax(1) > FOREGROUND_DELTA  # [B, H, W]
    fgf = fg.float()
    area = flat(fgf).sum(1)
    size = area / (H * W)
    ys = torch.arange(H, dtype=x.dtype, device=x.device)[None, :, None]
    xs = torch.arange(W, dtype=x.dtype, device=x.device)[None, None, :]
    a = area.clamp_min(1)
    cy, cx = (fgf * ys).flatten(1).sum(1) / a, (fgf * xs).flatten(1).sum(1) / a
    dyc, dxc = ys - cy[:, None, None], xs - cx[:, None, None]
    myy, mxx = (fgf * dyc ** 2).flatten(1).sum(1) / a, (fgf * dxc ** 2).flatten(1).sum(1) / a
    mxy = (fgf * dxc * dyc).flatten(1).sum(1) / a
    tr, det = mxx + myy, mxx * myy - mxy ** 2
    disc = (tr ** 2 / 4 - det).clamp_min(0).sqrt()
    l1, l2 = tr / 2 + disc, (tr / 2 - disc).clamp_min(0)
    elong = torch.where(area > 1, (l1 / l2.clamp_min(1e-3)).sqrt().clamp_max(50), torch.ones_like(l1))
    angle = torch.rad2deg(0.5 * torch.atan2(2 * mxy, mxx - myy)) % 180  # image x axis = 0 degrees
    angle = torch.where(area > 1, angle, torch.zeros_like(angle))
    half_diag = math.hypot((H - 1) / 2, (W - 1) / 2) or 1.0
    centre = ((cy - (H - 1) / 2) ** 2 + (cx - (W - 1) / 2) ** 2).sqrt() / half_diag
    centre = torch.where(area > 0, centre, torch.zeros_like(centre))
    occl = fgf[:, ring].mean(1)
    rg, yb = r - g, 0.5 * (r + g) - b
    colourful = (flat(rg).std(1) ** 2 + flat(yb).std(1) ** 2).sqrt() + 0.3 * (
        flat(rg).mean(1) ** 2 + flat(yb).mean(1) ** 2).sqrt()
    count = _count_components(fg.cpu().numpy(), 0.01 * H * W)
    to = lambda t: t.double().cpu().numpy()
    cols = {
        "color": to(colour),
        "texture": to(fine),
        "pattern": to(pattern),
        "shape": to(elong),
        "size": to(size),
        "lighting": to(flat(luma).std(1)),
        "brightness": to(flat(luma).mean(1)),
        "background": to(luma[:, ring].mean(1)),
        "count": count,
        "occlusion": to(occl),
        "style": to(colourful),
        "orientation": to(angle),
        "position in frame": to(centre),
    }
    return np.stack([cols[p] for p in PRIMARIES], 1)


class PixelEncoder:
    """``measure(images, sizes=None) -> float64 NumPy [B, P]`` raw measurements (what
    ``fastcas score`` stores and bins once the whole training set is seen);
    ``encode(images, sizes=None) -> int64 [B, P]`` secondary ids with ``bins`` (default:
    the fixed bins of :func:`fastcas.scoring.bins.fixed_bins`).

    ``images``: torch [B, 3, H, W] uint8 or float in [0, 1], any device (computed there);
    ``sizes`` is accepted for the encoder interface and unused (v2 measures pixels only).
    Deterministic and per image: the same pixels give the same values in any batch."""

    name = "pixel"
    primaries = PRIMARIES
    version = 2

    def __init__(self, bins=None):
        self.bins = bins

    def metadata(self) -> dict:
        return {"encoder": "pixel", "primaries": PRIMARIES, "version": self.version,
                "measurements": MEASURES, "unmeasurable": UNMEASURABLE}

    def measure(self, images, sizes=None) -> np.ndarray:
        import torch

        if images.device.type != "cpu":
            return measure(images)
        # many small ops: intra-op threads only add synchronisation cost on a busy CPU
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return measure(images)
        finally:
            torch.set_num_threads(threads)

    def encode(self, images, sizes=None) -> np.ndarray:
        return (self.bins or fixed_bins()).apply(self.measure(images, sizes))
