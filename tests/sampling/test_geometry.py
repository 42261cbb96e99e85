"""Stream geometry: the weighted sampler as a DataLoader sampler resumes at another world size; partial and padded last steps."""
import numpy as np
import pytest

from fastcas import Loader
from fastcas.dataset.reader import ShardReader
from fastcas.sampling import weights as sample_weights
from fastcas.sampling.geometry import StreamGeometry
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


def test_weighted_sampler_as_a_dataloader_sampler_resumes_at_another_world_size():
    labels = np.repeat(np.arange(5), [400, 200, 100, 40, 10])
    w = sample_weights.cmo(labels)
    for replacement, weights in ((True, w), (False, len(labels))):
        def group(ws):
            return [WeightedSampler(weights, 500, seed=4, rank=r, world_size=ws, batch_size=G // ws,
                                    replacement=replacement) for r in range(ws)]

        def steps(samplers):  # the global stream, step by step: ranks' batches concatenated
            its = [iter(s) for s in samplers]
            b = samplers[0].batch_size
            out = []
            while True:
                chunk = [[next(it, None) for _ in range(b)] for it in its]
                if chunk[0][0] is None:
                    return out
                out.append(sum(chunk, []))

        ref = group(2)
        full = steps(ref)
        assert len(full) == -(-500 // G)
        consumer = group(2)[0]
        it = iter(consumer)
        for _ in range(5 * consumer.batch_size):
            next(it)
        state = consumer.state_dict()
        assert state["position"] == 5 * G
        assert consumer.state_dict(consumed=3 * 4)["position"] == 3 * G
        for ws in (4, 1):
            resumed = group(ws)
            for s in resumed:
                s.load_state_dict(state)
                assert len(s) == (len(full) - 5) * s.batch_size
            assert steps(resumed) == full[5:]
            for s in resumed:  # the next epoch starts from its beginning
                s.set_epoch(1)
            assert steps(resumed)[0] != full[0]


def test_geometry_partial_and_pad_last_steps():
    g = StreamGeometry(num_samples=21, world_size=2, batch_size=4, last_batch="partial")
    assert g.steps == 3 and g.step_size(2) == 3
    assert g.positions(2, 0).tolist() == [16, 17, 18] and g.positions(2, 1).tolist() == [19, 20, 21]
    assert g.positions(2, 1, padded=True).tolist() == [19, 20, 21, 22]
    assert g.local_to_global(np.arange(8, 12), 1).tolist() == [19, 20, 21, 22]
    assert StreamGeometry(21, 2, 4, "drop").steps == 2 and StreamGeometry(21, 2, 4, "pad").step_size(2) == 4
    for ws in (1, 2, 4):  # the union of a step is the same block whatever the split
        geo = StreamGeometry(64, ws, 8 // ws)
        assert np.concatenate([geo.positions(3, r) for r in range(ws)]).tolist() == list(range(24, 32))
    with pytest.raises(ValueError, match="not a multiple of the global batch 8"):
        StreamGeometry(64, 2, 4).step_at(12)
