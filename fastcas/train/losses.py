"""The training loss: soft-target cross-entropy with per-class weights, normalised as the
reference code of each weighting normalises it.

For a batch of log-probabilities ``logp`` [B, K], targets ``t`` [B, K] (one-hot, mixed or
smoothed; rows sum to 1) and class weights ``w`` [K]::

    loss = sum_i sum_k -w_k t_ik logp_ik / Z

``Z = "weights"``: ``sum_i sum_k w_k t_ik``. For one-hot targets that is ``sum_i w_{y_i}``, what
``torch.nn.CrossEntropyLoss(weight=w)`` divides by (its ``reduction="mean"`` for class indices),
the loss of the DRW / class-balanced reference code (naver-ai/cmo ``cifar_train.py``:
``nn.CrossEntropyLoss(weight=per_cls_weights)``; kaidic/LDAM-DRW the same). For soft targets
it is the targets' expected class weight summed over the batch: the one normaliser that is
linear in the targets, equals the reference for hard labels, and keeps a mixed sample's weight
proportional to its label mass. (torch itself divides soft targets by B; the CMO reference
calls the weighted criterion once per label, ``lam * CE(out, y_b) + (1 - lam) * CE(out, y_f)``,
each normalised by its own labels' weight sum: with one lambda per batch the two differ only
through ``lam * S_b + (1 - lam) * S_f`` against ``S_b`` and ``S_f`` separately, and per-sample
lambdas have no reference at all.)

``Z = "batch"``: B, a plain mean over samples: the importance-sampling paper's re-weighting
(514-class-imbalance ``run_clip_ade20k.py``: the per-item loss times ``loss_scale`` for rare
classes, then ``torch.mean``), so the majority classes keep exactly their unweighted loss.
"""
from __future__ import annotations

#: the normaliser of each loss-weight kind (:data:`fastcas.sampling.weights.LOSS_WEIGHTS`)
NORMALISER = {"none": "batch", "inverse": "weights", "effective": "weights", "upweight-low": "batch"}


def weighted_cross_entropy(logp, targets, class_weights, normaliser: str = "weights"):
    """Scalar loss (a 0-d tensor on ``logp``'s device). ``logp``: float [B, K] log-softmax
    outputs; ``targets``: float [B, K] (rows sum to 1); ``class_weights``: float [K] (same
    device); ``normaliser``: "weights" or "batch" (module docstring)."""
    per_sample = -(targets * logp * class_weights).sum(1)
    if normaliser == "batch":
        return per_sample.mean()
    if normaliser != "weights":
        raise ValueError(f"normaliser must be 'weights' or 'batch', got {normaliser!r}")
    return per_sample.sum() / (targets * class_weights).sum()
