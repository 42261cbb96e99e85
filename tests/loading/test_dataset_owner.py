"""One owner of the dataset: the DALI workers reopen it from the caller's ShardReader's own
reopen spec (its manifest file and cache settings), and ``Loader.close()`` closes only what the
Loader opened (a reader the caller passed stays open, its cache pins held)."""
from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest

from fastcas.dataset.indexer import IndexConfig, index_dataset
from fastcas.dataset.reader import ReopenSpec, ShardReader
from fastcas.dataset.remote import ShardCache
from fastcas.dataset.shards import RawSample, ShardWriterConfig, write_shards
from fastcas.loading.loader import Loader
from tests.dataset.test_remote import served  # noqa: F401 - the HTTP server fixture
from tests.helpers import jpeg_bytes, make_dataset


def _epoch(dataset, **kw):
    """(images, labels) of one evaluation epoch, read by one DALI worker process."""
    opts = dict(train=False, image_size=16, last_batch="partial", py_workers=1, device="cpu")
    opts.update(kw)
    loader = Loader(dataset, 4, **opts)
    try:
        xs, ys = zip(*[(x.numpy().copy(), y.numpy().copy()) for x, y in loader])
    finally:
        loader.close()
    return np.concatenate(xs), np.concatenate(ys)


def _second_manifest(tmp_path):
    """``a/`` holds its own dataset (``manifest.json``) and a second one's manifest, columns and
    tars under other names (``alt.json``, ``alt.cols``, ``alt-*.tar``); ``b/`` is that second
    dataset as written."""
    make_dataset(tmp_path / "a", counts=(3, 3), shard_size=4, seed=0)
    samples = [RawSample(f"t{i:03d}", jpeg_bytes(500 + i), i % 2) for i in range(6)]
    write_shards(samples, tmp_path / "b", ShardWriterConfig(shard_size=4, prefix="alt", class_names=("c0", "c1")))
    for f in (tmp_path / "b").glob("alt-*"):
        shutil.copy(f, tmp_path / "a" / f.name)
    shutil.copytree(tmp_path / "b" / "manifest.cols", tmp_path / "a" / "alt.cols")
    header = json.loads((tmp_path / "b" / "manifest.json").read_text())
    header["columns"]["dir"] = "alt.cols"
    (tmp_path / "a" / "alt.json").write_text(json.dumps(header))
    return tmp_path / "a" / "alt.json"


def test_workers_read_the_manifest_file_the_callers_reader_opened(tmp_path):
    alt = ShardReader(_second_manifest(tmp_path))
    assert alt.root == tmp_path / "a" and list(alt.keys) == [f"t{i:03d}" for i in range(6)]
    x, y = _epoch(alt)
    xb, yb = _epoch(tmp_path / "b")
    xa, _ = _epoch(tmp_path / "a")
    assert y.tolist() == yb.tolist() and np.array_equal(x, xb)  # the second dataset's samples ...
    assert x.shape != xa.shape or not np.array_equal(x, xa)  # ... not the root's manifest.json
    assert bytes(alt[0].data) == jpeg_bytes(500)  # the caller's reader still reads after Loader.close()


def test_the_reopen_spec_is_frozen_validated_and_what_pickling_carries(tmp_path):
    make_dataset(tmp_path / "ds", counts=(2, 2), shard_size=2)
    r = ShardReader(tmp_path / "ds", on_error="defer", cache_dir=tmp_path / "c", cache_max_bytes=123)
    spec = r.reopen_spec
    assert spec == ReopenSpec(str((tmp_path / "ds" / "manifest.json").absolute()), "defer", str(tmp_path / "c"), 123)
    assert spec.root == tmp_path / "ds" and pickle.loads(pickle.dumps(r)).reopen_spec == spec
    assert spec.open().reopen_spec == spec and ReopenSpec.of(tmp_path / "ds").on_error == "raise"
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'defer'"):
        ReopenSpec(spec.manifest, on_error="skip")
    with pytest.raises(ValueError, match="manifest must be an absolute path"):
        ReopenSpec("ds/manifest.json")
    with pytest.raises(Exception, match="cannot assign"):
        spec.cache_dir = "elsewhere"
    # settings given to the Loader that contradict the reader's own are refused, naming both
    with pytest.raises(ValueError, match=r"cache_dir='.*other' given with a ShardReader opened with cache_dir="):
        Loader(r, 2, train=False, device="cpu", cache_dir=str(tmp_path / "other"))
    Loader(r, 2, train=False, device="cpu", cache_dir=str(tmp_path / "c")).close()  # the same: fine


def test_workers_download_into_the_callers_cache_and_close_leaves_its_pins(tmp_path, served):  # noqa: F811
    pattern = "a-{000000..000001}.tar"
    index_dataset([f"{served.url}/{pattern}"], tmp_path / "remote", IndexConfig(cache_dir=str(tmp_path / "c0")))
    index_dataset([str(served.root / pattern)], tmp_path / "local")
    mine = tmp_path / "mine"
    reader = ShardReader(tmp_path / "remote", cache_dir=mine)
    urls = [s["tar"] for s in reader.manifest["shards"]]
    reader.hold([0])  # the caller pins shard 0 for itself
    served.gets.clear()
    x, y = _epoch(reader)  # no cache_dir on the Loader: the reader's is the one
    x0, y0 = _epoch(tmp_path / "local")
    assert y.tolist() == y0.tolist() and np.array_equal(x, x0)
    # downloaded by the worker into the caller's cache, not into the manifest's default (c0)
    assert sorted(served.gets) == ["/a-000000.tar", "/a-000001.tar"]
    assert all(ShardCache(mine).path_for(u).is_file() for u in urls)
    # Loader.close() left the caller's pin: an eviction to 0 bytes keeps shard 0 only
    removed = ShardCache(mine, max_bytes=0).evict()
    assert ShardCache(mine).path_for(urls[0]).is_file() and removed == [ShardCache(mine).path_for(urls[1])]
    assert bytes(reader[0].data)[:2] == bytes(ShardReader(tmp_path / "local")[0].data)[:2]
    reader.close()  # the owner closes it: the pin goes, the shard can be evicted
    assert ShardCache(mine, max_bytes=0).evict() == [ShardCache(mine).path_for(urls[0])]
