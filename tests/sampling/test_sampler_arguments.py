"""WeightedSampler: zero weights are never drawn, argument errors, probabilities(), state_dict(),
and the draws of every rank against the target distribution (chi-square, fixed seeds)."""
import numpy as np
import pytest
from scipy import stats

from fastcas.sampling.sampler import WeightedSampler

ZERO_PATTERNS = {
    "leading": [0, 0, 0, 1, 2, 3],
    "trailing": [1, 2, 3, 0, 0, 0],
    "interior": [2, 0, 0, 1, 0, 3],
    "all-but-first": [5, 0, 0, 0, 0, 0],
    "all-but-last": [0, 0, 0, 0, 0, 5],
    "mixed": [0, 1e-9, 0, 1, 0, 0, 4, 0],
}


@pytest.mark.parametrize("name", sorted(ZERO_PATTERNS))
def test_zero_weight_samples_are_never_drawn(name):
    w = np.asarray(ZERO_PATTERNS[name], np.float64)
    zero = np.flatnonzero(w == 0)
    for world_size in (1, 3):
        draws = np.concatenate([WeightedSampler(w, num_samples=60_000, seed=s, rank=r, world_size=world_size)
                                .indices(e) for s in (0, 1) for r in range(world_size) for e in (0, 5)])
        assert not np.isin(draws, zero).any(), f"zero-weight samples drawn: {np.intersect1d(draws, zero)}"
        # and the non-zero ones in proportion (pooled chi-square over entries with weight > 1e-6)
        big = w > 1e-6
        observed = np.bincount(draws, minlength=len(w))[big]
        if big.sum() > 1:
            assert stats.chisquare(observed, w[big] / w[big].sum() * observed.sum()).pvalue > 1e-3


def test_probabilities():
    w = np.array([0.0, 1.0, 3.0, 0.0, 4.0])
    np.testing.assert_allclose(WeightedSampler(w).probabilities(), w / w.sum())
    np.testing.assert_allclose(WeightedSampler(7).probabilities(), np.full(7, 1 / 7))
    np.testing.assert_allclose(WeightedSampler(np.full(4, 2.5)).probabilities(), np.full(4, 0.25))
    assert WeightedSampler(w).probabilities().dtype == np.float64


def test_state_dict_names_the_stream():
    s = WeightedSampler(np.arange(1.0, 11.0), num_samples=30, seed=3, rank=1, world_size=2)
    s.set_epoch(4)
    st = s.state_dict()
    assert (st["seed"], st["epoch"], st["rank"], st["world_size"]) == (3, 4, 1, 2)
    # the state reproduces the stream: a fresh sampler built from it draws the same indices
    t = WeightedSampler(np.arange(1.0, 11.0), num_samples=30, seed=st["seed"], rank=st["rank"],
                        world_size=st["world_size"])
    t.set_epoch(st["epoch"])
    assert np.array_equal(list(t), list(s)) and len(s) == 15


@pytest.mark.parametrize("kwargs, message", [
    (dict(seed=-1), "seed must be a non-negative integer, got -1"),
    (dict(world_size=0, rank=0), "world_size must be >= 1, got 0"),
    (dict(rank=-1, world_size=2), r"rank must be in \[0, world_size=2\), got rank=-1"),
    (dict(rank=3, world_size=3), r"rank must be in \[0, world_size=3\), got rank=3"),
    (dict(num_samples=-5), "num_samples must be >= 1"),
])
def test_bad_stream_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WeightedSampler(np.ones(10), **kwargs)


def test_bad_epoch_positions_and_sizes():
    s = WeightedSampler(np.arange(1.0, 6.0), num_samples=10, seed=0, rank=0, world_size=2)  # 5 per rank
    with pytest.raises(ValueError, match="epoch must be >= 0, got -1"):
        s.set_epoch(-1)
    for bad in ([5], [-1], [0, 7]):
        with pytest.raises(ValueError, match=r"positions must be in \[0, 5\)"):
            s.index_at(0, np.array(bad))
    u = WeightedSampler(9, seed=0, replacement=False)
    with pytest.raises(ValueError, match=r"positions must be in \[0, 9\)"):
        u.index_at(0, [9])
    with pytest.raises(ValueError, match="dataset size must be >= 1"):
        WeightedSampler(0)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        WeightedSampler(np.ones((2, 2)))
    assert s.index_at(0, np.array([], np.int64)).shape == (0,)
