"""The public seams tests and tools use instead of private hooks: the fetch trace
(``SampleSource(config, on_fetch=...)``), ``Loader.source``, ``Loader.graph_mix``."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from fastcas import Loader
from fastcas.loading.source import SampleSource
from tests.helpers import make_dataset


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("seams") / "ds"
    make_dataset(root, counts=(6, 4, 2), shard_size=5, size=(24, 20))
    return root


@pytest.mark.parametrize("opts", [dict(), dict(foreground_weights="cmo", mix="cutmix")])
def test_the_fetch_trace_names_the_samples_plan_lists_in_stream_order(ds, opts):
    loader = Loader(ds, 4, device="cpu", py_workers=0, seed=3, image_size=16, **opts)
    seen: list[int] = []
    source = SampleSource(loader.source(0, 2).config, on_fetch=seen.append)
    source.batch(0, 2 * 4 + np.arange(4))
    plan = loader.plan(2, epoch=0)
    assert seen == [int(i) for idx in plan["indices"] for i in idx]  # stream 0's slots, then stream 1's
    assert pickle.loads(pickle.dumps(source)).on_fetch is None  # a worker's copy reports nothing back
    loader.close()


def test_graph_mix_says_where_mixing_runs(ds):
    kw = dict(device="cpu", py_workers=0, image_size=16)
    assert Loader(ds, 4, mix="cutmix", **kw).graph_mix == "cutmix"
    assert Loader(ds, 4, mix="cutmix", mix_in_pipeline=False, **kw).graph_mix is None
    assert Loader(ds, 4, mix="mixup", **kw).graph_mix is None and Loader(ds, 4, **kw).graph_mix is None
