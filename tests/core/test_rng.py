"""Keyed random draws: generators and counter-based uniforms are pure functions of their keys."""
import numpy as np
import pytest
from scipy import stats

from fastcas.core import rng


def test_generator_is_a_pure_function_of_its_keys():
    a = rng.generator(7, 1, 2).random(5)
    b = rng.generator(7, 1, 2).random(5)
    c = rng.generator(7, 1, 3).random(5)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_generator_rejects_negative_keys():
    with pytest.raises(ValueError, match="non-negative"):
        rng.generator(1, -2)


def test_counter_uniform_is_stateless_and_uniform():
    key = rng.derive_key(3, 0, 1)
    u = rng.counter_uniform(key, np.arange(200_000))
    # any slice equals the values computed for those counters alone
    np.testing.assert_array_equal(u[12345:12400], rng.counter_uniform(key, np.arange(12345, 12400)))
    assert u.dtype == np.float64 and u.min() >= 0.0 and u.max() < 1.0
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    # neighbouring counters are not correlated
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.01
    # another key gives another stream
    other = rng.counter_uniform(rng.derive_key(3, 0, 2), np.arange(1000))
    assert not np.allclose(u[:1000], other)


def test_counter_uniform_handles_int64_counters_near_1e9():
    key = rng.derive_key(1)
    big = np.array([10**9, 10**9 + 1, 2**40], dtype=np.int64)
    u = rng.counter_uniform(key, big)
    assert np.all((u >= 0) & (u < 1)) and len(set(u.tolist())) == 3
