"""Tar member names over 100 bytes (GNU longname ``L``, pax ``path``, ustar prefix) are checked
at read like short ones: a tar re-packed at the same size, or an offset pointing at another
member, is "this tar changed since it was indexed" for the whole shard, named once."""
from __future__ import annotations

import io
import json
import tarfile
import warnings

import pytest

from fastcas.core.errors import CorruptSampleError
from fastcas.dataset.indexer import index_dataset
from fastcas.dataset.reader import ShardReader
from fastcas.dataset.tarname import member_name
from tests.helpers import convert, index_json, jpeg_bytes

FORMATS = {"gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT, "ustar": tarfile.USTAR_FORMAT}
IMAGE = jpeg_bytes(0, (24, 20))  # one image for all: members of equal size, so a re-pack keeps the tar's size


def _key(j: int, fmt: str) -> str:
    if fmt == "ustar":  # a ustar name over 100 bytes must split at a '/' into prefix (155) + name (100)
        return f"{'d' * 90}/{'n' * 60}{j:03d}"
    return f"sample-{'x' * 120}-{j:03d}"


def _tar(path, keys, labels, fmt: str) -> None:
    with tarfile.open(path, "w", format=FORMATS[fmt]) as t:
        for k, y in zip(keys, labels):
            for ext, data in (("jpg", IMAGE), ("cls", str(y).encode())):
                info = tarfile.TarInfo(f"{k}.{ext}")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))


def _indexed(tmp_path, fmt: str, n: int = 6, manifest: str = "columns"):
    """``manifest="json"``: the index in the JSON format of older versions (edited, then converted)."""
    keys = [_key(j, fmt) for j in range(n)]
    (tmp_path / "w").mkdir()
    _tar(tmp_path / "w" / "a.tar", keys, [j % 3 for j in range(n)], fmt)
    (index_json if manifest == "json" else index_dataset)([tmp_path / "w" / "a.tar"], tmp_path / "ix")
    return keys


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_long_names_read_back_and_are_named_in_full(tmp_path, fmt):
    keys = _indexed(tmp_path, fmt)
    assert all(len(f"{k}.jpg".encode()) > 100 for k in keys)
    r = ShardReader(tmp_path / "ix")
    assert [r[i].key for i in range(len(r))] == keys and [r[i].label for i in range(len(r))] == [0, 1, 2, 0, 1, 2]
    m = (tmp_path / "w" / "a.tar").read_bytes()
    assert member_name(m, int(r._offset[2])) == f"{keys[2]}.jpg"
    assert member_name(m, int(r._offset[2]) + 512) is None  # inside data: no header before it


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_a_tar_repacked_at_the_same_size_is_refused_for_the_whole_shard_named_once(tmp_path, fmt):
    keys = _indexed(tmp_path, fmt)
    tar = tmp_path / "w" / "a.tar"
    size = tar.stat().st_size
    _tar(tar, keys[::-1], [2, 1, 0, 2, 1, 0], fmt)  # other samples at the indexed offsets
    assert tar.stat().st_size == size
    r = ShardReader(tmp_path / "ix", on_error="defer")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(len(r)):
            with pytest.raises(CorruptSampleError, match=r"a\.tar: index does not match its tar at key .*this tar "
                                                         r"changed since it was indexed.*re-run `fastcas index`"):
                r[i]
    named = [w for w in caught if "this tar changed" in str(w.message)]
    assert len(named) == 1 and keys[-1] in str(named[0].message)  # the header names the re-packed member


@pytest.mark.parametrize("fmt", ["gnu", "pax"])
def test_an_offset_landing_on_another_long_named_member_is_caught(tmp_path, fmt):
    _indexed(tmp_path, fmt, manifest="json")
    p = tmp_path / "ix" / "manifest.json"
    m = json.loads(p.read_text())
    m["image_offset"][0], m["image_size"][0] = m["image_offset"][1], m["image_size"][1]
    p.write_text(json.dumps(m))
    r = convert(tmp_path / "ix")
    with pytest.raises(CorruptSampleError, match=rf"at key '{m['keys'][0]}' .* names '{m['keys'][1]}\.jpg'"), \
            pytest.warns(RuntimeWarning, match="this tar changed since it was indexed"):
        r[0]


def test_a_metadata_offset_landing_on_another_samples_json_is_caught(tmp_path):
    keys = [_key(j, "pax") for j in range(3)]
    (tmp_path / "w").mkdir()
    with tarfile.open(tmp_path / "w" / "a.tar", "w", format=tarfile.PAX_FORMAT) as t:
        for j, k in enumerate(keys):
            for ext, data in (("jpg", IMAGE), ("cls", b"1"), ("json", json.dumps({"j": j}).encode())):
                info = tarfile.TarInfo(f"{k}.{ext}")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    index_json([tmp_path / "w" / "a.tar"], tmp_path / "ix")
    p = tmp_path / "ix" / "manifest.json"
    m = json.loads(p.read_text())
    m["meta_offset"][0], m["meta_size"][0] = m["meta_offset"][1], m["meta_size"][1]
    p.write_text(json.dumps(m))
    r = convert(tmp_path / "ix")
    assert r.metadata(1) == {"j": 1} and r.metadata(2) == {"j": 2}  # the members not edited
    with pytest.raises(CorruptSampleError, match=rf"at key '{keys[0]}' .* names '{keys[1]}\.json'"), \
            pytest.warns(RuntimeWarning, match="this tar changed since it was indexed"):
        r.metadata(0)


@pytest.mark.dali
@pytest.mark.parametrize("workers", [0, 1])
def test_a_loader_names_a_changed_shard_once_not_once_per_sample(tmp_path, workers):
    """strict=False: the six samples of the re-packed tar are skipped and counted, and the
    shard is named in ONE warning with the command that fixes it (before: one "skipped
    unreadable sample" warning per sample, and the shard's warning only in a worker's stderr)."""
    pytest.importorskip("nvidia.dali")
    from fastcas import Loader

    keys = [_key(j, "gnu") for j in range(12)]
    (tmp_path / "w").mkdir()
    _tar(tmp_path / "w" / "a.tar", keys[:6], [j % 3 for j in range(6)], "gnu")
    _tar(tmp_path / "w" / "b.tar", keys[6:], [j % 3 for j in range(6)], "gnu")
    index_dataset([tmp_path / "w" / "a.tar", tmp_path / "w" / "b.tar"], tmp_path / "ix")
    _tar(tmp_path / "w" / "a.tar", keys[5::-1], [2, 1, 0, 2, 1, 0], "gnu")  # re-packed at the same size
    loader = Loader(tmp_path / "ix", 4, train=False, image_size=16, py_workers=workers, device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        n = sum(len(b[1]) for b in loader)
    loader.close()
    assert n == 12 and sorted(loader.skipped) == sorted(keys[:6])
    named = [str(w.message) for w in caught if "this tar changed since it was indexed" in str(w.message)]
    assert len(named) == 1 and "a.tar" in named[0] and "re-run `fastcas index`" in named[0]
    assert not [w for w in caught if "skipped unreadable sample" in str(w.message)]
