"""The columnar, memory-mapped manifest: what is written, what a reader maps, bulk key joins,
conversion from JSON manifests, and score / CDF columns cached beside the manifest."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from fastcas.cli import main
from fastcas.core.errors import ShardError
from fastcas.dataset.manifest import COLUMNS_DIR, KeyColumn, encode_keys, key_hashes
from fastcas.dataset.reader import ShardReader
from fastcas.dataset.scorefile import read_scores, write_scores
from tests.helpers import convert, make_dataset


def test_columnar_manifest_holds_no_per_sample_lists_and_maps_its_columns(tmp_path):
    m = make_dataset(tmp_path / "ds", counts=(5, 3, 2), shard_size=4, meta=True)
    header = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert header["format"] == "fastcas-shards/2" and "keys" not in header and "labels" not in header
    assert header["columns"]["num_samples"] == 10 and len(header["columns"]["hash"]) == 64
    r = ShardReader(tmp_path / "ds")
    assert isinstance(r.keys, KeyColumn) and isinstance(r.labels, np.memmap)
    assert r.labels.dtype == np.int64 and r.class_counts.tolist() == [5, 3, 2]
    assert "keys" not in r.manifest and "labels" not in r.manifest  # the header only, no per-sample lists
    j = make_dataset(tmp_path / "js", counts=(5, 3, 2), shard_size=4, meta=True, manifest="json")
    assert m["keys"] == j["keys"]
    q = convert(tmp_path / "js")  # the JSON manifest's index files read once, into columns
    assert r.keys == q.keys
    assert r.labels.tolist() == q.labels.tolist() and r.sizes.tolist() == q.sizes.tolist()
    for i in range(len(r)):
        assert bytes(r[i].data) == bytes(q[i].data) and r.metadata(i) == q.metadata(i)
    blob = pickle.dumps(r)
    assert len(blob) < 2_000 and b"s0000" not in blob  # a path, never the keys
    r2 = pickle.loads(blob)
    assert r2.keys == r.keys and bytes(r2[3].data) == bytes(r[3].data)


def test_key_column_sequence_and_bulk_lookup():
    keys = [f"k{i:03d}/é{i % 7}" for i in range(300)] + ["x"]
    col = KeyColumn.from_strings(keys)
    assert len(col) == 301 and col[0] == keys[0] and col[-1] == "x" and col[5:8] == keys[5:8]
    assert col == keys and list(col) == keys and col.index("k010/é3") == 10 and "x" in col and "y" not in col
    with pytest.raises(IndexError, match="out of range for 301 keys"):
        col[301]
    query = [keys[7], "missing", keys[300], keys[0]]
    assert col.positions(query).tolist() == [7, -1, 300, 0]
    off, blob = encode_keys(keys[::-1])
    assert col.lookup(off, blob).tolist() == list(range(300, -1, -1))
    assert col.first_duplicate() is None
    assert KeyColumn.from_strings(["a", "b", "c", "b"]).first_duplicate() == (1, 3)
    h = key_hashes(*encode_keys(["ab", "ab\0", "ba", "ab"]))
    assert h[0] == h[3] and len({int(h[0]), int(h[1]), int(h[2])}) == 3  # padding does not collide


def test_duplicate_keys_are_an_error_and_leave_no_manifest(tmp_path):
    from fastcas.dataset.shards import write_shards
    from tests.helpers import jpeg_bytes

    data = jpeg_bytes(0)
    with pytest.raises(ValueError, match="duplicate key 'b': samples 1 and 3"):
        write_shards([("a", data, 0), ("b", data, 0), ("c", data, 1), ("b", data, 1)], tmp_path / "o")
    assert not (tmp_path / "o" / "manifest.json").exists() and not (tmp_path / "o" / COLUMNS_DIR).exists()


def test_changed_or_missing_shard_and_missing_column_are_named(tmp_path):
    m = make_dataset(tmp_path / "ds", shard_size=5)
    root = tmp_path / "ds"
    tar = root / m["shards"][1]["tar"]
    tar.write_bytes(tar.read_bytes()[:1024])
    with pytest.raises(Exception, match=f"{tar.name}: shard changed"):
        ShardReader(root)
    r = ShardReader(root, on_error="defer")
    assert list(r.broken) == [1] and bytes(r[0].data)[:2] == b"\xff\xd8"
    (root / COLUMNS_DIR / "label.npy").unlink()
    with pytest.raises(Exception, match="label.npy: manifest column is missing"):
        ShardReader(root)


def test_convert_columns_to_json_and_back(tmp_path, capsys):
    make_dataset(tmp_path / "ds", counts=(4, 4), shard_size=3, meta=True)
    before = ShardReader(tmp_path / "ds")
    keys, labels, data = list(before.keys), before.labels.tolist(), [bytes(s.data) for s in before]
    assert main(["convert", str(tmp_path / "ds"), "--to", "json"]) == 0
    m = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert m["format"] == "fastcas-shards/1" and m["keys"] == keys and m["labels"] == labels
    assert not (tmp_path / "ds" / COLUMNS_DIR).exists()
    with pytest.raises(ShardError, match=r"a JSON manifest .*`fastcas convert .*ds`"):
        ShardReader(tmp_path / "ds")
    assert main(["convert", str(tmp_path / "ds")]) == 0
    assert "fastcas-shards/2" in capsys.readouterr().out
    r = ShardReader(tmp_path / "ds")
    assert r.keys == keys and r.labels.tolist() == labels and [bytes(s.data) for s in r] == data
    assert r.metadata(0) == before.metadata(0) and r.sizes.tolist() == before.sizes.tolist()
    assert (tmp_path / "ds" / "manifest.json.v1").exists()
    assert main(["convert", str(tmp_path / "ds")]) == 2  # already columnar


def test_score_join_by_key_in_bulk_names_the_first_missing_key(tmp_path):
    make_dataset(tmp_path / "ds", counts=(4, 3), shard_size=3)
    r = ShardReader(tmp_path / "ds")
    keys = list(r.keys)
    perm = np.random.default_rng(0).permutation(len(keys))
    cas = np.arange(len(keys)) + 10
    write_scores(tmp_path / "s.parquet", [keys[i] for i in perm], r.labels[perm], cas[perm], None, {})
    t = read_scores(tmp_path / "s.parquet", keys=r.keys)
    assert t.cas.tolist() == cas.tolist() and t.labels.tolist() == r.labels.tolist() and t.keys is r.keys
    assert read_scores(tmp_path / "s.parquet", keys=keys).cas.tolist() == cas.tolist()  # the list path agrees
    write_scores(tmp_path / "bad.parquet", keys[1:], r.labels[1:], cas[1:], None, {})
    with pytest.raises(ValueError, match=f"key '{keys[0]}' \\(6 scored samples, dataset has 7\\)"):
        read_scores(tmp_path / "bad.parquet", keys=r.keys)


def test_sampler_over_a_shared_cdf_draws_the_same_and_pickles_as_a_path(tmp_path):
    from fastcas.sampling.sampler import WeightedSampler

    w = np.array([0.5, 0.0, 2.0, 1.0, 0.0, 3.0, 0.0])
    np.save(tmp_path / "cdf.npy", np.cumsum(w))
    cdf = np.load(tmp_path / "cdf.npy", mmap_mode="r")
    a = WeightedSampler(w, 50, seed=3, rank=1, world_size=2)
    b = WeightedSampler.from_cdf(cdf, 50, seed=3, rank=1, world_size=2, weights_digest="abc")
    assert np.array_equal(a.indices(0), b.indices(0)) and b._last == a._last == 5
    assert b.state_dict()["weights_digest"] == "abc"
    blob = pickle.dumps(b)
    assert len(blob) < 2_000
    c = pickle.loads(blob)
    assert isinstance(c._cdf, np.memmap) and np.array_equal(c.indices(1), b.indices(1))


def test_loader_caches_score_and_cdf_columns_and_digests_in_constant_time(tmp_path):
    from fastcas.loading.loader import Loader

    make_dataset(tmp_path / "ds", counts=(6, 3, 1), shard_size=4)
    r = ShardReader(tmp_path / "ds")
    write_scores(tmp_path / "s.parquet", list(r.keys), r.labels, np.arange(len(r)) % 4 + 1, None, {})
    kw = dict(weights="cas", scores=str(tmp_path / "s.parquet"), image_size=16, device="cpu", py_workers=0)
    a = Loader(tmp_path / "ds", 4, **kw)
    cache = sorted(p.name for p in (tmp_path / "ds" / ".fastcas-cache").iterdir())
    assert any(n.startswith("cas-") for n in cache) and any(n.startswith("cdf-") for n in cache)
    assert isinstance(a.streams[0]._cdf, np.memmap) and isinstance(a.scores, np.memmap)
    b = Loader(tmp_path / "ds", 4, **kw)  # the second process maps what the first built
    assert np.array_equal(a.sampler_indices(0)[0], b.sampler_indices(0)[0])
    assert a.state_dict()["config"] == b.state_dict()["config"]
    other = Loader(tmp_path / "ds", 4, **{**kw, "b": 2.0})
    assert other.state_dict()["config"]["weights_digest"] != a.state_dict()["config"]["weights_digest"]
    with pytest.raises(ValueError, match="weights_digest"):
        other.load_state_dict({**a.state_dict(), "step": 1, "position": 4})


def test_a_state_with_the_older_cdf_hash_digest_still_loads(tmp_path):
    from fastcas.loading.loader import Loader
    from fastcas.sampling.geometry import digest

    make_dataset(tmp_path / "ds", counts=(6, 3, 1), shard_size=4)
    loader = Loader(tmp_path / "ds", 2, weights="cmo", image_size=16, device="cpu", py_workers=0)
    state = loader.state_dict()
    old = digest([digest(np.asarray(loader.streams[0]._cdf))], loader.config.cas_power, loader.config.cmo_power)
    state["config"] = {**state["config"], "weights_digest": old}
    loader.load_state_dict({**state, "step": 1, "position": 2})
    assert loader.step == 1
    state["config"]["weights_digest"] = "0" * 16
    with pytest.raises(ValueError, match="weights_digest"):
        loader.load_state_dict(state)
