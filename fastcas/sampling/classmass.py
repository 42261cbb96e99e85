"""How sampling weights move the class distribution of the draws (CAS on long-tailed data).

CAS (the CAS paper's w_i = CAS_i ** b) sums attribute ranks within a class; a small class
cannot reach the high ranks a large one has, so on long-tailed data CAS weights also move
sampling mass between classes, mostly towards the head. :func:`class_mass_shift` measures it
and :func:`class_mass_message` words the warning the Loader raises
(:class:`fastcas.core.errors.ClassMassShiftWarning`). Pure NumPy.
"""
from __future__ import annotations

import numpy as np

from fastcas.sampling.weights import _single_label, check_weights, low_frequency_classes

#: total variation between the draws' class distribution and the class frequencies above which
#: :func:`class_mass_message` warns (CAS weights on long-tailed data move mass to head classes)
CLASS_SHIFT_WARN = 0.03
#: relative change of the low-frequency classes' share of the draws above which it warns too (with
#: many classes the total variation stays small while the tail's share falls by half)
TAIL_SHIFT_WARN = 0.25


def class_mass_shift(labels, w, percentile: float = 25.0) -> dict:
    """How weights ``w`` (float [N]) move the class distribution of the draws away from the class
    frequencies n_k / N (what uniform sampling draws): ``tv`` (total variation, half the L1
    distance), ``head`` (the largest class), ``head_before`` / ``head_after`` (its share), and
    ``tail_before`` / ``tail_after``: the share of the low-frequency classes
    (:func:`low_frequency_classes`, ``tail_classes`` of them). Single-label ``labels`` [N]."""
    y, counts, _ = _single_label(labels, "class_mass_shift")
    w = check_weights(w, len(y))
    before = counts / counts.sum()
    after = np.bincount(y, weights=w, minlength=len(counts)) / w.sum()
    tail = low_frequency_classes(counts[counts > 0], percentile)
    present = np.flatnonzero(counts > 0)
    tail_idx = present[tail]
    head = int(np.argmax(counts))
    return {"tv": float(0.5 * np.abs(after - before).sum()), "head": head,
            "head_before": float(before[head]), "head_after": float(after[head]),
            "tail_classes": int(len(tail_idx)), "tail_before": float(before[tail_idx].sum()),
            "tail_after": float(after[tail_idx].sum())}


def class_mass_message(shift: dict, name: str = "cas", class_names=None, threshold: float = CLASS_SHIFT_WARN,
                       tail_threshold: float = TAIL_SHIFT_WARN) -> str | None:
    """The warning for :func:`class_mass_shift` ``shift`` when its total variation exceeds
    ``threshold`` or the low-frequency classes' share changes by more than ``tail_threshold``
    (relative), else None."""
    tail_change = abs(shift["tail_after"] / shift["tail_before"] - 1) if shift["tail_before"] > 0 else 0.0
    if shift["tv"] <= threshold and tail_change <= tail_threshold:
        return None
    h = shift["head"]
    head = repr(class_names[h]) if class_names is not None and h < len(class_names) else str(h)
    return (f"weights {name!r} move the class mass of the draws by {shift['tv']:.3f} (total variation, warning "
            f"above {threshold}): head class {head} {shift['head_before']:.3f} -> {shift['head_after']:.3f} of "
            f"the draws, the {shift['tail_classes']} low-frequency classes {shift['tail_before']:.3f} -> "
            f"{shift['tail_after']:.3f} (warning above a {tail_threshold:.0%} change). CAS ranks attributes "
            f"within a class and small classes cannot reach high ranks, so on long-tailed data CAS also "
            f"resamples classes; weights 'cas-cmo' applies CAS within a class only and draws classes as CMO does "
            f"(r = 0: the class frequencies, r = 1: class-balanced; docs/papers.md, 'CAS and class mass')")
