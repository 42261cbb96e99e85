"""Does the pixel encoder's CAS find rare attributes of other kinds? A controlled test on real images.

Images: the first ``per_class`` Fashion-MNIST training images of every class (balanced, so the
test is within-class). Common images are rendered as grey RGB (light object on black). In every
class exactly ``round(share * per_class)`` images, a seeded choice (``generator(seed, 0xA7,
kind, share, class)``), are rendered with one rare attribute of a kind (:data:`KINDS`) instead.
Then, as ``fastcas score --encoder pixel`` does with its default fitted bins:
measurements (:class:`fastcas.scoring.pixel.PixelEncoder`) -> bins fitted to this set
(:func:`fastcas.scoring.bins.fit_bins`) -> CAS (:func:`fastcas.scoring.cas.cas_scores`). Reported:
the within-class AUC of CAS, rare vs common (:func:`fastcas.tools.demo.tint.within_class_auc`),
and the rare images' share of the probability mass under CAS weights (b = 1.2) against their share
under uniform weights (exact expectations, no draws). One difference from ``fastcas score``: the
pixels are measured in memory, without the JPEG round trip of the shards.
"""
from __future__ import annotations

import numpy as np

from fastcas.core.rng import generator

SHARES = (0.02, 0.05, 0.10)


def _grey(g):
    return np.repeat(g[..., None], 3, axis=-1)


def _ink_paper(g, ink, paper):
    x = g.astype(np.float32)[..., None] / 255.0
    return np.clip(np.round((x * np.asarray(ink) + (1 - x) * np.asarray(paper)) * 255), 0, 255).astype(np.uint8)


def _stripes(g):
    yy, xx = np.mgrid[0:g.shape[0], 0:g.shape[1]]
    paper = 0.35 * (((xx + yy) // 2) % 2)  # diagonal stripes, period 4 px, on the black ground
    x = g.astype(np.float32) / 255.0
    return _grey(np.round(np.maximum(x, paper) * 255).astype(np.uint8))


def _shrink(g, factor, corner):
    from PIL import Image

    n = g.shape[0]
    m = max(1, int(round(n * factor)))
    small = np.asarray(Image.fromarray(g).resize((m, m), Image.BILINEAR))
    out = np.zeros_like(g)
    o = 0 if corner else (n - m) // 2
    out[o:o + m, o:o + m] = small
    return _grey(out)


def _blur(g):
    from scipy.ndimage import gaussian_filter

    return _grey(np.clip(np.round(gaussian_filter(g.astype(np.float32), 1.5)), 0, 255).astype(np.uint8))


# name -> uint8 [H, W] grey image -> uint8 [H, W, 3] RGB with the rare attribute
KINDS = {
    "inverted (negative)": lambda g: _grey(255 - g),
    "colour cast (orange)": lambda g: _ink_paper(g, (1.0, 0.55, 0.2), (0.12, 0.05, 0.0)),
    "background (mid-grey)": lambda g: _ink_paper(g, (1.0, 1.0, 1.0), (0.5, 0.5, 0.5)),
    "brightness (dim, x0.45)": lambda g: _grey(np.round(g * 0.45).astype(np.uint8)),
    "contrast (low, 0.35-0.65)": lambda g: _ink_paper(g, (0.65, 0.65, 0.65), (0.35, 0.35, 0.35)),
    "blur (Gaussian sigma 1.5)": _blur,
    "texture (striped ground)": _stripes,
    "scale (object at 55%)": lambda g: _shrink(g, 0.55, corner=False),
    "position (55%, top-left corner)": lambda g: _shrink(g, 0.55, corner=True),
    "orientation (rotated 90 deg)": lambda g: _grey(np.ascontiguousarray(np.rot90(g))),
}


def measure_rgb(rgb: np.ndarray, batch: int = 1000) -> np.ndarray:
    """uint8 [N, H, W, 3] -> float64 [N, P] pixel-encoder measurements (CPU)."""
    import torch

    from fastcas.scoring.pixel import PixelEncoder

    enc = PixelEncoder()
    parts = [enc.measure(torch.from_numpy(np.ascontiguousarray(rgb[i:i + batch].transpose(0, 3, 1, 2))))
             for i in range(0, len(rgb), batch)]
    return np.concatenate(parts)


def rare_mask(labels, share: float, seed: int, kind: int, share_index: int) -> np.ndarray:
    """bool [N]: exactly round(share * n_k) rare images in every class k, a keyed choice."""
    labels = np.asarray(labels)
    out = np.zeros(len(labels), bool)
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        m = int(round(share * len(idx)))
        out[generator(seed, 0xA7, kind, share_index, int(k)).choice(idx, m, replace=False)] = True
    return out


def score_kind(common_raw, rare_raw, labels, rare, b: float = 1.2) -> dict:
    """CAS with bins fitted to the mixed set; AUC and probability mass of the rare images."""
    from fastcas.sampling import weights as W
    from fastcas.scoring.bins import fit_bins
    from fastcas.scoring.cas import cas_scores
    from fastcas.tools.demo.tint import within_class_auc

    raw = np.where(rare[:, None], rare_raw, common_raw)
    attrs = fit_bins(raw).apply(raw)
    cas = cas_scores(attrs, labels)
    w = W.make("cas", labels, scores=cas, b=b)
    uniform, weighted = float(rare.mean()), float(w[rare].sum() / w.sum())
    return {"auc": within_class_auc(cas, labels, rare), "share_uniform": uniform, "share_cas": weighted,
            "ratio": weighted / uniform}


def attribute_table(images: np.ndarray, labels: np.ndarray, *, per_class: int = 600, seed: int = 0,
                    kinds=None, shares=SHARES) -> list[dict]:
    """Rows {kind, share, auc, share_uniform, share_cas, ratio}. ``images`` uint8 [N, 28, 28]
    grey, ``labels`` int [N]; the first ``per_class`` images of every class are used."""
    labels = np.asarray(labels)
    keep = np.concatenate([np.flatnonzero(labels == k)[:per_class] for k in np.unique(labels)])
    g, y = images[keep], labels[keep]
    common_raw = measure_rgb(_grey(g))
    rows = []
    for ki, name in enumerate(kinds or KINDS):
        rare_raw = measure_rgb(np.stack([KINDS[name](x) for x in g]))
        for si, share in enumerate(shares):
            rare = rare_mask(y, share, seed, ki, si)
            rows.append({"kind": name, "share": share, **score_kind(common_raw, rare_raw, y, rare)})
    return rows


def markdown_table(rows: list[dict], threshold: float = 0.9) -> str:
    shares = sorted({r["share"] for r in rows})
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    by = {(r["kind"], r["share"]): r for r in rows}
    lines = ["| attribute kind | " + " | ".join(f"AUC @ {s:.0%}" for s in shares) + " | "
             + " | ".join(f"CAS / uniform draws @ {s:.0%}" for s in shares) + " | detected |",
             "|---|" + "---|" * (2 * len(shares) + 1)]
    for k in kinds:
        aucs = [by[(k, s)]["auc"] for s in shares]
        lines.append(f"| {k} | " + " | ".join(f"{a:.3f}" for a in aucs) + " | "
                     + " | ".join(f"x{by[(k, s)]['ratio']:.2f}" for s in shares) + " | "
                     + ("yes" if min(aucs) >= threshold else "no (AUC < 0.9 at some share)") + " |")
    return "\n".join(lines)
