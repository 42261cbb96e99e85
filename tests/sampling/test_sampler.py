"""Weights and samplers: distributions (chi-square, fixed seeds), statelessness, resume, ranks."""
import numpy as np
import pytest
from scipy import stats

from fastcas.sampling import weights as sample_weights
from fastcas.sampling.sampler import FeistelPermutation, WeightedSampler
from fastcas.sampling.streaming import StreamingSampler

LABELS = np.repeat(np.arange(5), [400, 200, 100, 40, 10])
SCORES = 20 + (np.arange(len(LABELS)) * 7919) % 37  # CAS-like sums of ranks


def chi2_p(draws, p):
    """p-value of the draws' histogram against probabilities p (pooled over bins with p>0)."""
    observed = np.bincount(draws, minlength=len(p))
    assert observed[p == 0].sum() == 0, "a zero-probability entry was drawn"
    keep = p > 0
    return stats.chisquare(observed[keep], p[keep] / p[keep].sum() * len(draws)).pvalue


@pytest.mark.parametrize("name", ["uniform", "cas", "cmo", "cmo-effective", "oversample", "undersample", "cas-cmo"])
def test_draws_match_weights_chi_square(name):
    w = sample_weights.make(name, LABELS, scores=SCORES)
    s = WeightedSampler(w, num_samples=200_000, seed=7)
    d = s.indices(0)
    p = w / w.sum()
    # class level (powerful) and sample level
    pc = np.bincount(LABELS, weights=p)
    assert chi2_p(LABELS[d], pc) > 1e-3
    assert chi2_p(d, p) > 1e-3


def test_cmo_class_frequencies_follow_inverse_counts():
    counts = np.bincount(LABELS)
    for r in (1.0, 0.5):
        d = WeightedSampler(sample_weights.cmo(LABELS, r, per="class"), num_samples=100_000, seed=1).indices(0)
        freq = np.bincount(LABELS[d], minlength=5) / len(d)
        q = counts ** -r / (counts ** -r).sum()
        np.testing.assert_allclose(freq, q, atol=0.01)
    # the reference code's convention: per-sample weight q_k -> class-balanced for r = 1
    d = WeightedSampler(sample_weights.cmo(LABELS, 1.0, per="sample"), num_samples=100_000, seed=1).indices(0)
    np.testing.assert_allclose(np.bincount(LABELS[d]) / len(d), 0.2, atol=0.01)


def test_effective_number_formula():
    counts = np.array([1000, 10])
    N = counts.sum()
    beta = (N - 1) / N
    E = (1 - beta ** counts) / (1 - beta)
    np.testing.assert_allclose(sample_weights.class_probabilities(counts, effective=True), (1 / E) / (1 / E).sum())


def test_cas_weights_and_within_class_combination():
    np.testing.assert_allclose(sample_weights.cas([1, 2, 4], b=1.2), np.array([1, 2, 4]) ** 1.2)
    w = sample_weights.cas_within_cmo(LABELS, SCORES, r=1.0, b=1.2, per="class")
    counts = np.bincount(LABELS)
    q = (1 / counts) / (1 / counts).sum()
    np.testing.assert_allclose(np.bincount(LABELS, weights=w), q)  # CMO across classes
    k = LABELS == 2
    np.testing.assert_allclose(w[k] / w[k].sum(), SCORES[k] ** 1.2 / (SCORES[k] ** 1.2).sum())


def test_over_and_undersampling_expected_sizes():
    counts = np.bincount(LABELS)
    over = sample_weights.oversample(LABELS, threshold=200)
    np.testing.assert_allclose(np.bincount(LABELS, weights=over), np.maximum(counts, 200))
    under = sample_weights.undersample(LABELS, threshold=100)
    np.testing.assert_allclose(np.bincount(LABELS, weights=under), np.minimum(counts, 100))
    # defaults: oversample to the largest class, undersample to the 25th percentile
    np.testing.assert_allclose(np.bincount(LABELS, weights=sample_weights.oversample(LABELS)), 400)
    np.testing.assert_allclose(np.bincount(LABELS, weights=sample_weights.undersample(LABELS)), np.minimum(counts, 40))
    plan = sample_weights.oversample_plan(LABELS, 200, np.random.default_rng(0))
    assert np.isin(np.arange(len(LABELS)), plan).all()  # every original at least once
    assert np.bincount(LABELS[plan]).tolist() == np.maximum(counts, 200).tolist()


def test_multilabel_resampling():
    y = np.array([[1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 1, 0], [0, 0, 1]])  # counts 4, 1, 1
    w = sample_weights.oversample(y, threshold=4)
    assert w.tolist() == [1, 1, 1, 4, 4]  # sample 3 repeated as its rarest class needs
    w = sample_weights.undersample(y, threshold=1)
    assert w.tolist() == [0.25, 0.25, 0.25, 0.25, 1]
    assert sample_weights.low_frequency_classes([100, 50, 10, 5]).tolist() == [False, False, False, True]


def test_loss_weights():
    counts = np.array([100, 10, 1])
    inv = sample_weights.loss_weights(counts, "inverse")
    assert inv.sum() == pytest.approx(3) and inv[2] / inv[1] == pytest.approx(10)
    up = sample_weights.loss_weights(counts, "upweight-low", factor=3.0)
    assert up[2] / up[0] == pytest.approx(3) and up[0] == up[1]
    eff = sample_weights.loss_weights(counts, "effective", beta=0.9)
    e = (1 - 0.9) / (1 - 0.9 ** counts.astype(float))  # Cui et al. 2019: (1 - beta) / (1 - beta^n)
    np.testing.assert_allclose(eff, 3 * e / e.sum())
    N = counts.sum()
    default_beta = (N - 1) / N
    e = (1 - default_beta) / (1 - default_beta ** counts.astype(float))
    np.testing.assert_allclose(sample_weights.loss_weights(counts, "effective"), 3 * e / e.sum())
    with pytest.raises(ValueError, match="unknown loss weights 'x'; expected one of none, inverse"):
        sample_weights.loss_weights(counts, "x")


@pytest.mark.parametrize("w, message", [
    ([1.0, np.nan], "NaN or inf \\(first at index 1"),
    ([1.0, np.inf], "NaN or inf"),
    ([1.0, -2.0], "negative values \\(first at index 1: -2.0"),
    ([0.0, 0.0], "all zero"),
])
def test_bad_weights(w, message):
    with pytest.raises(ValueError, match=message):
        WeightedSampler(w)


def test_bad_sampler_arguments():
    with pytest.raises(ValueError, match="rank must be in \\[0, world_size=2\\), got rank=2"):
        WeightedSampler(10, rank=2, world_size=2)
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        WeightedSampler(10, num_samples=0)
    with pytest.raises(ValueError, match="replacement=False supports uniform weights only"):
        WeightedSampler([1.0, 2.0], replacement=False)
    with pytest.raises(ValueError, match="weights has 3 entries but the dataset has 5 samples"):
        sample_weights.check_weights([1, 2, 3], 5)
    with pytest.raises(ValueError, match="need CAS scores"):
        sample_weights.make("cas", LABELS)
    with pytest.raises(ValueError, match="unknown weights 'zipf'; expected one of uniform, cas"):
        sample_weights.make("zipf", LABELS)


def test_stateless_determinism_and_resume():
    w = sample_weights.cmo(LABELS)
    s = WeightedSampler(w, seed=3)
    a = s.indices(0)
    assert np.array_equal(a, WeightedSampler(w, seed=3).indices(0))  # fresh object, same stream
    assert not np.array_equal(a, s.indices(1))                       # epochs differ
    assert not np.array_equal(a, WeightedSampler(w, seed=4).indices(0))
    pos = np.array([5, 0, 749, 17])
    assert np.array_equal(s.index_at(0, pos), a[pos])                # any position alone
    k = 300
    assert np.array_equal(s.index_at(0, np.arange(k, len(s))), a[k:])  # resume = tail
    s.set_epoch(0)
    assert list(s) == a.tolist()


def test_ranks_are_disjoint_streams_with_the_target_union():
    w = sample_weights.cmo(LABELS)
    ranks = [WeightedSampler(w, num_samples=80_001, seed=5, rank=r, world_size=4) for r in range(4)]
    assert all(len(s) == 20_001 for s in ranks)
    streams = [s.indices(0) for s in ranks]
    assert not any(np.array_equal(streams[0][:50], t[:50]) for t in streams[1:])
    union = np.concatenate(streams)
    assert chi2_p(LABELS[union], np.bincount(LABELS, weights=w / w.sum())) > 1e-3


def test_without_replacement_is_a_distributed_permutation():
    n = 1003
    ranks = [WeightedSampler(n, seed=2, rank=r, world_size=3, replacement=False) for r in range(3)]
    assert [len(s) for s in ranks] == [335] * 3
    allidx = np.concatenate([s.indices(0) for s in ranks])
    assert np.array_equal(np.unique(allidx), np.arange(n))  # every sample, 2 padded repeats
    one = WeightedSampler(n, seed=2, replacement=False)
    e0, e1 = one.indices(0), one.indices(1)
    assert sorted(e0.tolist()) == list(range(n)) and not np.array_equal(e0, e1)
    two = WeightedSampler(n, num_samples=2 * n, seed=2, replacement=False).indices(0)
    assert np.bincount(two).tolist() == [2] * n


@pytest.mark.parametrize("n", [1, 2, 3, 1000, 2**20 + 7])
def test_feistel_is_a_bijection(n):
    perm = FeistelPermutation(n, np.uint64(99))
    x = np.arange(min(n, 5000))
    y = perm(x)
    assert y.min() >= 0 and y.max() < n and len(np.unique(y)) == len(x)
    if n <= 5000:
        assert sorted(y.tolist()) == list(range(n))


def test_large_index_space_int64():
    s = WeightedSampler(3_000_000_000, num_samples=1000, seed=1)
    d = s.indices(0)
    assert d.dtype == np.int64 and d.max() > 2**31


def test_works_as_a_dataloader_sampler():
    torch = pytest.importorskip("torch")
    ds = torch.utils.data.TensorDataset(torch.arange(len(LABELS)))
    s = WeightedSampler(sample_weights.cmo(LABELS), seed=0)
    dl = torch.utils.data.DataLoader(ds, batch_size=100, sampler=s)
    got = torch.cat([b[0] for b in dl]).numpy()
    assert np.array_equal(got, s.indices(0)) and len(dl) == 8


def test_streaming_expected_counts_and_equal_rank_lengths():
    shard_counts = [250, 250, 250, 0, 0]
    w = sample_weights.cmo(LABELS)
    sp = StreamingSampler(shard_counts, w, seed=1, shuffle_buffer=64)
    p = w / w.sum()
    mean = np.mean([sp.counts(e) for e in range(200)], axis=0)
    np.testing.assert_allclose(mean, len(LABELS) * p, atol=0.2)  # unbiased: E[c_i] = E p_i
    c = sp.counts(0)
    assert np.all(np.abs(c - len(LABELS) * p) < 1)  # systematic rounding: never off by 1+
    ranks = [StreamingSampler(shard_counts, w, seed=1, rank=r, world_size=2) for r in range(2)]
    a, b = ranks[0].indices(0), ranks[1].indices(0)
    assert len(a) == len(b) == 375
    assert np.array_equal(a, ranks[0].indices(0))  # deterministic
    plain = StreamingSampler(shard_counts, w, seed=1, shuffle_buffer=0)
    one = plain.indices(0)
    shard_of = np.searchsorted(plain.starts, one, side="right") - 1
    order = [s for s in plain.shards_of_rank(0) if shard_counts[s]]
    runs = [shard_of[0]] + [b for a, b in zip(shard_of, shard_of[1:]) if a != b]
    assert runs == order  # whole shards, sequentially
    assert np.all(np.diff(one)[np.diff(shard_of) == 0] >= 0)  # in order inside a shard
    assert chi2_p(LABELS[one], np.bincount(LABELS, weights=p)) > 1e-3
