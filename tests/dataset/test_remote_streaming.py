"""Loader(mode="streaming") over a real HTTP server on 127.0.0.1 with a cache of 25% of the data."""
from collections import Counter

import numpy as np
import pytest

from fastcas.dataset.indexer import IndexConfig, index_dataset
from fastcas.dataset.reader import ShardReader
from tests.dataset.test_index import write_wds
from tests.dataset.test_remote import _Server

torch = pytest.importorskip("torch")
pytest.importorskip("nvidia.dali")

N_SHARDS, PER_SHARD = 16, 3


@pytest.fixture
def remote(tmp_path):
    write_wds(tmp_path / "www", n_jpeg=N_SHARDS * PER_SHARD, n_png=0, maxcount=PER_SHARD)
    for p in (tmp_path / "www").glob("b-*.tar"):
        p.unlink()
    server = _Server(tmp_path / "www")
    index_dataset([f"{server.url}/a-{{000000..{N_SHARDS - 1:06d}}}.tar"], tmp_path / "remote",
                  IndexConfig(cache_dir=str(tmp_path / "c0")))
    yield server, tmp_path / "remote"
    server.close()


def test_each_shard_is_fetched_once_per_epoch_per_rank_with_a_quarter_cache(tmp_path, remote):
    """2 ranks x 2 epochs, a DALI worker process reading the samples: every shard a rank reads
    in an epoch is fetched at most once (exactly once unless it read it the epoch before too), no shard of another rank is fetched, and the labels are the manifest's."""
    from fastcas import Loader

    server, ds = remote
    sizes = [p.stat().st_size for p in server.root.glob("a-*.tar")]
    quarter = sum(sizes) // 4
    reader = ShardReader(ds, cache_dir=tmp_path / "c0")
    for rank in (0, 1):
        cache = tmp_path / f"rank{rank}"
        loader = Loader(ds, 4, rank=rank, world_size=2, mode="streaming", shuffle_buffer=3, image_size=16,
                        py_workers=1, device="cpu", cache_dir=str(cache), cache_max_bytes=quarter, seed=3)
        before: set = set()
        for epoch in (0, 1):
            server.gets.clear()
            loader.set_epoch(epoch)
            labels = torch.cat([y for _, y in loader]).numpy()
            idx = loader.sampler_indices(epoch)[0]
            assert len(labels) == len(loader) * 4 and np.array_equal(labels, reader.labels[idx][: len(labels)])
            mine = {f"/a-{int(s):06d}.tar" for s in loader.streams[0].sampler.shards_of_rank(epoch)}
            got = Counter(server.gets)
            assert set(got) <= mine and max(got.values()) == 1, got
            # a shard this rank read last epoch may still be cached or mapped by its worker; all others: once
            assert set(got) >= mine - before
            before = mine
            assert sum(p.stat().st_size for p in cache.glob("*.tar")) <= quarter
        loader.close()
