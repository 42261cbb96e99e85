"""Per-sample sampling weights (float64 [N], >= 0, not normalised) and per-class loss weights.

Pure NumPy. Every function validates its input and raises ``ValueError`` saying what is wrong.

===================  =====================================================================
``uniform``          every sample equally likely
``cas``              w_i = CAS_i ** b (CAS paper, Sec. "Compositional Attribute Scarcity")
``cmo``              every sample of class k weighted n_k^-r (naver-ai/cmo's sampler), so class k
                     is drawn ∝ n_k^(1-r): class-balanced at r = 1; ``cmo-effective``: 1/E(k)
                     (CMO Eq. 3); ``cmo-per-class``: the literal Eq. 2 reading (class k drawn
                     ∝ n_k^-r); see :func:`cmo`
``oversample``       the importance-sampling paper's scheme (Sec. 4): every original once plus
                     random extras of each class below the threshold up to it; an epoch *plan*
                     (:func:`oversample_plan`, :class:`fastcas.sampling.plan.PlanSampler`), the epoch grows
``undersample``      the same paper's scheme: a fixed random subset, each class capped at the
                     threshold (:func:`undersample_plan`); the epoch is the subset
``oversample-expected``, ``undersample-expected``: fastcas's earlier reading, kept: weights equal
                     to the expected draws per sample of those plans, drawn with replacement
``cas_within_cmo``   CMO across classes, CAS-proportional within a class (fastcas's own)
===================  =====================================================================
"""
from __future__ import annotations

import numpy as np

from fastcas.core.rng import generator

NAMES = ("uniform", "cas", "cmo", "cmo-effective", "cmo-per-class", "oversample", "undersample", "cas-cmo",
         "oversample-expected", "undersample-expected")
#: weights that are an epoch plan (a list of indices per epoch), not per-draw probabilities
PLAN_NAMES = ("oversample", "undersample")
CMO_PER = ("sample", "class")
LOSS_WEIGHTS = ("none", "inverse", "effective", "upweight-low")


# -- validation ------------------------------------------------------------------------------
def check_weights(w, n: int | None = None, name: str = "weights") -> np.ndarray:
    """float64 copy of ``w`` after checking: 1-D, finite, >= 0, not all zero, length ``n``."""
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {w.shape}")
    if n is not None and len(w) != n:
        raise ValueError(f"{name} has {len(w)} entries but the dataset has {n} samples")
    bad = ~np.isfinite(w)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name} contain NaN or inf (first at index {i}: {w[i]})")
    if (w < 0).any():
        i = int(np.flatnonzero(w < 0)[0])
        raise ValueError(f"{name} contain negative values (first at index {i}: {w[i]})")
    if not w.any():
        raise ValueError(f"{name} are all zero: nothing can be drawn")
    return w


def _labels(labels, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(labels int64 [N] or binary [N, C], class counts int64 [C])."""
    y = np.asarray(labels)
    if y.ndim == 2:  # multi-label binary matrix
        if not np.isin(y, (0, 1)).all():
            raise ValueError("multi-label labels must be a 0/1 matrix [N, C]")
        return y.astype(bool), y.sum(axis=0).astype(np.int64)
    if y.ndim != 1 or len(y) == 0:
        raise ValueError(f"labels must be a non-empty int array [N] or 0/1 matrix [N, C], got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or (y < 0).any():
        raise ValueError("labels must be non-negative integers")
    y = y.astype(np.int64)
    return y, np.bincount(y, minlength=num_classes or 0).astype(np.int64)


# -- sampling weights ------------------------------------------------------------------------
def uniform(n: int) -> np.ndarray:
    if int(n) < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return np.ones(int(n), np.float64)


def cas(scores, b: float = 1.2) -> np.ndarray:
    """w_i = CAS_i ** b (CAS paper: b = 1.2). ``scores``: CAS per sample (>= 1: sums of ranks)."""
    s = check_weights(scores, name="CAS scores")
    if not np.isfinite(b):
        raise ValueError(f"b must be finite, got {b}")
    return check_weights(s ** float(b), name=f"CAS ** {b}")


def class_probabilities(counts, r: float = 1.0, effective: bool = False) -> np.ndarray:
    """CMO Eq. 2: q(r, k) = n_k^-r / sum_k' n_k'^-r; Eq. 3 (``effective``): q_k ∝ 1 / E(k),
    E(k) = (1 - beta^n_k) / (1 - beta), beta = (N - 1) / N. Empty classes get 0. float64 [C]."""
    n = np.asarray(counts, np.float64)
    if r < 0 or not np.isfinite(r):
        raise ValueError(f"r must be a finite number >= 0, got {r}")
    present = n > 0
    inv = np.zeros_like(n)
    if effective:
        N = n.sum()
        beta = (N - 1.0) / N
        # 1 - beta^n computed as -expm1(n*log(beta)): exact for N up to 1e9
        eff = -np.expm1(n[present] * np.log(beta)) / (1.0 - beta) if beta > 0 else n[present]
        inv[present] = 1.0 / eff
    else:
        inv[present] = n[present] ** -float(r)
    return inv / inv.sum()


def cmo(labels, r: float = 1.0, *, effective: bool = False, per: str = "sample",
        num_classes: int | None = None) -> np.ndarray:
    """Weights of CMO's foreground (minority) stream, float64 [N].

    ``per="sample"`` (default, the reference code): every sample of class k gets the weight
    q(r, k) ∝ n_k^-r (or 1/E(k) with ``effective``), exactly as naver-ai/cmo's
    ``get_weighted_sampler`` feeds ``WeightedRandomSampler``; class k is then drawn with
    probability ∝ n_k * q_k = n_k^(1-r): class-balanced at r = 1, which is what the paper's
    Table 10 discussion describes ("weights inversely proportional to the class frequency").
    The paper's Eq. 2 text reads as a *class* probability; where the paper's text and the code
    that produced its tables disagree, the code is the reference, so it is the default.
    ``per="class"``: the literal Eq. 2 reading, kept as an explicit option: class k drawn with
    probability q(r, k) itself (sample weight q_k / n_k); at r = 1 the rarest class of a
    ratio-100 set is then drawn 100x as often as the largest.
    """
    y, counts = _labels(labels, num_classes)
    if y.ndim != 1:
        raise ValueError("cmo weights need single-label labels [N]")
    q = class_probabilities(counts, r, effective)
    if per == "class":
        w = q / np.maximum(counts, 1)
    elif per == "sample":
        w = q.copy()
    else:
        raise ValueError(f"per must be 'sample' or 'class', got {per!r}")
    return w[y]


def cmo_class_probabilities(counts, r: float = 1.0, *, effective: bool = False, per: str = "sample") -> np.ndarray:
    """float64 [C]: the probability that :func:`cmo` draws class k (``per`` as there):
    ∝ n_k q_k (reference code, default) or q_k (literal Eq. 2)."""
    n = np.asarray(counts, np.float64)
    q = class_probabilities(n, r, effective)
    if per == "sample":
        q = q * n
    elif per != "class":
        raise ValueError(f"per must be 'sample' or 'class', got {per!r}")
    return q / q.sum()


def low_frequency_classes(counts, percentile: float = 25.0) -> np.ndarray:
    """bool [C]: classes whose frequency is within the ``percentile``-th percentile of all
    class frequencies (importance-sampling paper, Sec. 4: 25th percentile)."""
    counts = np.asarray(counts, np.float64)
    return counts <= np.percentile(counts, percentile)


def _resample_targets(counts: np.ndarray, threshold, mode: str) -> np.ndarray:
    if threshold is None:
        # Defaults: oversample to the largest class (balanced), undersample to the boundary of
        # the low-frequency classes (25th percentile), as the paper's thresholds approximate.
        present = counts[counts > 0]
        threshold = present.max() if mode == "over" else np.percentile(present, 25)
    threshold = float(threshold)
    if not threshold >= 1:
        raise ValueError(f"threshold must be >= 1, got {threshold}")
    return np.maximum(counts, threshold) if mode == "over" else np.minimum(counts, threshold)


def _resample(labels, threshold, mode: str) -> np.ndarray:
    y, counts = _labels(labels)
    target = _resample_targets(counts, threshold, mode)
    factor = np.where(counts > 0, target / np.maximum(counts, 1), 0.0)
    if y.ndim == 1:
        return factor[y]
    # Multi-label: an image counts for each of its classes; it is repeated as often as its
    # rarest class needs (oversampling) or kept as rarely as its most common class allows.
    f = np.where(y, factor[None, :], np.nan)
    w = np.nanmax(f, axis=1) if mode == "over" else np.nanmin(f, axis=1)
    return np.nan_to_num(w, nan=0.0)


def oversample(labels, threshold: float | None = None) -> np.ndarray:
    """Expected draws per sample when every class below ``threshold`` is raised to it and
    the others are kept (sum = the resampled epoch size). Labels [N] or 0/1 matrix [N, C].
    For the paper's exact scheme (every original at least once) see :func:`oversample_plan`."""
    return _resample(labels, threshold, "over")


def undersample(labels, threshold: float | None = None) -> np.ndarray:
    """Expected draws per sample when every class above ``threshold`` is cut to it."""
    return _resample(labels, threshold, "under")


def plan_targets(counts, threshold: float | None, mode: str) -> np.ndarray:
    """int64 [C]: samples of each class in one resampled epoch (``mode`` "over" | "under"):
    ``max(n_k, floor(t))`` or ``min(n_k, floor(t))`` (a class is resampled to a whole number of
    samples; ``t`` defaults as in :func:`oversample` / :func:`undersample`)."""
    counts = np.asarray(counts, np.int64)
    t = np.floor(_resample_targets(counts, threshold, mode).astype(np.float64)).astype(np.int64)
    return np.where(counts > 0, t, 0)


def _single_label(labels, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels int64 [N], counts int64 [C], indices sorted by class int64 [N]); single-label only."""
    y, counts = _labels(labels)
    if y.ndim != 1:
        raise ValueError(f"{what} needs single-label labels [N]")
    return y, counts, np.argsort(y, kind="stable")


def oversample_plan(labels, threshold: float | None, rng: np.random.Generator) -> np.ndarray:
    """int64 [sum_k max(n_k, floor(t))]: the indices of one oversampled epoch, the
    importance-sampling paper's scheme (Sec. 4: "before doing so, we ensure that all the images
    from those classes are included so that each image appears at least once"): every original
    once, then ``floor(t) - n_k`` extra draws with replacement from each class below the
    threshold. In a random order (``rng``). Single-label only."""
    y, counts, order = _single_label(labels, "oversample_plan")
    target = plan_targets(counts, threshold, "over")
    starts = np.concatenate([[0], np.cumsum(counts)])
    extra = [order[starts[k] + rng.integers(0, counts[k], target[k] - counts[k])]
             for k in range(len(counts)) if counts[k] > 0 and target[k] > counts[k]]
    return rng.permutation(np.concatenate([np.arange(len(y)), *extra]).astype(np.int64))


def undersample_plan(labels, threshold: float | None, rng: np.random.Generator) -> np.ndarray:
    """int64 [sum_k min(n_k, floor(t))], sorted: the importance-sampling paper's undersampled
    set (Sec. 4: "we randomly sample from classes with frequencies that exceed this threshold to
    reduce those classes to the threshold"): every sample of a class at or below the threshold,
    and a random subset without replacement of ``floor(t)`` samples of each larger class.
    Single-label only."""
    _, counts, order = _single_label(labels, "undersample_plan")
    target = plan_targets(counts, threshold, "under")
    starts = np.concatenate([[0], np.cumsum(counts)])
    parts = [order[starts[k] + np.sort(rng.choice(counts[k], target[k], replace=False))]
             if target[k] < counts[k] else order[starts[k]:starts[k + 1]]
             for k in range(len(counts)) if counts[k] > 0]
    return np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, np.int64)


_PLAN_TAG = 0x51A7  # purpose tag of the resampling plan's random draws


def make_plan(name: str, labels, *, seed: int = 0, threshold: float | None = None) -> np.ndarray:
    """int64: the epoch plan of weights ``name`` (one of :data:`PLAN_NAMES`), a pure function of
    ``(seed, labels, threshold)``. The plan is fixed for the whole run, as in the paper's code
    (the resampled set is written once, ``oversampled_rainforest.csv``, and read every epoch);
    :class:`fastcas.sampling.plan.PlanSampler` shuffles it per epoch."""
    if name not in PLAN_NAMES:
        raise ValueError(f"{name!r} is not a plan; plans: {', '.join(PLAN_NAMES)}")
    rng = generator(int(seed), _PLAN_TAG, PLAN_NAMES.index(name))
    fn = oversample_plan if name == "oversample" else undersample_plan
    return fn(labels, threshold, rng)


def _plan_expectation(labels, threshold, mode: str) -> np.ndarray:
    """Expected draws per sample of one epoch of the plan (``mode`` "over" | "under"):
    target_k / n_k for every sample of class k."""
    y, counts, _ = _single_label(labels, "a resampling plan")
    target = plan_targets(counts, threshold, mode)
    return (target / np.maximum(counts, 1))[y]


def cas_within_cmo(labels, scores, r: float = 1.0, b: float = 1.2, per: str = "sample") -> np.ndarray:
    """fastcas's own combination: classes drawn as CMO draws them (:func:`cmo_class_probabilities`,
    ``per="sample"``: ∝ n_k^(1-r), the reference code's rule); within a class, samples drawn in
    proportion to CAS ** b. p_i = P_k * CAS_i^b / sum_{j in k} CAS_j^b."""
    y, counts = _labels(labels)
    if y.ndim != 1:
        raise ValueError("cas_within_cmo needs single-label labels [N]")
    s = cas(scores, b)
    if len(s) != len(y):
        raise ValueError(f"scores have {len(s)} entries but labels have {len(y)}")
    q = cmo_class_probabilities(counts, r, per=per)
    class_sum = np.bincount(y, weights=s, minlength=len(counts))
    return q[y] * s / class_sum[y]


def make(name: str, labels, *, scores=None, b: float = 1.2, r: float = 1.0,
         threshold: float | None = None) -> np.ndarray:
    """Weights by name (one of :data:`NAMES`), checked and ready for the sampler. For the plan
    names (:data:`PLAN_NAMES`) these are the plan's expected draws per sample (its target, for
    monitors and reports); the Loader draws the plan itself (:func:`make_plan`)."""
    n = len(labels)
    if name == "uniform":
        w = uniform(n)
    elif name in ("cas", "cas-cmo"):
        if scores is None:
            raise ValueError(f"weights {name!r} need CAS scores (a score file from `fastcas score`)")
        if len(scores) != n:
            raise ValueError(f"scores have {len(scores)} entries but the dataset has {n} samples")
        w = cas(scores, b) if name == "cas" else cas_within_cmo(labels, scores, r, b)
    elif name == "cmo":
        w = cmo(labels, r)
    elif name == "cmo-effective":
        w = cmo(labels, r, effective=True)
    elif name == "cmo-per-class":
        w = cmo(labels, r, per="class")
    elif name in PLAN_NAMES and np.asarray(labels).ndim == 1:
        # a plan's target: its expected draws per sample (the Loader draws the plan itself)
        w = _plan_expectation(labels, threshold, "over" if name == "oversample" else "under")
    elif name in ("oversample", "oversample-expected"):
        w = oversample(labels, threshold)
    elif name in ("undersample", "undersample-expected"):
        w = undersample(labels, threshold)
    else:
        raise ValueError(f"unknown weights {name!r}; expected one of {', '.join(NAMES)}")
    return check_weights(w, n)


# -- loss weights ----------------------------------------------------------------------------
def loss_weights(counts, kind: str = "inverse", *, beta: float | None = None, factor: float = 2.0,
                 percentile: float = 25.0) -> np.ndarray:
    """Per-class loss weights float64 [C].

    ``inverse``: 1/n_k; ``effective``: (1 - beta)/(1 - beta^n_k) (Cui et al. 2019; beta
    default (N-1)/N; the CMO/LDAM-DRW code uses 0.9999), both normalised to sum to C as the
    reference code does (naver-ai/cmo cifar_train.py ``per_cls_weights / np.sum(per_cls_weights)
    * len(cls_num_list)``). ``upweight-low``: ``factor`` for the low-frequency classes (within
    the ``percentile``-th percentile of the class counts) and exactly 1 elsewhere, not
    normalised (importance-sampling paper, Sec. 3-4: the loss of low-frequency classes is
    multiplied by a constant, 1.5 to 10, the others are left alone). ``none``: ones.
    """
    n = np.asarray(counts, np.float64)
    C = len(n)
    if kind == "none":
        return np.ones(C)
    if kind == "upweight-low":
        if not (np.isfinite(factor) and factor > 0):
            raise ValueError(f"loss weight factor must be a finite number > 0, got {factor}")
        return np.where(low_frequency_classes(n, percentile), float(factor), 1.0)
    if kind == "inverse":
        w = np.where(n > 0, 1.0 / np.maximum(n, 1), 0.0)
    elif kind == "effective":
        beta = (n.sum() - 1) / n.sum() if beta is None else float(beta)
        if not 0 <= beta < 1:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        w = np.where(n > 0, (1 - beta) / -np.expm1(np.maximum(n, 1) * np.log(beta)) if beta > 0 else 1.0, 0.0)
    else:
        raise ValueError(f"unknown loss weights {kind!r}; expected one of {', '.join(LOSS_WEIGHTS)}")
    return w * C / w.sum()


#: effective sample size (as a fraction of N) below which :func:`concentration_warning` speaks
ESS_WARN_FRACTION = 0.01


def concentration_stats(w) -> np.ndarray:
    """float64 [4] (n, effective sample size ``(sum w)**2 / sum w**2`` (Kish), index of the
    heaviest sample, its share of the draws) of weights ``w`` (float [N], >= 0); n = 0 when
    there is nothing to judge (fewer than 2 samples, or all weights 0). One vectorised pass."""
    w = np.asarray(w, np.float64)
    n, total = len(w), float(w.sum()) if len(w) else 0.0
    if n < 2 or total <= 0:
        return np.zeros(4)
    p = w / total
    i = int(np.argmax(p))
    return np.array([n, 1.0 / float(np.dot(p, p)), i, p[i]])


def concentration_message(stats, keys=None, name: str = "weights") -> str | None:
    """The warning for :func:`concentration_stats` ``stats`` when the draws concentrate on a few
    samples: the effective sample size below :data:`ESS_WARN_FRACTION` of N (class-balanced
    weights of ImageNet-LT keep about a quarter of N), or one sample taking over half of the
    draws (N >= 4: small sets too). Names the heaviest sample (``keys[i]``). None otherwise."""
    n, ess, i, share = float(stats[0]), float(stats[1]), int(stats[2]), float(stats[3])
    if n < 2 or (ess >= ESS_WARN_FRACTION * n and not (n >= 4 and share > 0.5)):
        return None
    who = repr(keys[i]) if keys is not None else f"index {i}"
    return (f"{name}: the draws concentrate on few samples: effective sample size {ess:.1f} of {int(n)} "
            f"({ess / n:.2%}); sample {who} alone takes {share:.1%} of the draws (check the score file)")


def concentration_warning(w, keys=None, name: str = "weights") -> str | None:
    """:func:`concentration_message` of the weights ``w`` (float [N], >= 0)."""
    return concentration_message(concentration_stats(w), keys, name)
