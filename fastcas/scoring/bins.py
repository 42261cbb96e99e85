"""Bins that turn the pixel encoder's raw measurements into secondary ids.

Fitted (the default of ``fastcas score``): per continuous primary, edges at the training
set's quantiles ``LEVELS`` (0.03, 0.10, 0.25, 0.50, 0.75, 0.90, 0.97: eight values with
shares 3/7/15/25/25/15/7/3%, so every primary has common and scarce values the way natural
attributes do), then merged until every value holds at least ``min_share`` of the set (ties
on a few discrete values collapse bins instead of leaving empty ones). Categorical primaries
(``color``) keep their measured ids. Fixed: hand-set absolute edges (``FIXED_EDGES``), the
same for every dataset, for comparing datasets.

``np.digitize`` semantics: value == edge goes to the upper bin. A validation set is binned
with the *training* set's :class:`PixelBins` (saved in the score file's metadata with a
digest; ``fastcas score --reference``). A primary that takes a single value on the fitted
set is *constant*: reported (``constant``) and left out of CAS instead of adding 1 to every
score.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from fastcas.scoring.primaries import CATEGORICAL, PRIMARIES

LEVELS = (0.03, 0.10, 0.25, 0.50, 0.75, 0.90, 0.97)
MIN_SHARE = 0.02
FIXED_EDGES = {
    "texture": [0.01, 0.03, 0.06, 0.1],
    "pattern": [0.5, 1.0, 1.5, 2.0],
    "shape": [1.25, 1.75, 2.5, 4.0],
    "size": [0.05, 0.15, 0.35, 0.6, 0.85],
    "lighting": [0.1, 0.2, 0.3],
    "brightness": [0.2, 0.4, 0.6, 0.8],
    "background": [0.2, 0.4, 0.6, 0.8],
    "count": [1.5, 2.5, 4.5],  # integer counts: 0-1, 2, 3-4, 5+
    "occlusion": [0.01, 0.1, 0.3],
    "style": [15 / 255, 33 / 255, 45 / 255, 59 / 255, 82 / 255],  # Hasler & Suesstrunk thresholds
    "orientation": [22.5, 67.5, 112.5, 157.5],
    "position in frame": [0.1, 0.25, 0.5],
}


@dataclass(frozen=True)
class PixelBins:
    """``edges[p]``: sorted edges (list of float) of primary ``primaries[p]``, or None for a
    categorical primary; ``mode`` "fitted" or "fixed"; ``constant``: primaries with one value
    on the fitted set (empty for fixed bins until :meth:`with_constant`)."""

    primaries: tuple
    edges: tuple
    mode: str = "fitted"
    constant: tuple = ()

    def __post_init__(self):
        if self.mode not in ("fitted", "fixed"):
            raise ValueError(f"bins mode must be 'fitted' or 'fixed', got {self.mode!r}")
        if len(self.primaries) != len(self.edges):
            raise ValueError(f"{len(self.primaries)} primaries but {len(self.edges)} edge lists")
        for p, e in zip(self.primaries, self.edges):
            if e is not None and any(b <= a for a, b in zip(e, e[1:])):
                raise ValueError(f"bins of {p!r} are not strictly increasing: {e}")

    def apply(self, raw) -> np.ndarray:
        """float [N, P] measurements -> int64 [N, P] secondary ids."""
        raw = np.asarray(raw, np.float64)
        if raw.ndim != 2 or raw.shape[1] != len(self.primaries):
            raise ValueError(f"measurements must be [N, {len(self.primaries)}], got shape {raw.shape}")
        cols = [raw[:, p].astype(np.int64) if e is None else np.digitize(raw[:, p], e)
                for p, e in enumerate(self.edges)]
        return np.stack(cols, 1).astype(np.int64) if cols else np.zeros((len(raw), 0), np.int64)

    def secondary_names(self) -> list[list[str]]:
        """Per primary, the value names: categorical names or value ranges ("0.12-0.3")."""
        out = []
        for p, e in zip(self.primaries, self.edges):
            if e is None:
                out.append(list(CATEGORICAL[p]))
            elif not e:
                out.append(["all"])
            else:
                f = lambda v: f"{v:.3g}"
                out.append([f"< {f(e[0])}"] + [f"{f(a)}-{f(b)}" for a, b in zip(e, e[1:])] + [f">= {f(e[-1])}"])
        return out

    def used(self) -> list[int]:
        """Column indices of the primaries that count towards CAS (the non-constant ones)."""
        return [i for i, p in enumerate(self.primaries) if p not in self.constant]

    def to_dict(self) -> dict:
        return {"primaries": list(self.primaries), "edges": [None if e is None else list(e) for e in self.edges],
                "mode": self.mode, "constant": list(self.constant), "digest": self.digest()}

    def digest(self) -> str:
        body = json.dumps({"primaries": list(self.primaries), "mode": self.mode, "constant": list(self.constant),
                           "edges": [None if e is None else [float(v) for v in e] for e in self.edges]},
                          sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict, source: str = "bins") -> "PixelBins":
        try:
            b = cls(tuple(d["primaries"]), tuple(None if e is None else tuple(float(v) for v in e) for e in d["edges"]),
                    d.get("mode", "fitted"), tuple(d.get("constant", ())))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{source}: malformed pixel bins ({exc})") from None
        if "digest" in d and d["digest"] != b.digest():
            raise ValueError(f"{source}: pixel bins digest {d['digest']} does not match their edges ({b.digest()})")
        return b

    def with_constant(self, attrs) -> "PixelBins":
        """These bins with ``constant`` set to the primaries single-valued in ``attrs`` [N, P]."""
        a = np.asarray(attrs)
        const = tuple(p for i, p in enumerate(self.primaries) if len(a) and np.unique(a[:, i]).size <= 1)
        return PixelBins(self.primaries, self.edges, self.mode, const)


def fit_edges(values, levels=LEVELS, min_share: float = MIN_SHARE) -> list[float]:
    """Quantile edges of ``values`` [N] at ``levels``, merged until every bin holds at least
    ``min_share`` of the values (the smallest bin joins its smaller neighbour first). A
    constant column gives no edges (one value)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return []
    if not 0 <= min_share < 0.5:
        raise ValueError(f"min_share must be in [0, 0.5), got {min_share}")
    edges = list(np.unique(np.quantile(v, levels)))
    need = min_share * len(v)
    while edges:
        counts = np.bincount(np.digitize(v, edges), minlength=len(edges) + 1)
        k = int(np.argmin(counts))
        if counts[k] >= need and counts[k] > 0:
            break
        # remove the edge between bin k and its smaller neighbour
        if k == 0:
            edges.pop(0)
        elif k == len(edges):
            edges.pop()
        else:
            edges.pop(k - 1 if counts[k - 1] <= counts[k + 1] else k)
    return [float(e) for e in edges]


def fit_bins(raw, primaries=PRIMARIES, levels=LEVELS, min_share: float = MIN_SHARE) -> PixelBins:
    """Bins fitted to the training measurements ``raw`` float [N, P] (columns = ``primaries``),
    with ``constant`` filled in."""
    raw = np.asarray(raw, np.float64)
    if raw.ndim != 2 or raw.shape[1] != len(primaries):
        raise ValueError(f"measurements must be [N, {len(primaries)}], got shape {raw.shape}")
    edges = tuple(None if p in CATEGORICAL else tuple(fit_edges(raw[:, i], levels, min_share))
                  for i, p in enumerate(primaries))
    b = PixelBins(tuple(primaries), edges, "fitted")
    return b.with_constant(b.apply(raw))


def fixed_bins(primaries=PRIMARIES) -> PixelBins:
    return PixelBins(tuple(primaries), tuple(None if p in CATEGORICAL else tuple(FIXED_EDGES[p]) for p in primaries),
                     "fixed")
