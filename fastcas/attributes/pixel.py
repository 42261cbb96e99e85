"""The weight-free pixel encoder: 12 low-level primaries binned into named secondaries.

Computed with torch on the images' device from batches [B, 3, H, W] (uint8 in [0, 255] or
float in [0, 1]) plus the original image sizes (width, height) from the JPEG headers. Bins are
fixed (``BINS`` below: ``np.digitize`` edges, value == edge goes to the upper bin) so training
and validation sets agree. Measurements (luma Y = 0.299 R + 0.587 G + 0.114 B, all in [0, 1]):

- dominant colour: the palette entry (``PALETTE``, 12 names) nearest (RGB L2) to most pixels
- brightness: mean Y;  saturation: mean HSV saturation (max-min)/max;  contrast: std of Y
- colourfulness: Hasler & Suesstrunk (2003) M = sigma_rgyb + 0.3 mu_rgyb, on [0, 1] scale
- sharpness: variance of the 4-neighbour Laplacian of Y
- edge density: share of pixels with central-difference gradient magnitude > 0.1
- dominant edge orientation: gradient-magnitude-weighted histogram over 4 directions
  ("no dominant edges" when edge density <= 0.01)
- texture coarseness: 4 x mean gradient magnitude at 1/4 scale / mean at full scale
- entropy: Shannon entropy (bits) of the 32-bin Y histogram
- aspect ratio: original width / height;  resolution: original shorter side in pixels
"""
from __future__ import annotations

import math

import numpy as np

PALETTE = {  # name -> RGB in [0, 1]
    "black": (0, 0, 0), "white": (1, 1, 1), "gray": (0.5, 0.5, 0.5), "red": (0.85, 0.1, 0.1),
    "orange": (1, 0.55, 0), "yellow": (0.95, 0.9, 0.1), "green": (0.1, 0.6, 0.15), "cyan": (0.1, 0.8, 0.85),
    "blue": (0.1, 0.25, 0.85), "purple": (0.5, 0.15, 0.6), "pink": (1, 0.6, 0.75), "brown": (0.45, 0.27, 0.1),
}

# primary -> (edges for np.digitize, secondary names); len(names) == len(edges) + 1
BINS = {
    "brightness": ([0.2, 0.4, 0.6, 0.8], ["very dark", "dark", "medium", "bright", "very bright"]),
    "saturation": ([0.1, 0.25, 0.5], ["grayscale", "muted", "moderate", "vivid"]),
    "contrast": ([0.1, 0.2, 0.3], ["flat", "low", "medium", "high"]),
    # Hasler & Suesstrunk (2003) colourfulness thresholds 15/33/45/59/82 on 0-255, here /255
    "colourfulness": ([15 / 255, 33 / 255, 45 / 255, 59 / 255, 82 / 255],
                      ["not colourful", "slightly", "moderately", "averagely", "quite", "highly"]),
    "sharpness": ([1e-4, 1e-3, 1e-2], ["blurry", "soft", "sharp", "very sharp"]),  # variance of the Laplacian
    "edge density": ([0.05, 0.15, 0.3], ["sparse", "few edges", "many edges", "dense"]),
    "texture coarseness": ([0.5, 1.5], ["fine", "medium", "coarse"]),  # coarse/fine gradient energy ratio
    "entropy": ([2.0, 3.0, 4.0], ["uniform", "simple", "varied", "complex"]),  # bits, 32-bin luma histogram
    "aspect ratio": ([0.8, 1.25], ["portrait", "square", "landscape"]),
    "resolution": ([64, 256, 512], ["thumbnail", "small", "medium", "large"]),  # shorter side, pixels
}
ORIENTATIONS = ["no dominant edges", "horizontal edges", "diagonal edges", "vertical edges", "anti-diagonal edges"]
PRIMARIES = ["dominant colour", "brightness", "saturation", "contrast", "colourfulness", "sharpness",
             "edge density", "dominant edge orientation", "texture coarseness", "entropy", "aspect ratio", "resolution"]


def secondary_names() -> list[list[str]]:
    out = []
    for p in PRIMARIES:
        if p == "dominant colour":
            out.append(list(PALETTE))
        elif p == "dominant edge orientation":
            out.append(ORIENTATIONS)
        else:
            out.append(BINS[p][1])
    return out


def _gradients(gray):
    import torch.nn.functional as F

    g = gray[:, None]
    gx = F.pad(g, (1, 1, 0, 0), mode="replicate")
    gy = F.pad(g, (0, 0, 1, 1), mode="replicate")
    dx = (gx[..., 2:] - gx[..., :-2]) / 2
    dy = (gy[..., 2:, :] - gy[..., :-2, :]) / 2
    return dx[:, 0], dy[:, 0]


def measure(images, sizes=None) -> dict:
    """Raw measurements per primary: float64 NumPy [B] each (dominant colour / orientation: ids)."""
    import torch
    import torch.nn.functional as F

    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"pixel encoder needs images [B, 3, H, W], got shape {tuple(images.shape)}")
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float().clamp(0, 1)
    B = x.shape[0]
    if sizes is None:  # no original sizes: use the decoded ones
        sizes = [(int(images.shape[3]), int(images.shape[2]))] * B
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    pal = torch.tensor(list(PALETTE.values()), dtype=x.dtype, device=x.device)  # [K, 3]
    dist = ((x[:, None] - pal[None, :, :, None, None]) ** 2).sum(2)  # [B, K, H, W]
    nearest = dist.argmin(1).reshape(B, -1)
    K = len(PALETTE)
    offs = torch.arange(B, device=x.device)[:, None]
    colour = torch.bincount((nearest + K * offs).flatten(), minlength=K * B).reshape(B, K).argmax(1)
    mx, mn = x.max(1).values, x.min(1).values
    sat = torch.where(mx > 0, (mx - mn) / mx.clamp_min(1e-6), torch.zeros_like(mx))
    rg, yb = r - g, 0.5 * (r + g) - b
    colourful = (rg.flatten(1).std(1) ** 2 + yb.flatten(1).std(1) ** 2).sqrt() + 0.3 * (
        rg.flatten(1).mean(1) ** 2 + yb.flatten(1).mean(1) ** 2).sqrt()
    lap_k = torch.tensor([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=x.dtype, device=x.device)[None, None]
    lap = F.conv2d(F.pad(luma[:, None], (1, 1, 1, 1), mode="replicate"), lap_k)[:, 0]
    dx, dy = _gradients(luma)
    mag = (dx ** 2 + dy ** 2).sqrt()
    edges = (mag > 0.1).float().flatten(1).mean(1)
    angle = torch.atan2(dy, dx) % math.pi  # [0, pi)
    sector = ((angle + math.pi / 8) // (math.pi / 4)).long() % 4  # 0 horiz grad (vertical edge) ...
    hist = torch.stack([(mag * (sector == s)).flatten(1).sum(1) for s in range(4)], 1)
    # gradient along x (sector 0) means a vertical edge; map sectors to edge orientations
    edge_of_sector = torch.tensor([3, 4, 1, 2], device=x.device)
    orient = torch.where(edges > 0.01, edge_of_sector[hist.argmax(1)], torch.zeros_like(edges, dtype=torch.long))
    small = F.avg_pool2d(luma[:, None], 4, ceil_mode=True)[:, 0]
    sdx, sdy = _gradients(small)
    fine_e = mag.flatten(1).mean(1).clamp_min(1e-6)
    coarse_e = (sdx ** 2 + sdy ** 2).sqrt().flatten(1).mean(1)
    lbin = (luma * 32).long().clamp_(0, 31).flatten(1)  # 32 equal bins on [0, 1]
    hist_l = torch.bincount((lbin + 32 * offs).flatten(), minlength=32 * B).reshape(B, 32).double()
    p = hist_l / hist_l.sum(1, keepdim=True).clamp_min(1)
    entropy = -(p * torch.log2(p.clamp_min(1e-12))).sum(1)
    sizes = np.asarray(sizes, np.float64).reshape(B, 2)
    to = lambda t: t.double().cpu().numpy()
    return {
        "dominant colour": to(colour), "brightness": to(luma.flatten(1).mean(1)), "saturation": to(sat.flatten(1).mean(1)),
        "contrast": to(luma.flatten(1).std(1)), "colourfulness": to(colourful),
        "sharpness": to(lap.flatten(1).var(1)), "edge density": to(edges), "dominant edge orientation": to(orient),
        "texture coarseness": to(coarse_e / fine_e * 4), "entropy": to(entropy),
        "aspect ratio": sizes[:, 0] / np.maximum(sizes[:, 1], 1), "resolution": sizes.min(1),
    }


class PixelEncoder:
    """``encode(images, sizes=None) -> int64 NumPy [B, 12]`` secondary ids, one column per primary.

    ``images``: torch [B, 3, H, W] uint8 or float in [0, 1], any device (computed there);
    ``sizes``: original (width, height) per image, int [B, 2] (default: the batch's H, W).
    Deterministic: the same pixels give the same ids."""

    name = "pixel"
    primaries = PRIMARIES

    def metadata(self) -> dict:
        return {"encoder": "pixel", "primaries": PRIMARIES, "secondaries": secondary_names(), "version": 1}

    def encode(self, images, sizes=None) -> np.ndarray:
        import torch

        if images.device.type == "cpu":
            # many small ops: intra-op threads only add synchronisation cost (100x slower on a
            # busy 2-core machine); run single-threaded and restore the caller's setting
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                m = measure(images, sizes)
            finally:
                torch.set_num_threads(threads)
        else:
            m = measure(images, sizes)
        cols = []
        for p in PRIMARIES:
            if p in BINS:
                cols.append(np.digitize(m[p], BINS[p][0]))
            else:
                cols.append(m[p].astype(np.int64))
        return np.stack(cols, 1).astype(np.int64)
