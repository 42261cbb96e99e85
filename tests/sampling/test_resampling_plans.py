"""The importance-sampling paper's three schemes, exactly: the undersampled subset, the
oversampled plan (epoch plans read by PlanSampler), the low-frequency loss factor; and the
class-mass measure behind the CAS warning."""
import numpy as np
import pytest

from fastcas.sampling import classmass
from fastcas.sampling import weights as sample_weights
from fastcas.sampling.plan import PlanSampler

LABELS = np.repeat(np.arange(5), [400, 200, 100, 40, 10])
COUNTS = np.bincount(LABELS)


@pytest.mark.parametrize("threshold", [100, 40, 55.7, None])
def test_undersample_plan_caps_each_class_at_the_threshold(threshold):
    """Paper Sec. 4: classes above the threshold reduced to it by a random subset; the others whole."""
    plan = sample_weights.make_plan("undersample", LABELS, seed=3, threshold=threshold)
    t = int(np.floor(np.percentile(COUNTS, 25) if threshold is None else threshold))
    assert np.bincount(LABELS[plan], minlength=5).tolist() == np.minimum(COUNTS, t).tolist()
    assert len(plan) == np.minimum(COUNTS, t).sum()
    assert len(np.unique(plan)) == len(plan)  # a subset: no repeats
    small = np.flatnonzero(COUNTS <= t)
    assert np.isin(np.flatnonzero(np.isin(LABELS, small)), plan).all()  # classes at/below t kept whole


@pytest.mark.parametrize("threshold", [200, 400, 150.5, None])
def test_oversample_plan_keeps_every_original_and_adds_extras(threshold):
    """Paper Sec. 4: every image at least once, then random repeats up to the threshold."""
    plan = sample_weights.make_plan("oversample", LABELS, seed=3, threshold=threshold)
    t = int(np.floor(COUNTS.max() if threshold is None else threshold))
    assert np.bincount(LABELS[plan], minlength=5).tolist() == np.maximum(COUNTS, t).tolist()
    assert np.isin(np.arange(len(LABELS)), plan).all()
    reps = np.bincount(plan, minlength=len(LABELS))
    big = COUNTS[LABELS] >= t
    assert (reps[big] == 1).all()  # classes at or above the threshold: once each


def test_plans_are_keyed_by_seed():
    a = sample_weights.make_plan("undersample", LABELS, seed=1, threshold=40)
    assert np.array_equal(a, sample_weights.make_plan("undersample", LABELS, seed=1, threshold=40))
    assert not np.array_equal(a, sample_weights.make_plan("undersample", LABELS, seed=2, threshold=40))
    with pytest.raises(ValueError, match="'cmo' is not a plan"):
        sample_weights.make_plan("cmo", LABELS)
    with pytest.raises(ValueError, match="single-label"):
        sample_weights.undersample_plan(np.eye(3, dtype=int), 1, np.random.default_rng(0))


def test_make_gives_the_plans_expected_draws_and_keeps_the_expected_names():
    for name, mode in (("oversample", "over"), ("undersample", "under")):
        w = sample_weights.make(name, LABELS, threshold=55)
        target = sample_weights.plan_targets(COUNTS, 55, mode)
        np.testing.assert_allclose(np.bincount(LABELS, weights=w), target)
    np.testing.assert_allclose(sample_weights.make("undersample-expected", LABELS, threshold=55),
                               sample_weights.undersample(LABELS, 55))
    np.testing.assert_allclose(sample_weights.make("oversample-expected", LABELS, threshold=55),
                               sample_weights.oversample(LABELS, 55))


@pytest.mark.parametrize("world_size, batch", [(1, 7), (3, 4)])
def test_plan_sampler_reads_the_plan_once_per_epoch_in_a_keyed_order(world_size, batch):
    plan = sample_weights.make_plan("oversample", LABELS, seed=0, threshold=200)
    s0 = PlanSampler(plan, len(LABELS), seed=5, rank=0, world_size=world_size, batch_size=batch)
    assert s0.num_samples == len(plan)
    whole = s0.global_index_at(0, np.arange(len(plan)))
    assert sorted(whole.tolist()) == sorted(plan.tolist())  # one pass: the plan's multiset
    assert not np.array_equal(whole, s0.global_index_at(1, np.arange(len(plan))))  # reshuffled per epoch
    assert np.array_equal(whole, PlanSampler(plan, len(LABELS), seed=5).global_index_at(0, np.arange(len(plan))))
    np.testing.assert_allclose(s0.probabilities(), np.bincount(plan, minlength=len(LABELS)) / len(plan))
    # ranks: disjoint blocks of the one stream, state resumes at another split of the same global batch
    state = s0.state_dict(consumed=2 * batch)
    other = PlanSampler(plan, len(LABELS), seed=5, rank=0, world_size=1, batch_size=world_size * batch)
    other.load_state_dict(state)
    G = world_size * batch
    assert list(iter(other))[:G] == whole[2 * G:3 * G].tolist()
    with pytest.raises(ValueError, match="state was saved with a different configuration"):
        PlanSampler(plan[:-1], len(LABELS), seed=5, batch_size=world_size * batch).load_state_dict(state)


def test_plan_sampler_rejects_bad_plans():
    with pytest.raises(ValueError, match=r"plan indices must be in \[0, n=3\)"):
        PlanSampler(np.array([0, 3]), 3)
    with pytest.raises(ValueError, match="non-empty 1-D integer array"):
        PlanSampler(np.array([0.5]), 3)


def test_upweight_low_multiplies_low_frequency_classes_and_leaves_the_rest_at_one():
    """Paper Sec. 3-4 (and its code: per-item loss x loss_scale for rare classes): factor on the
    classes within the 25th percentile of the counts, exactly 1 elsewhere, for every factor."""
    low = sample_weights.low_frequency_classes(COUNTS)
    for factor in (1.5, 2, 3, 5, 10):
        w = sample_weights.loss_weights(COUNTS, "upweight-low", factor=factor)
        assert w[low].tolist() == [factor] * low.sum() and w[~low].tolist() == [1.0] * (~low).sum()
    with pytest.raises(ValueError, match="loss weight factor must be a finite number > 0, got 0"):
        sample_weights.loss_weights(COUNTS, "upweight-low", factor=0)


def test_class_mass_shift_and_message():
    uniform = classmass.class_mass_shift(LABELS, np.ones(len(LABELS)))
    assert uniform["tv"] == pytest.approx(0) and classmass.class_mass_message(uniform) is None
    head_heavy = np.where(LABELS == 0, 3.0, 1.0)
    s = classmass.class_mass_shift(LABELS, head_heavy)
    assert s["head"] == 0 and s["head_before"] == pytest.approx(400 / 750)
    assert s["head_after"] == pytest.approx(1200 / 1550)
    assert s["tail_classes"] == 2 and s["tail_before"] == pytest.approx(50 / 750)
    assert s["tail_after"] == pytest.approx(50 / 1550)
    assert s["tv"] == pytest.approx(1200 / 1550 - 400 / 750)
    msg = classmass.class_mass_message(s, "cas", class_names=["head", "b", "c", "d", "e"])
    assert "head class 'head' 0.533 -> 0.774" in msg and "'cas-cmo'" in msg


def test_a_halved_tail_warns_even_with_a_small_total_variation():
    """100 classes, ratio 100: CAS-like weights that halve the rarest quarter's share move only
    ~0.01 of the mass (total variation) but still warn."""
    counts = np.floor(500 * 0.01 ** (np.arange(100) / 99)).astype(int)
    y = np.repeat(np.arange(100), counts)
    w = np.where(counts[y] <= np.percentile(counts, 25), 0.5, 1.0)
    s = classmass.class_mass_shift(y, w)
    assert s["tv"] < classmass.CLASS_SHIFT_WARN and s["tail_after"] / s["tail_before"] < 0.55
    assert f"the {s['tail_classes']} low-frequency classes" in classmass.class_mass_message(s)
    near = classmass.class_mass_shift(y, np.where(counts[y] <= np.percentile(counts, 25), 0.9, 1.0))
    assert classmass.class_mass_message(near) is None  # a 10% change: quiet
