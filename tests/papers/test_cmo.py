"""CMO sampling as the reference code (naver-ai/cmo ``get_weighted_sampler``) does it: every
sample of class k weighted n_k^-r, so class k is drawn ∝ n_k^(1-r). Chi-square, fixed seeds,
through the sampler."""
import numpy as np
import pytest
from scipy import stats

from fastcas.sampling import weights as sample_weights
from fastcas.sampling.sampler import WeightedSampler

# long-tailed label set, ratio 100 (exponential profile, 8 classes)
COUNTS = np.round(2000 * 0.01 ** (np.arange(8) / 7)).astype(int)
LABELS = np.repeat(np.arange(8), COUNTS)


def _class_pvalue(weights, expected, seed=7, n=200_000):
    d = WeightedSampler(weights, num_samples=n, seed=seed).indices(0)
    observed = np.bincount(LABELS[d], minlength=len(COUNTS))
    return stats.chisquare(observed, expected / expected.sum() * n).pvalue, observed / n


def test_cmo_default_is_class_balanced_at_r1():
    p, freq = _class_pvalue(sample_weights.make("cmo", LABELS, r=1.0), np.ones(len(COUNTS)))
    # balanced (the literal per-class reading would give the rarest class ~37% of draws)
    assert p > 1e-3, freq
    assert abs(freq[-1] - 1 / len(COUNTS)) < 0.01


def test_cmo_default_half_power_at_r_half():
    p, freq = _class_pvalue(sample_weights.cmo(LABELS, 0.5), COUNTS ** 0.5)
    assert p > 1e-3, freq
    # and clearly not the literal reading n_k^-0.5
    p_lit, _ = _class_pvalue(sample_weights.cmo(LABELS, 0.5), COUNTS ** -0.5)
    assert p_lit < 1e-6


def test_cmo_per_class_is_the_explicit_literal_option():
    w = sample_weights.make("cmo-per-class", LABELS, r=1.0)
    p, _ = _class_pvalue(w, 1.0 / COUNTS)
    assert p > 1e-3
    np.testing.assert_allclose(
        sample_weights.cmo_class_probabilities(COUNTS, 1.0, per="class"), (1 / COUNTS) / (1 / COUNTS).sum()
    )
    with pytest.raises(ValueError, match="per must be"):
        sample_weights.cmo(LABELS, per="klass")


def test_cmo_effective_is_per_sample_too():
    n = COUNTS.astype(float)
    beta = (n.sum() - 1) / n.sum()
    E = (1 - beta ** n) / (1 - beta)
    p, _ = _class_pvalue(sample_weights.make("cmo-effective", LABELS), n / E)
    assert p > 1e-3


def test_cas_cmo_draws_classes_like_cmo():
    scores = 20 + (np.arange(len(LABELS)) * 7919) % 37
    w = sample_weights.make("cas-cmo", LABELS, scores=scores, r=1.0)
    np.testing.assert_allclose(np.bincount(LABELS, weights=w / w.sum()), 1 / len(COUNTS))
