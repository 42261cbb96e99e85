"""Elastic exact resume through the Loader: one global stream per epoch, resumable at any world size, bad states name
what differs."""

import numpy as np
import pytest

from fastcas import Loader
from fastcas.dataset.reader import ShardReader
from fastcas.sampling import weights as sample_weights
from fastcas.sampling.sampler import WeightedSampler
from tests.helpers import make_dataset

COUNTS = (24, 12, 6, 3)


G = 8  # the global batch of every elastic comparison


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("elastic") / "ds"
    make_dataset(root, counts=COUNTS, shard_size=16, size=(48, 36))
    return root


@pytest.fixture(scope="module")
def scores(ds):
    n = len(ShardReader(ds))
    return 20.0 + (np.arange(n) * 7919) % 37  # CAS-like sums of ranks


RECIPES = {
    "cas-cutmix": dict(weights="cas", mix="cutmix", alpha=0.2),
    "cmo-two-stream": dict(weights="uniform", foreground_weights="cmo", mix="cutmix", mix_prob=0.5),
    "uniform-shuffle-fmix": dict(weights="uniform", mix="fmix", alpha=1.0),
}


def loaders(ds, scores, recipe, world_size, epoch_length=60, **kw):
    b = G // world_size
    opts = dict(RECIPES[recipe], image_size=16, epoch_length=epoch_length, seed=11, device="cpu", py_workers=0, **kw)
    return [Loader(ds, b, scores=scores, rank=r, world_size=world_size, **opts) for r in range(world_size)]


def records(plan):
    """Per position: (position, sample key, crop window, flip, measured lambda, partner key[, fg key])."""
    out = {}
    p = plan["params"]
    for j, g in enumerate(plan["positions"].tolist()):
        rec = (plan["keys"][0][j], tuple(plan["windows"][0][j].tolist()), int(plan["flips"][0][j]),
               float(p.lam[j]), plan["partner_keys"][j])
        if len(plan["keys"]) == 2:  # CMO: the foreground's own crop and flip too
            rec += (tuple(plan["windows"][1][j].tolist()), int(plan["flips"][1][j]))
        if p.masks is not None:
            rec += (p.masks[j].tobytes(),)
        out[g] = rec
    return out


def stream(group, start_step=0, epoch=0):
    """The concatenated stream of a group of rank loaders, by global position."""
    out = {}
    for t in range(start_step, len(group[0])):
        for loader in group:
            out.update(records(loader.plan(t, epoch)))
    return out


def _torchrun(nproc, args, root):
    import os
    import subprocess
    import sys

    # --standalone: torchrun picks a free rendezvous port itself (no fixed port to collide on)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "fastcas", *args]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_resume_at_another_world_size_continues_the_stream_exactly(ds, scores, recipe):
    ref_group = loaders(ds, scores, recipe, 2)
    reference = stream(ref_group)
    assert sorted(reference) == list(range(len(ref_group[0]) * G))  # every position once, in blocks
    k = 3
    saved = ref_group[0]
    saved.step = k  # rank 0 of world size 2 after k steps
    state = saved.state_dict()
    assert state["position"] == k * G and state["global_batch"] == G
    for ws in (4, 1):
        group = loaders(ds, scores, recipe, ws)
        for loader in group:
            loader.load_state_dict(state)
            assert (loader.epoch, loader.step) == (0, k)
        resumed = stream(group, start_step=k)
        assert sorted(resumed) == list(range(k * G, len(group[0]) * G))
        for g in resumed:
            assert resumed[g] == reference[g], (ws, g)
    # the next epoch is a different stream, and also split-independent
    assert stream(loaders(ds, scores, recipe, 4), epoch=1) == stream(ref_group, epoch=1) != reference


@pytest.mark.dali
@pytest.mark.parametrize("mix", ["cutmix", "fmix", "saliencymix"])
def test_dali_batches_at_world_size_one_equal_the_concatenated_world_size_two_batches(ds, mix):
    """Through DALI on CPU: after 2 steps at world size 2 (b = 4), world size 1 (b = 8) resumes
    with batches whose pixels and targets are the two ranks' batches concatenated (each kind
    mixed inside the DALI graph)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("nvidia.dali")
    kw = dict(weights="cmo", mix=mix, alpha=1.0, image_size=16, epoch_length=40, seed=3, device="cpu",
              py_workers=0)
    ranks = [Loader(ds, 4, rank=r, world_size=2, **kw) for r in range(2)]
    per_rank = [[[t.clone() for t in b] for b in r] for r in ranks]
    k = 2
    one = Loader(ds, 4 * 2, **kw)
    ranks[0].step = k
    one.load_state_dict(ranks[0].state_dict())
    got = [[t.clone() for t in b] for b in one]
    assert len(got) == len(per_rank[0]) - k == 3
    for j, (images, targets) in enumerate(got):
        a, b = per_rank[0][k + j], per_rank[1][k + j]
        assert torch.equal(images, torch.cat([a[0], b[0]])) and torch.equal(targets, torch.cat([a[1], b[1]]))


def test_bad_states_name_what_differs(ds, scores, tmp_path):
    base = dict(weights="cas", mix="cutmix", image_size=16, epoch_length=60, seed=11, device="cpu", py_workers=0)
    a = Loader(ds, 4, scores=scores, rank=0, world_size=2, **base)
    a.step = 2
    state = a.state_dict()

    def load(*args, **kw):
        Loader(*args, **kw).load_state_dict(state)

    with pytest.raises(ValueError, match=r"seed"):
        load(ds, 4, scores=scores, rank=0, world_size=2, **{**base, "seed": 12})
    with pytest.raises(
        ValueError, match=r"global_batch \(saved 8, now 12 = batch_size 4 x world size 3\); .* per-rank batch of 8 / 3"
    ):
        load(ds, 4, scores=scores, rank=0, world_size=3, **base)
    with pytest.raises(ValueError, match=r"weights_digest"):
        load(ds, 8, scores=scores + 1, **base)
    with pytest.raises(ValueError, match=r"weights \(saved 'cas', now 'cmo'\)"):
        load(ds, 8, **{**base, "weights": "cmo"})
    with pytest.raises(ValueError, match=r"epoch_length \(saved 60, now 64\)"):
        load(ds, 8, scores=scores, **{**base, "epoch_length": 64})
    with pytest.raises(ValueError, match=r"resuming mid-epoch.*alpha \(saved 1.0, now 0.2\)"):
        load(ds, 8, scores=scores, **{**base, "alpha": 0.2})
    other = tmp_path / "other"
    make_dataset(other, counts=COUNTS, shard_size=16, size=(48, 36), seed=1)
    with pytest.raises(ValueError, match=r"dataset \(saved '[0-9a-f]+', now '[0-9a-f]+'\)"):
        load(other, 8, scores=scores, **base)
    # at an epoch boundary the mixing settings may change (a schedule that switches mixing on)
    a.step = 0
    state = a.state_dict()
    b = Loader(ds, 8, scores=scores, **{**base, "mix": None})
    b.load_state_dict(state)
    # a state at the end of its epoch: the next epoch starts
    a.step = len(a)
    b.load_state_dict(a.state_dict())
    assert b.step == len(b) and b.plan(0, b.epoch + 1)["positions"].tolist() == list(range(8))
    # samplers: the same checks
    s = WeightedSampler(sample_weights.cmo(ShardReader(ds).labels), 100, seed=1, world_size=2, rank=0, batch_size=4)
    st = s.state_dict(consumed=8)
    with pytest.raises(ValueError, match=r"global_batch \(saved 8, now 6\)"):
        WeightedSampler(
            sample_weights.cmo(ShardReader(ds).labels), 100, seed=1, world_size=2, rank=0, batch_size=3
        ).load_state_dict(st)
    with pytest.raises(ValueError, match=r"weights_digest"):
        WeightedSampler(np.ones(45), 100, seed=1, world_size=2, rank=0, batch_size=4).load_state_dict(st)
    with pytest.raises(ValueError, match=r"multiple of batch_size=4"):
        s.state_dict(consumed=6)
    end = s.state_dict(consumed=len(s))
    t = WeightedSampler(sample_weights.cmo(ShardReader(ds).labels), 100, seed=1, world_size=1, rank=0, batch_size=8)
    t.load_state_dict(end)
    assert t.epoch == 1 and len(t) == t.per_rank


@pytest.mark.slow
@pytest.mark.dali
@pytest.mark.distributed
def test_torchrun_training_resumes_at_another_nproc_per_node(tmp_path):
    """2 processes x batch 4 for 4 steps, then --resume with 1 process x batch 8 (same global
    batch): the run continues at global step 4 and finishes; another global batch is refused."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("nvidia.dali")
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    make_dataset(tmp_path / "train", counts=(20, 10, 5, 3), shard_size=16, size=(24, 20), seed=1)
    out = tmp_path / "run"
    common = ["train", str(tmp_path / "train"), "--model", "resnet32", "--epochs", "2", "--image-size", "16",
              "--epoch-length", "48", "--py-workers", "0", "--out", str(out), "--no-amp", "--weights", "cmo",
              "--mix", "cutmix", "--checkpoint-every", "2", "--device", "cpu"]
    p = _torchrun(2, common + ["--batch-size", "4", "--max-steps", "4"], root)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert (state["global_step"], state["loader"]["position"], state["loader"]["world_size"]) == (4, 32, 2)
    bad = _torchrun(1, common + ["--batch-size", "4", "--resume"], root)
    # refused before anything trains: the run directory's saved configuration (fastcas.train.rundir)
    assert bad.returncode != 0 and "global batch (batch_size x world size): 8 -> 4" in bad.stderr + bad.stdout
    p = _torchrun(1, common + ["--batch-size", "8", "--resume"], root)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    final = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert final["global_step"] == 12 and final["epoch"] == 2 and final["loader"]["world_size"] == 1


def test_streaming_resume_exact_at_the_same_world_size_and_shard_granular_at_another():
    from fastcas.sampling.streaming import StreamingSampler

    labels = np.repeat(np.arange(5), [400, 200, 100, 40, 10])
    w = sample_weights.cmo(labels)
    counts = [50] * 15

    def group(ws):
        return [StreamingSampler(counts, w, seed=2, rank=r, world_size=ws, shuffle_buffer=16) for r in range(ws)]

    full = [s.indices(0) for s in group(2)]
    k = 120
    saver = group(2)[1]
    it = iter(saver)
    for _ in range(k):
        next(it)
    state = saver.state_dict()
    assert state["consumed"] == k
    same = group(2)
    for s in same:
        s.load_state_dict(state)
    assert all(np.array_equal(s.indices(0), f[k:]) for s, f in zip(same, full))  # exact
    for ws in (3, 1):
        resumed = group(ws)
        for s in resumed:
            s.load_state_dict(state)
        rest = np.concatenate([s.indices(0) for s in resumed])
        assert abs(len(rest) - (750 - 2 * k)) < ws  # the remaining draws, split over the new ranks
        shard = np.searchsorted(saver.starts, rest, side="right") - 1
        before = np.concatenate([f[:k] for f in full])
        c0 = saver.counts(0)
        # shards the old ranks had finished are not read again; every other drawn sample still comes
        unfinished = [
            s_
            for s_ in range(15)
            if np.bincount(before, minlength=750)[saver.starts[s_] : saver.starts[s_ + 1]].sum()
            < c0[saver.starts[s_] : saver.starts[s_ + 1]].sum()
        ]
        assert set(np.unique(shard)) <= set(unfinished) and len(unfinished) < 15
    with pytest.raises(ValueError, match="seed"):
        StreamingSampler(counts, w, seed=3).load_state_dict(state)
    end = group(1)[0]
    end.load_state_dict({**state, "consumed": 375})
    assert end.epoch == 1
