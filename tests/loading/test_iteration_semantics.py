"""DataLoader semantics (issue 34): where each iter() starts, equal evaluation batches on every
rank with padding marked ``valid`` False, and one target shape per ``targets`` setting."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nvidia.dali")

from fastcas import Loader  # noqa: E402
from fastcas.dataset.reader import ShardReader  # noqa: E402
from fastcas.train.metrics import drop_padding, top1_counts  # noqa: E402
from tests.helpers import collect, make_dataset  # noqa: E402

pytestmark = pytest.mark.dali
CPU = dict(image_size=8, py_workers=0, num_threads=1, device="cpu")


@pytest.fixture(scope="module")
def ds13(tmp_path_factory):
    """13 samples, one per class: a label names its sample."""
    d = tmp_path_factory.mktemp("sem") / "d13"
    make_dataset(d, counts=(1,) * 13, shard_size=5, size=(16, 12))
    return d


@pytest.fixture(scope="module")
def ds65(tmp_path_factory):
    d = tmp_path_factory.mktemp("sem") / "d65"
    make_dataset(d, counts=(1,) * 65, shard_size=16, size=(16, 12))
    return d


def _labels(batches):
    return [int(v) for b in batches for v in b[1]]


# -- the iteration rule -------------------------------------------------------------------------
def test_every_iter_of_an_evaluation_loader_yields_the_whole_split(ds13):
    val = Loader(ds13, 4, train=False, last_batch="partial", **CPU)
    everything = list(ShardReader(ds13).labels)
    first = next(iter(val))
    again = next(iter(val))  # the first batch again, not the second
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    for _ in collect(val, n=2):  # a loop left early (Lightning's sanity check, limit_val_batches)
        pass
    assert _labels(collect(val)) == everything
    val.set_epoch(0)
    assert _labels(collect(val)) == everything
    val.set_epoch(3)
    assert _labels(collect(val)) == everything
    val.close()


def test_training_break_then_iter_starts_the_next_epoch(ds13):
    ref = Loader(ds13, 3, seed=2, **CPU)
    epochs = [collect(ref) for _ in range(2)]  # iter() after a finished epoch: the next one
    assert ref.epoch == 1
    loader = Loader(ds13, 3, seed=2, **CPU)
    collect(loader, n=2)  # break after two steps of epoch 0
    got = collect(loader)
    assert loader.epoch == 1 and len(got) == len(loader)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(got, epochs[1]))
    ref.close()
    loader.close()


def test_set_epoch_restarts_the_epoch_even_when_it_just_finished(ds13):
    loader = Loader(ds13, 3, seed=2, **CPU)
    epoch0 = collect(loader)
    loader.set_epoch(0)  # loader.epoch is 0 and epoch 0 is finished: epoch 0 again, from its first step
    again = collect(loader)
    assert loader.epoch == 0 and len(again) == len(epoch0)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(epoch0, again))
    collect(loader, n=1)  # break after one step of epoch 1
    loader.set_epoch(1)
    assert loader.state_dict()["step"] == 0 and len(collect(loader)) == len(loader)
    loader.close()


def test_a_loaded_state_resumes_once_and_set_epoch_of_its_epoch_keeps_it(ds13):
    ref = Loader(ds13, 2, seed=4, **CPU)
    ref.set_epoch(1)
    epoch1 = collect(ref)
    src = Loader(ds13, 2, seed=4, **CPU)
    src.set_epoch(1)
    collect(src, n=2)
    state = src.state_dict()
    resumed = Loader(ds13, 2, seed=4, **CPU)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # as a trainer does after restoring a checkpoint: the loaded position stays
    rest = collect(resumed)
    assert len(rest) == len(epoch1) - 2
    assert all(torch.equal(a[1], b[1]) for a, b in zip(rest, epoch1[2:]))
    other = Loader(ds13, 2, seed=4, **CPU)
    other.load_state_dict(state)
    other.set_epoch(3)  # another epoch than the loaded one: it starts at its first step
    assert other.state_dict()["step"] == 0 and len(collect(other)) == len(other)
    for loader in (ref, src, resumed, other):
        loader.close()


# -- distributed evaluation: equal batch counts, padding marked ---------------------------------
@pytest.mark.parametrize("n_fixture", ["ds13", "ds65"])
@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("last_batch, batch", [("partial", 4), ("pad", 4), ("pad", 32), ("partial", 32)])
def test_every_rank_yields_as_many_batches_and_valid_counts_each_sample_once(request, n_fixture, world,
                                                                           last_batch, batch):
    ds = request.getfixturevalue(n_fixture)
    n = len(ShardReader(ds))
    ranks = [Loader(ds, batch, train=False, last_batch=last_batch, rank=r, world_size=world, **CPU)
             for r in range(world)]
    assert len({len(r) for r in ranks}) == 1  # every rank the same number of batches
    counted = np.zeros(n, np.int64)
    for r in ranks:
        for step in range(len(r)):
            keep = r.valid(step)
            sizes = len(keep) == (batch if last_batch == "pad" else len(r.positions(step)))
            assert sizes and len({len(q.positions(step)) for q in ranks}) == 1  # same batch size everywhere
            np.add.at(counted, r.streams[0].index_at(0, r.positions(step))[keep], 1)
    assert counted.tolist() == [1] * n


def test_drop_gives_every_rank_as_many_batches_without_padding(ds13):
    ranks = [Loader(ds13, 2, train=False, last_batch="drop", rank=r, world_size=3, **CPU) for r in range(3)]
    assert [len(r) for r in ranks] == [2, 2, 2]  # floor(floor(13 / 3) / 2), as DistributedSampler(drop_last)
    assert all(r.valid(s).all() for r in ranks for s in range(2))


def test_the_valid_mask_delivered_with_the_batches_counts_each_sample_once(ds13):
    """N = 13 on 3 ranks with batch 4, padded: the labels of the valid rows are every label once."""
    seen = []
    lengths = set()
    for rank in range(3):
        val = Loader(ds13, 4, train=False, last_batch="pad", valid_mask=True, rank=rank, world_size=3, **CPU)
        batches = collect(val)
        lengths.add(len(batches))
        for images, labels, valid in batches:
            assert images.shape[0] == labels.shape[0] == valid.shape[0] == 4 and valid.dtype == torch.bool
            seen += drop_padding(valid, labels).tolist()
        val.close()
    assert lengths == {2} and sorted(seen) == list(range(13))


def test_top1_counts_excludes_padding_and_takes_hard_or_soft_targets():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 5.0]])
    labels = torch.tensor([0, 0, 0, 1])
    valid = torch.tensor([True, True, True, False])
    assert top1_counts(logits, labels, valid).tolist() == [2.0, 3.0]
    assert top1_counts(logits, labels).tolist() == [3.0, 4.0]
    soft = torch.nn.functional.one_hot(labels, 2).float()
    assert top1_counts(logits, soft, valid).dtype == torch.float64
    assert top1_counts(logits, soft, valid).tolist() == [2.0, 3.0]
    a, b = drop_padding(valid, logits, labels)
    assert a.shape == (3, 2) and b.tolist() == [0, 0, 0]


# -- targets -----------------------------------------------------------------------------------
@pytest.mark.parametrize("options, shape, dtype", [
    (dict(), (4, 13), torch.float32),                                  # training default: soft
    (dict(mix="cutmix"), (4, 13), torch.float32),
    (dict(label_smoothing=0.1), (4, 13), torch.float32),
    (dict(targets="hard"), (4,), torch.int64),
    (dict(train=False), (4,), torch.int64),                            # evaluation default: hard
    (dict(train=False, targets="soft"), (4, 13), torch.float32),
])
def test_one_target_shape_per_setting(ds13, options, shape, dtype):
    loader = Loader(ds13, 4, **CPU, **options)
    images, targets = next(iter(loader))
    assert targets.shape == shape and targets.dtype == dtype
    if len(shape) == 2:
        torch.testing.assert_close(targets.sum(1), torch.ones(4))
        if not options.get("mix") and not options.get("label_smoothing"):
            assert set(targets.unique().tolist()) == {0.0, 1.0}  # one-hot
    loader.close()


def test_hard_targets_are_refused_with_mixing_or_smoothing_naming_why(ds13):
    with pytest.raises(ValueError, match=r"targets='hard' gives one class id per sample, but mix='cutmix' "
                                         r"blends two labels per sample: use targets='soft'"):
        Loader(ds13, 4, mix="cutmix", targets="hard", **CPU)
    with pytest.raises(ValueError, match=r"targets='hard' \(the default of train=False\) .* label_smoothing=0.1"):
        Loader(ds13, 4, train=False, label_smoothing=0.1, **CPU)
    with pytest.raises(ValueError, match=r"targets must be 'soft' \(float32 \[B, K\]\) or 'hard'"):
        Loader(ds13, 4, targets="onehot", **CPU)
    with pytest.raises(ValueError, match="valid_mask must be True or False"):
        Loader(ds13, 4, valid_mask=1, **CPU)
