"""Paired-by-seed statistics for the reproduction's comparisons (no torch import).

Two recipes trained with the same seed see the same model initialisation and, where their
samplers agree, the same data stream, so the per-seed difference ``treatment - control`` is
the unit of analysis (a paired design): its mean, its sample sd, a two-sided Student-t
interval (n - 1 degrees of freedom) and a percentile bootstrap interval over seeds, drawn
from an explicit key (no global RNG).
"""
from __future__ import annotations

import numpy as np

from fastcas.core.rng import generator


def mean_sd(values) -> tuple[float | None, float | None]:
    """(mean, sample sd with ddof=1) of the non-None floats in ``values``; sd None for n < 2."""
    v = np.asarray([x for x in values if x is not None], np.float64)
    if v.size == 0:
        return None, None
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else None)


def paired_difference(treatment, control, *, confidence: float = 0.95, n_boot: int = 10000,
                      seed: int = 0) -> dict:
    """Statistics of d_s = treatment[s] - control[s] over seeds s (float sequences of equal length n).

    Returns a dict: ``n``, ``mean``, ``sd`` (ddof=1), ``t_low``/``t_high`` (mean ± t_{1-a/2, n-1}
    * sd / sqrt(n)), ``boot_low``/``boot_high`` (percentiles of the means of n_boot resamples of
    the n differences with replacement, drawn from ``generator(seed, 0xB0)``), ``p_value``
    (two-sided paired t-test; None where sd is 0 or n < 2) and ``exceeds_noise`` (the t
    interval excludes 0). Pairs where either value is None are dropped.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if len(treatment) != len(control):
        raise ValueError(f"paired samples differ in length: {len(treatment)} vs {len(control)}")
    from scipy import stats

    pairs = [(a, b) for a, b in zip(treatment, control) if a is not None and b is not None]
    d = np.asarray([a - b for a, b in pairs], np.float64)
    n = int(d.size)
    out = {"n": n, "mean": float(d.mean()) if n else None, "sd": None, "t_low": None, "t_high": None,
           "boot_low": None, "boot_high": None, "p_value": None, "exceeds_noise": False,
           "confidence": confidence, "differences": d.tolist()}
    if n < 2:
        return out
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / np.sqrt(n)
    means = d[generator(seed, 0xB0).integers(0, n, size=(n_boot, n))].mean(1)
    a = (1 - confidence) / 2
    out.update(sd=sd, t_low=out["mean"] - half, t_high=out["mean"] + half,
               boot_low=float(np.quantile(means, a)), boot_high=float(np.quantile(means, 1 - a)))
    if sd > 0:
        out["p_value"] = float(2 * stats.t.sf(abs(out["mean"]) / (sd / np.sqrt(n)), n - 1))
    out["exceeds_noise"] = bool(out["t_low"] > 0 or out["t_high"] < 0)
    return out
