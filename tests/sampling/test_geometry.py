"""Stream geometry: the weighted sampler as a DataLoader sampler resumes at another world size; partial and padded last
steps."""

import numpy as np
import pytest

from fastcas.sampling import weights as sample_weights
from fastcas.sampling.geometry import StreamGeometry
from fastcas.sampling.sampler import WeightedSampler

G = 8  # the global batch of every elastic comparison


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
