"""Mixing parameters are functions of the stream position: partners, draws and FMix noise do not depend on the batch or
the device."""

import numpy as np
import pytest
from scipy import stats

from fastcas.mix import make_params_at, pair_partner
from fastcas.mix.params import position_draws


def test_partner_is_the_adjacent_position_and_odd_batches_pair_with_themselves():
    assert pair_partner([8, 9, 10, 11]).tolist() == [1, 0, 3, 2]
    assert pair_partner([3, 4, 5]).tolist() == [0, 2, 1]   # 3's partner 2 is on another rank
    assert pair_partner([4, 5, 6]).tolist() == [1, 0, 2]   # 6's partner 7 is on another rank


def test_position_draws_distribution_and_independence_from_the_batch():
    g = np.arange(200_000)
    drawn, mixed, uy, ux = position_draws(5, 2, g, alpha=0.2, prob=0.3)
    assert stats.kstest(drawn[:20_000], stats.beta(0.2, 0.2).cdf).pvalue > 1e-3
    assert abs(mixed.mean() - 0.3) < 0.005
    assert stats.kstest(uy[:20_000], "uniform").pvalue > 1e-3
    sub = np.array([199_999, 17, 4])
    d2, m2, y2, x2 = position_draws(5, 2, sub, alpha=0.2, prob=0.3)
    assert np.array_equal(d2, drawn[sub]) and np.array_equal(m2, mixed[sub]) and np.array_equal(y2, uy[sub])
    assert not np.array_equal(position_draws(5, 3, sub, 0.2, 0.3)[0], d2)  # epochs differ
    assert not np.array_equal(position_draws(6, 2, sub, 0.2, 0.3)[0], d2)  # seeds differ


@pytest.mark.parametrize("kind", ["cutmix", "fmix", "mixup"])
def test_params_of_a_position_do_not_depend_on_the_batch_it_is_in(kind):
    pos = np.arange(40, 48)
    full = make_params_at(kind, 1, 0, pos, 16, 20, alpha=1.0, prob=0.7)
    halves = [make_params_at(kind, 1, 0, pos[i:i + 4], 16, 20, alpha=1.0, prob=0.7) for i in (0, 4)]
    np.testing.assert_array_equal(full.lam, np.concatenate([h.lam for h in halves]))
    np.testing.assert_array_equal(full.mixed, np.concatenate([h.mixed for h in halves]))
    masks = full.box_masks()
    np.testing.assert_array_equal(masks, np.concatenate([h.box_masks() for h in halves]))
    # lambda is measured from the applied region
    np.testing.assert_allclose(full.lam, 1 - masks.reshape(8, -1).mean(1), atol=1e-6)


def test_fmix_noise_is_device_independent_the_torch_builder_gives_the_numpy_mask():
    """the noise is drawn on the host from the position keys; the torch
    mask builder (the CUDA path, run here on CPU) gives the NumPy mask from the same noise."""
    torch = pytest.importorskip("torch")
    from fastcas.mix.fmix import _counts, _masks_torch, noise_at

    pos = np.arange(100, 116)
    p = make_params_at("fmix", 9, 1, pos, 24, 20, alpha=1.0)
    num, soft = _counts(p.drawn, 24 * 20, 0.0)
    t = _masks_torch(noise_at(9, 1, pos, 24, 20), 24, 20, 3.0, num, soft, torch.device("cpu")).numpy()
    np.testing.assert_array_equal((1 - t).reshape(16, -1).sum(1), num)  # exact kept counts
    assert (t == p.masks).mean() > 0.995  # float32 FFTs may differ at threshold ties only
