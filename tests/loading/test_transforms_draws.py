"""AugmentPolicy's keyed draws on the host (no DALI): ranges, distributions (chi-square with a
fixed seed), and that a position's draws do not depend on which batch holds it."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from fastcas.loading.transforms import AugmentPolicy, parse_auto_augment

POLICY = AugmentPolicy(name="cifar", padding=4, color_jitter=(0.4, 0.2, 0.0), auto_augment="rand-m9-n2",
                       reprob=0.5, remode="rand")
N, S = 9000, 32


def test_draws_are_functions_of_the_position_alone():
    pos = np.arange(1000, 1000 + 64)
    whole = POLICY.draws(7, 3, 0, pos, S)
    for a, b in ((0, 5), (5, 40), (40, 64)):
        part = POLICY.draws(7, 3, 0, pos[a:b], S)
        for k in whole:
            np.testing.assert_array_equal(part[k], whole[k][a:b])
    other = POLICY.draws(7, 4, 0, pos, S)  # another epoch: other draws
    assert not np.array_equal(other["shift"], whole["shift"])
    stream1 = POLICY.draws(7, 3, 1, pos, S)  # CMO's foreground stream: its own draws
    assert not np.array_equal(stream1["jitter"], whole["jitter"])


def test_cifar_offsets_are_uniform_over_the_padded_range():
    shift = POLICY.draws(0, 0, 0, np.arange(N), S)["shift"]
    assert shift.dtype == np.float32 and shift.shape == (N, 2)
    for axis in (0, 1):
        counts = np.bincount(shift[:, axis].astype(int) + 4, minlength=9)
        assert len(counts) == 9
        assert stats.chisquare(counts).pvalue > 1e-3


def test_jitter_factors_stay_in_their_ranges():
    j = POLICY.draws(0, 0, 0, np.arange(N), S)["jitter"]
    assert (j[:, 0] >= 0.6).all() and (j[:, 0] < 1.4).all() and (j[:, 1] >= 0.8).all() and (j[:, 1] < 1.2).all()
    np.testing.assert_array_equal(j[:, 2], 1.0)
    assert stats.kstest((j[:, 0] - 0.6) / 0.8, "uniform").pvalue > 1e-3


def test_erasing_probability_and_rectangles():
    d = POLICY.draws(0, 0, 0, np.arange(N), S)
    y, x, h, w = d["erase"].T
    on = h > 0
    # p = 0.5 (a sample finding no fitting rectangle in 10 attempts is rarer than 1e-6 at these ranges)
    assert stats.binomtest(int(on.sum()), N, 0.5).pvalue > 1e-3
    area = h[on] * w[on] / S ** 2
    assert (area > 0.01).all() and (area < 0.37).all()
    assert (y[on] >= 0).all() and (x[on] >= 0).all() and (y + h <= S).all() and (x + w <= S).all()
    assert (h[on] < S).all() and (w[on] < S).all()
    assert (d["erase"][~on] == 0).all()
    colour = d["efill"][:, :3]
    assert abs(colour.mean()) < 0.05 and abs(colour.std() - 1) < 0.05  # N(0, 1)


def test_auto_augment_draws_are_non_negative_int32():
    a = POLICY.draws(0, 0, 0, np.arange(N), S)["auto"]
    assert a.dtype == np.int32 and a.shape == (N, 8) and a.min() >= 0
    counts = np.bincount(a[:, 0] % 14, minlength=14)
    assert stats.chisquare(counts).pvalue > 1e-3


def test_noise_field_is_standard_normal_and_fixed_by_the_seed():
    f = AugmentPolicy(reprob=1, remode="pixel").noise_field(3, 16)
    assert f.shape == (32, 32, 3) and f.dtype == np.float32
    np.testing.assert_array_equal(f, AugmentPolicy().noise_field(3, 16))
    assert abs(f.mean()) < 0.1 and abs(f.std() - 1) < 0.1
    assert not np.array_equal(f, AugmentPolicy().noise_field(4, 16))


@pytest.mark.parametrize("spec,want", [(None, None), ("randaugment", ("randaugment", 2, 9)),
                                       ("rand-m7-n3", ("randaugment", 3, 7)), ("rand-n1", ("randaugment", 1, 9)),
                                       ("ta_wide", ("trivialaugment", 1, 0)), ("v0", ("autoaugment", 0, 0))])
def test_auto_augment_names(spec, want):
    assert parse_auto_augment(spec) == want


def test_default_policy_has_no_extra_outputs_and_keeps_the_eval_crop():
    p = AugmentPolicy()
    assert p.extra_fields(True) == () and p.eval_resize(224) == 256
    assert AugmentPolicy(name="cifar").eval_resize(32) is None
    assert AugmentPolicy(name="cifar", crop_pct=1.0).eval_resize(32) == 32
    assert POLICY.extra_fields(True) == ("shift", "auto", "jitter", "erase", "efill")
    assert POLICY.extra_fields(False) == ()


def test_every_transform_option_is_documented():
    from dataclasses import fields
    from pathlib import Path

    from fastcas.loading.config import TRANSFORM_OPTIONS

    text = (Path(__file__).resolve().parents[2] / "docs" / "loader-options.md").read_text()
    names = {f.name for f in fields(AugmentPolicy)} - {"name"} | set(TRANSFORM_OPTIONS)
    names |= {
        "augment",
        "mix_start_epoch",
        "mix_stop_epoch",
        "mixup_cutmix",
        "switch_prob",
        "mixup_alpha",
        "cutmix_alpha",
    }
    missing = sorted(n for n in names if f"`{n}`" not in text)
    assert not missing, f"not in docs/loader-options.md: {missing}"
