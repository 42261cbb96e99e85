"""Paired-by-seed statistics of the reproduction: the t interval and p-value against scipy,
the seeded bootstrap, dropped pairs and bad input."""
import numpy as np
import pytest
from scipy import stats

from fastcas.tools.reproduce.stats import mean_sd, paired_difference

TREAT = [0.62, 0.58, 0.66, 0.61, 0.64]
CTRL = [0.55, 0.57, 0.60, 0.52, 0.61]


def test_paired_t_interval_and_p_value_match_scipy():
    r = paired_difference(TREAT, CTRL, confidence=0.95)
    d = np.subtract(TREAT, CTRL)
    lo, hi = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    assert r["n"] == 5 and r["mean"] == pytest.approx(d.mean()) and r["sd"] == pytest.approx(d.std(ddof=1))
    assert (r["t_low"], r["t_high"]) == pytest.approx((lo, hi))
    assert r["p_value"] == pytest.approx(stats.ttest_rel(TREAT, CTRL).pvalue)
    assert r["exceeds_noise"] is True  # every seed gains: the interval excludes 0


def test_bootstrap_is_keyed_and_brackets_the_mean():
    a = paired_difference(TREAT, CTRL, n_boot=2000, seed=3)
    b = paired_difference(TREAT, CTRL, n_boot=2000, seed=3)
    assert a["boot_low"] == b["boot_low"] and a["boot_high"] == b["boot_high"]
    d = np.subtract(TREAT, CTRL)
    assert d.min() <= a["boot_low"] < a["mean"] < a["boot_high"] <= d.max()


def test_differences_of_both_signs_stay_within_noise():
    r = paired_difference([0.5, 0.6, 0.4], [0.55, 0.5, 0.45])
    assert r["t_low"] < 0 < r["t_high"] and r["exceeds_noise"] is False


def test_none_pairs_are_dropped_and_one_pair_gives_no_interval():
    r = paired_difference([0.5, None, 0.7], [0.4, 0.3, None])
    assert r["n"] == 1 and r["mean"] == pytest.approx(0.1)
    assert r["t_low"] is None and r["p_value"] is None and r["exceeds_noise"] is False


def test_identical_arms_give_zero_difference_without_p_value():
    r = paired_difference([0.5, 0.6], [0.5, 0.6])
    assert r["mean"] == 0 and r["sd"] == 0 and r["p_value"] is None and r["exceeds_noise"] is False


def test_mean_sd_uses_sample_sd():
    assert mean_sd([1.0, 2.0, None, 3.0]) == pytest.approx((2.0, 1.0))
    assert mean_sd([None]) == (None, None) and mean_sd([0.4]) == (0.4, None)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="differ in length"):
        paired_difference([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="confidence"):
        paired_difference([0.1, 0.2], [0.1, 0.3], confidence=1.5)


def test_demo_names_the_differences_beyond_the_seed_spread():
    from fastcas.tools.demo.run import noise_lines

    runs = {"CutMix": [{"top1": 0.50, "few": 0.10}, {"top1": 0.52, "few": 0.20}, {"top1": 0.51, "few": 0.15}],
            "CutMix + CAS": [{"top1": 0.60, "few": 0.05}, {"top1": 0.63, "few": 0.30}, {"top1": 0.61, "few": 0.10}]}
    (line,) = noise_lines(runs, ("top1", "few"))  # CE / CE + CMO absent: one line
    beyond, within = line.split("; within it: ")
    assert "top1 +0.103" in beyond and "few" not in beyond and "few" in within
    assert noise_lines({k: v[:1] for k, v in runs.items()}) == []  # one seed: nothing to say
