"""The Loader reads the importance-sampling paper's epoch plans (epoch length = plan length) and
warns when CAS weights move the class mass (ClassMassShiftWarning, ``loader.notes``)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nvidia.dali")

from fastcas import Loader  # noqa: E402
from fastcas.core.errors import ClassMassShiftWarning  # noqa: E402
from fastcas.sampling import weights as sample_weights  # noqa: E402
from tests.helpers import collect, make_dataset  # noqa: E402

pytestmark = pytest.mark.dali
COUNTS = (20, 10, 4, 2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("plans") / "train"
    make_dataset(d, counts=COUNTS, shard_size=9, size=(20, 16), seed=5)
    return d


def loader(data, **kw):
    return Loader(data, 3, device="cpu", image_size=16, py_workers=0, seed=2, **kw)


@pytest.mark.parametrize("name", ["undersample", "oversample"])
def test_epoch_length_is_the_plan_length(data, name):
    ld = loader(data, weights=name, last_batch="partial")
    labels = np.asarray(ld.reader.labels)
    plan = sample_weights.make_plan(name, labels, seed=2)
    assert ld.geometry.num_samples == len(plan)
    assert len(ld) == -(-len(plan) // 3)
    drawn = ld.sampler_indices(0)[0][:len(plan)]
    assert sorted(drawn.tolist()) == sorted(plan.tolist())  # the plan, once, in a keyed order
    t = np.percentile(COUNTS, 25) if name == "undersample" else max(COUNTS)
    rule = np.minimum(COUNTS, int(t)) if name == "undersample" else np.maximum(COUNTS, int(t))
    assert np.bincount(labels[drawn], minlength=4).tolist() == rule.tolist()
    batches = collect(ld)
    assert sum(len(t) for _, t in batches) == len(plan)
    assert not np.array_equal(ld.sampler_indices(1)[0], ld.sampler_indices(0)[0])  # reshuffled per epoch
    ld.close()


def test_plans_refuse_streaming_mode(data):
    with pytest.raises(ValueError, match="'undersample' are a fixed resampling plan .* need mode='exact'"):
        loader(data, weights="undersample", mode="streaming")


def test_cas_weights_that_move_class_mass_warn(data):
    labels = np.asarray(loader(data).reader.labels)
    head_heavy = np.where(labels == 0, 40.0, 10.0)  # CAS-like: the large class reaches high ranks
    with pytest.warns(ClassMassShiftWarning, match=r"weights 'cas' move the class mass .* head class 'c0' "
                                                   r"0\.556 -> .*'cas-cmo'"):
        ld = loader(data, weights="cas", scores=head_heavy, cas_power=1.0)
    assert len(ld.notes) == 1 and "head class 'c0'" in ld.notes[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ClassMassShiftWarning)
        even = loader(data, weights="cas", scores=np.full(len(labels), 7.0), cas_power=1.0)
        assert even.notes == []


def test_fastcas_sample_writes_one_pass_over_the_plan(data, tmp_path, capsys):
    from fastcas.cli import main

    out = tmp_path / "idx.npy"
    assert main(["sample", str(data), "--weights", "undersample", "--threshold", "5", "--seed", "4",
                 "--out", str(out)]) == 0
    idx = np.load(out)
    labels = np.asarray(loader(data).reader.labels)
    assert np.bincount(labels[idx], minlength=4).tolist() == [5, 5, 4, 2]  # min(n_k, 5), no repeats
    assert len(np.unique(idx)) == len(idx)
    assert "wrote 16 indices (undersample" in capsys.readouterr().out


@pytest.fixture(scope="module")
def one_per_class(tmp_path_factory):
    """13 samples, one per class: a hard target names the sample delivered (by its label)."""
    d = tmp_path_factory.mktemp("plans") / "d13"
    make_dataset(d, counts=(1,) * 13, shard_size=5, size=(16, 12))
    return d


@pytest.mark.parametrize("world_size", [2, 3])
def test_evaluation_plan_names_the_samples_delivered_when_the_world_size_does_not_divide_the_split(
        one_per_class, world_size):
    # N=13 over W ranks in batches of 4: the last batch of each rank is padded past ceil(13 / W)
    # positions; the plan's indices (padding slots included) are the samples the batch holds
    for rank in range(world_size):
        ld = Loader(one_per_class, 4, train=False, last_batch="pad", rank=rank, world_size=world_size,
                    device="cpu", image_size=8, py_workers=0, num_threads=1)
        label_of = np.asarray(ld.reader.labels)
        assert sorted(label_of.tolist()) == list(range(13))  # one sample per label
        delivered = [b[1].tolist() for b in ld]
        plans = [ld.plan(step, epoch=0) for step in range(len(ld))]
        ld.close()
        assert len(delivered) == len(ld) == 2 and sum(len(b) for b in delivered) == 8
        assert [label_of[p["indices"][0]].tolist() for p in plans] == delivered, f"rank {rank} of {world_size}"
        assert [p["labels"][0].tolist() for p in plans] == delivered
