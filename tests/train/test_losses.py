"""The training loss's normalisers: DRW / class-balanced weights as torch's
CrossEntropyLoss(weight=), the importance-sampling paper's factor as a plain mean."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fastcas.sampling import weights as sample_weights  # noqa: E402
from fastcas.train.losses import NORMALISER, weighted_cross_entropy  # noqa: E402

COUNTS = np.array([500, 200, 60, 12, 5])


def batch(seed=0, B=32, K=5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, K, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, K, (B,), generator=g)
    return logits, y


@pytest.mark.parametrize("kind", ["inverse", "effective"])
def test_hard_targets_equal_torch_cross_entropy_with_weight(kind):
    """Divided by sum_i w_{y_i}, not by B: equal to nn.CrossEntropyLoss(weight=w) (mean)."""
    w = torch.as_tensor(sample_weights.loss_weights(COUNTS, kind, beta=0.9999))
    for seed in range(5):
        logits, y = batch(seed)
        ours = weighted_cross_entropy(torch.log_softmax(logits, 1), torch.nn.functional.one_hot(y, 5).double(), w,
                                      NORMALISER[kind])
        ref = torch.nn.CrossEntropyLoss(weight=w)(logits, y)
        assert ours.item() == pytest.approx(ref.item(), rel=1e-12)
        assert ours.item() != pytest.approx(ref.item() * w[y].sum().item() / len(y), rel=1e-3)  # the old B


def test_soft_targets_divide_by_the_targets_expected_weight():
    """Mixed targets t = lam * onehot(y_b) + (1 - lam) * onehot(y_f): the normaliser is
    sum_i sum_k w_k t_ik (lam * S_b + (1 - lam) * S_f for one lam per batch), the same loss
    numerator as the reference's lam * CE_w(y_b) + (1 - lam) * CE_w(y_f)."""
    w = torch.as_tensor(sample_weights.loss_weights(COUNTS, "effective", beta=0.9999))
    logits, yb = batch(1)
    _, yf = batch(2)
    lam = 0.3
    F = torch.nn.functional
    t = lam * F.one_hot(yb, 5).double() + (1 - lam) * F.one_hot(yf, 5).double()
    ours = weighted_cross_entropy(torch.log_softmax(logits, 1), t, w, "weights")
    ce = torch.nn.CrossEntropyLoss(weight=w, reduction="sum")
    sb, sf = w[yb].sum(), w[yf].sum()
    assert ours.item() == pytest.approx(((lam * ce(logits, yb) + (1 - lam) * ce(logits, yf)) /
                                         (lam * sb + (1 - lam) * sf)).item(), rel=1e-12)
    # with equal weights every normaliser is B: the unweighted soft-target cross-entropy
    ones = torch.ones(5, dtype=torch.float64)
    plain = -(t * torch.log_softmax(logits, 1)).sum(1).mean()
    for norm in ("weights", "batch"):
        assert weighted_cross_entropy(torch.log_softmax(logits, 1), t, ones, norm).item() == pytest.approx(plain.item())


def test_upweight_low_is_the_papers_scaled_mean():
    """514-class-imbalance: per-item loss x loss_scale for rare classes, then torch.mean."""
    w = torch.as_tensor(sample_weights.loss_weights(COUNTS, "upweight-low", factor=5.0))
    logits, y = batch(3)
    per_item = torch.nn.CrossEntropyLoss(reduction="none")(logits, y)
    rare = torch.as_tensor(sample_weights.low_frequency_classes(COUNTS))[y]
    ref = torch.where(rare, per_item * 5.0, per_item).mean()
    ours = weighted_cross_entropy(torch.log_softmax(logits, 1), torch.nn.functional.one_hot(y, 5).double(), w,
                                  NORMALISER["upweight-low"])
    assert ours.item() == pytest.approx(ref.item(), rel=1e-12)
    with pytest.raises(ValueError, match="normaliser must be 'weights' or 'batch', got 'B'"):
        weighted_cross_entropy(torch.log_softmax(logits, 1), torch.ones(32, 5), w, "B")
