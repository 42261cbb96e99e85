"""The declared sampler protocol (fastcas.sampling.protocol): every index plan a Loader holds
implements it, with the no-op defaults where a sampler has no shard window or own state."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from fastcas.sampling.geometry import StreamGeometry, digest
from fastcas.sampling.plan import PlanSampler
from fastcas.sampling.protocol import IndexSampler, SequentialIndex, weights_digest
from fastcas.sampling.sampler import WeightedSampler
from fastcas.sampling.streaming import StreamingSampler


def samplers():
    from fastcas.loading.streams import StreamIndex

    geo = StreamGeometry(24, 2, 3, "pad")
    streaming = StreamingSampler(np.array([4, 4, 4]), np.full(12, 1 / 12), 24, seed=3, rank=0, world_size=2,
                                 shuffle_buffer=4)
    return {"sequential": SequentialIndex(10, 1, 3),
            "uniform": WeightedSampler(12, 24, seed=3, rank=0, world_size=2, batch_size=3, replacement=False),
            "weighted": WeightedSampler(np.arange(1.0, 13.0), 24, seed=3, rank=0, world_size=2, batch_size=3),
            "plan": PlanSampler(np.array([0, 0, 5, 7, 11]), 12, seed=3, rank=0, world_size=2, batch_size=3),
            "streaming": StreamIndex(streaming, geo)}


@pytest.mark.parametrize("name", ["sequential", "uniform", "weighted", "plan", "streaming"])
def test_every_loader_sampler_implements_the_protocol(name):
    s = samplers()[name]
    assert isinstance(s, IndexSampler)
    idx = s.global_index_at(0, np.arange(6, dtype=np.int64))
    assert idx.dtype == np.int64 and idx.shape == (6,)
    assert isinstance(s.identity()["weights_digest"], str)
    assert isinstance(s.legacy_digest(), str)
    if name == "streaming":
        hold, fetch = s.shard_window(0, np.arange(3, dtype=np.int64))
        assert set(fetch) <= set(hold)
        assert s.state(0, 3)["consumed"] == 3
    else:  # stateless: no shard window, the loader's position is the whole state
        assert s.shard_window(0, np.arange(3)) is None
        assert s.state(0, 3) is None and s.restore(None, 0, 3, 2) is None


def test_sequential_index_maps_local_positions_as_distributed_sampler():
    s = SequentialIndex(10, 1, 3)
    assert s.index_at(0, np.arange(4)).tolist() == [1, 4, 7, 0]  # the last one wraps (padding)
    assert s.real == 3 and len(s) == 4


def test_the_weights_digest_of_a_loader_state_is_unchanged():
    """The digest kept in checkpoints: per stream the public identity's weights_digest, as
    before the protocol (``_config()``, "sequential" for evaluation)."""
    s = samplers()
    want = digest([digest("uniform", 12), "sequential"], 1.0, 0.5)
    assert weights_digest([s["uniform"], s["sequential"]], 1.0, 0.5) == want


def test_loading_does_not_probe_its_own_objects():
    """No hasattr; getattr only for DALI / the OS (pipeline.py, workers.py) or a config field by name."""
    root = Path(__file__).resolve().parents[2] / "fastcas" / "loading"
    for name in ("loader.py", "source.py", "resume.py", "iteration.py", "backends.py", "baseline.py", "faults.py"):
        text = (root / name).read_text()
        assert not re.search(r"\bhasattr\(|\bgetattr\(", text.replace('hasattr(info, "idx_in_epoch")', "")), name
