"""Sampler inputs built once per node: the weighted sampler's CDF as a memory-mapped column
cached beside the manifest (:mod:`fastcas.dataset.derived`), named by an O(1) digest, and the
weights' concentration statistics beside it.

The digest of a weighting is ``digest(dataset digest, weights name, b, r, threshold, scores
id)`` where the scores id is the score file's SHA-256 (or a hash of a score array given in
memory): a checkpoint's ``weights_digest`` no longer hashes N values of the CDF, and 8 ranks
with their DALI workers map one CDF instead of each building an 8 B/sample copy.
"""
from __future__ import annotations

import numpy as np

from fastcas.dataset.derived import cached_array, check_vector
from fastcas.sampling import weights
from fastcas.sampling.geometry import digest


def weights_digest(reader, name: str, *, scores_id: str | None, b: float, r: float,
                   threshold: float | None = None) -> str:
    """The O(1) identity of weights ``name`` over ``reader``'s dataset (16 hex digits)."""
    uses_b = name in ("cas", "cas-cmo")
    uses_r = name.startswith("cmo") or name == "cas-cmo"
    return digest("weights/2", reader.digest, name, b if uses_b else None, r if uses_r else None,
                  threshold, scores_id if uses_b else None)


def shared_cdf(reader, name: str, *, scores=None, scores_id: str | None = None, b: float = 1.2,
               r: float = 1.0, threshold: float | None = None) -> tuple[np.ndarray | None, str]:
    """(float64 [N] memory-mapped CDF of weights ``name``, or None when the weights are all
    equal (the sampler then draws uniformly, as :class:`~fastcas.sampling.sampler.
    WeightedSampler` does for equal weights); its digest). Built by
    :func:`fastcas.sampling.weights.make` on the first call on a node, mapped afterwards."""
    if scores is not None and scores_id is None:
        scores_id = digest(np.asarray(scores, np.float64))  # an in-memory array: O(N) once
    d = weights_digest(reader, name, scores_id=scores_id, b=b, r=r, threshold=threshold)

    def build():
        w = weights.make(name, reader.labels, scores=scores, b=b, r=r, threshold=threshold)
        return np.zeros(0) if np.all(w == w[0]) else np.cumsum(w)

    n = len(reader)

    def check(a):  # an empty CDF stands for "all weights equal"
        return None if a.dtype == np.float64 and a.shape == (0,) else check_vector(a, n, cdf=True)

    cdf = cached_array(reader, f"cdf-{d}", build, check)
    return (cdf if len(cdf) else None), d


def shared_concentration(reader, cdf: np.ndarray, d: str) -> np.ndarray:
    """:func:`fastcas.sampling.weights.concentration_stats` of the weights whose CDF is ``cdf``
    (digest ``d``, from :func:`shared_cdf`): computed by the node's first process (one pass over
    N), then 32 bytes cached beside the CDF, so later ranks do not each re-read N values."""
    return cached_array(
        reader,
        f"ess-{d}",
        lambda: weights.concentration_stats(np.diff(cdf, prepend=0.0)),
        lambda a: check_vector(a, 4) or (None if a[0] in (0, len(cdf)) else f"n = {a[0]}, not {len(cdf)}"),
    )
