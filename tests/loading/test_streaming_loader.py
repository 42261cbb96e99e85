"""Loader(mode="streaming"): each rank reads its own shards in order, weighted, resumable."""
import numpy as np
import pytest
from scipy import stats

torch = pytest.importorskip("torch")
pytest.importorskip("nvidia.dali")

from fastcas import Loader  # noqa: E402
from fastcas.dataset.reader import ShardReader  # noqa: E402
from fastcas.sampling import weights as sample_weights  # noqa: E402
from tests.helpers import collect, make_dataset  # noqa: E402

pytestmark = pytest.mark.dali
COUNTS = (24, 12, 6, 3)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("streaming") / "ds"
    make_dataset(root, counts=COUNTS, shard_size=8, size=(40, 32))
    return root


KW = dict(image_size=16, py_workers=0, device="cpu", mode="streaming", shuffle_buffer=6)


def test_each_rank_reads_only_its_shards_with_the_manifest_labels(ds):
    r = ShardReader(ds)
    seen = set()
    for rank in (0, 1):
        loader = Loader(ds, 4, rank=rank, world_size=2, seed=2, targets="hard", **KW)
        sampler = loader.streams[0].sampler
        mine = set(int(s) for s in sampler.shards_of_rank(0))
        idx = loader.sampler_indices(0)[0]
        assert {r.shard_of(int(i)) for i in idx} <= mine  # no shard of the other rank
        labels = torch.cat([b[1] for b in collect(loader)]).numpy()
        assert np.array_equal(labels, r.labels[idx][: len(labels)])
        seen |= mine
    assert seen == set(range(len(r.starts) - 1))


def test_len_is_steps_per_epoch(ds):
    loader = Loader(ds, 4, epoch_length=40, rank=0, world_size=2, **KW)
    assert len(loader) == 40 // 8 and len(collect(loader)) == 5


def test_class_frequencies_match_the_weights_over_epochs(ds):
    """CMO weights, background and foreground streams, pooled over several epochs (fixed seed)."""
    r = ShardReader(ds)
    loader = Loader(ds, 8, weights="cmo", foreground_weights="cmo", mix="cutmix", epoch_length=200, seed=7, **KW)
    q = sample_weights.cmo_class_probabilities(r.class_counts)
    for s in (0, 1):
        labels = np.concatenate([r.labels[loader.sampler_indices(e)[s]] for e in range(5)])
        assert stats.chisquare(np.bincount(labels, minlength=4), q * len(labels)).pvalue > 1e-3
    a, b = loader.sampler_indices(0)
    assert not np.array_equal(a, b)  # the foreground stream has its own key


def test_mid_epoch_resume_gives_the_identical_remaining_stream(ds):
    kw = dict(KW, weights="cmo", epoch_length=48, seed=5, mix="cutmix")
    reference = collect(Loader(ds, 8, **kw))
    assert len(reference) == 6
    first = Loader(ds, 8, **kw)
    collect(first, n=2)
    state = first.state_dict()
    assert state["mode"] == "streaming" and state["step"] == 2
    resumed = Loader(ds, 8, **kw)
    resumed.load_state_dict(state)
    rest = collect(resumed)
    assert len(rest) == 4
    for (xa, ya), (xb, yb) in zip(reference[2:], rest):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_resume_at_another_world_size_is_shard_granular(ds):
    """2 ranks x 4 -> 1 rank x 8 (same global batch): the remaining steps come from shards not
    fully emitted before the save."""
    kw = dict(KW, epoch_length=48, seed=5, targets="hard")
    old = [Loader(ds, 4, rank=rk, world_size=2, **kw) for rk in (0, 1)]
    for ld in old:
        collect(ld, n=4)
    new = Loader(ds, 8, **kw)
    new.load_state_dict(old[0].state_dict())
    assert new.step == 4
    r = ShardReader(ds)
    # the shards each old rank had emitted in full before the save (16 draws each)
    done = set()
    for ld in old:
        emitted = ld.streams[0].global_index_at(0, ld.geometry.rank_positions(ld.rank)[:16])
        sampler = ld.streams[0].sampler
        for s in {r.shard_of(int(i)) for i in emitted}:
            total = int(sampler.counts(0, int(r.starts[s]), int(r.starts[s + 1])).sum())
            if sum(r.shard_of(int(i)) == s for i in emitted) >= total:
                done.add(s)
    idx = new.streams[0].global_index_at(0, new.geometry.rank_positions(0, 4))
    assert len(idx) == (len(new) - 4) * 8
    assert done and not {r.shard_of(int(i)) for i in idx} & done  # no fully emitted shard is read again
    labels = torch.cat([y for _, y in collect(new)]).numpy()
    assert np.array_equal(labels, r.labels[idx])


def test_mode_errors(ds):
    with pytest.raises(ValueError, match="mode must be 'exact' or 'streaming'"):
        Loader(ds, 4, mode="stream", device="cpu")
    with pytest.raises(ValueError, match="shuffle_buffer applies to mode='streaming' only"):
        Loader(ds, 4, shuffle_buffer=8, device="cpu")
    with pytest.raises(ValueError, match="shuffle_buffer must be >= 0"):
        Loader(ds, 4, mode="streaming", shuffle_buffer=-1, device="cpu")
    with pytest.raises(ValueError, match="mode='streaming' is for training"):
        Loader(ds, 4, mode="streaming", train=False, device="cpu")
    exact = Loader(ds, 4, image_size=16, py_workers=0, device="cpu", epoch_length=16)
    stream = Loader(ds, 4, epoch_length=16, **KW)
    with pytest.raises(ValueError, match="saved by a mode='exact' loader, this loader has mode='streaming'"):
        stream.load_state_dict(exact.state_dict())
    with pytest.raises(ValueError, match="saved by a mode='streaming' loader, this loader has mode='exact'"):
        exact.load_state_dict(stream.state_dict())
