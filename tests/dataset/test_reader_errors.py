"""ShardReader / index error paths, indexing, deferred errors, and multi-digit ``.cls`` labels
read by DALI's own webdataset reader. The checks of a JSON manifest and its index files run in
``fastcas convert`` (the only reader of JSON manifests): those tests convert an edited one."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from fastcas.core.errors import CorruptSampleError, ShardError
from fastcas.dataset.convert import convert_manifest
from fastcas.dataset.reader import ShardReader
from tests.helpers import convert, make_dataset

COUNTS = (3, 2, 2)  # 7 samples, shards of 3: 3 + 3 + 1


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("rd") / "ds"
    make_dataset(root, counts=COUNTS, shard_size=3, size=(16, 12))
    return root


@pytest.fixture
def ds(pristine, tmp_path):
    """A copy of ``pristine`` with a JSON manifest (per-sample lists + index files, the format of
    older datasets), which ``fastcas convert`` checks."""
    root = tmp_path / "ds"
    shutil.copytree(pristine, root)
    convert_manifest(root, to="json")
    return root


def first_index(root):
    return sorted(root.glob("*.idx"))[0]


def edit_index(root, fn):
    idx = first_index(root)
    lines = idx.read_text().splitlines()
    idx.write_text("\n".join(fn(lines)) + "\n")
    return idx


def edit_manifest(root, fn):
    m = json.loads((root / "manifest.json").read_text())
    fn(m)
    (root / "manifest.json").write_text(json.dumps(m))


def test_indexing_negative_and_out_of_range(pristine):
    r = ShardReader(pristine)
    n = len(r)
    assert n == sum(COUNTS)
    assert r[-1].key == r[n - 1].key and r[-n].key == r[0].key
    assert bytes(r[-2].data) == bytes(r[n - 2].data) and r[-2].label == r.labels[n - 2]
    for bad in (n, n + 5, -n - 1):
        with pytest.raises(IndexError, match=f"out of range for {n} samples"):
            r[bad]
    assert [s.key for s in r] == r.keys


def test_invalid_on_error(pristine):
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'defer', got 'skip'"):
        ShardReader(pristine, on_error="skip")


@pytest.mark.parametrize("edit, message", [
    (lambda ls: ["v1.1 3"] + ls[1:], r"not a v1\.2 webdataset index"),
    (lambda ls: ["v1.2"] + ls[1:], r"not a v1\.2 webdataset index"),
    (lambda ls: ["v1.2 three"] + ls[1:], r"not a v1\.2 webdataset index"),
    (lambda ls: ["v1.2 4"] + ls[1:], "header says 4 samples, file has 3 lines"),
    (lambda ls: ls[:-1], "header says 3 samples, file has 2 lines"),
    (lambda ls: ["v1.2 2"] + ls[1:-1], "index lists 2 samples, manifest says 3"),
    (lambda ls: [ls[0], ls[1].replace(" ", " x", 1).replace(" x", " 1x", 1)] + ls[2:], "offset/size must be integers"),
    (lambda ls: [ls[0], ls[1] + " jpg"] + ls[2:], "expected groups of 'ext offset size name'"),
    (lambda ls: [ls[0], ls[2], ls[1]] + ls[3:], "index does not match the manifest"),
])
def test_malformed_index_names_the_file(ds, edit, message):
    idx = edit_index(ds, edit)
    with pytest.raises(ShardError, match=message) as info:
        convert(ds)
    assert idx.name in str(info.value)


def test_sample_without_an_image_member(ds):
    def drop_image(lines):
        parts = lines[1].split()
        groups = [parts[j:j + 4] for j in range(0, len(parts), 4)]
        kept = [g for g in groups if g[0] != "jpg"]
        return [lines[0], " ".join(sum(kept, []))] + lines[2:]

    edit_index(ds, drop_image)
    first_key = json.loads((ds / "manifest.json").read_text())["keys"][0]
    with pytest.raises(ShardError, match=f"sample '{first_key}' has no image member"):
        convert(ds)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("keys"), "manifest has no 'keys'"),
    (lambda m: m.pop("shards"), "manifest has no 'shards'"),
    (lambda m: m.pop("labels"), "manifest has no 'labels'"),
    (lambda m: m.pop("class_names"), "manifest has no 'class_names'"),
    (lambda m: m["keys"].pop(), r"shard counts \(7\), keys \(6\) and labels \(7\) disagree"),
    (lambda m: m["labels"].append(0), r"shard counts \(7\), keys \(7\) and labels \(8\) disagree"),
    (lambda m: m["shards"][0].update(count=2), "disagree"),
])
def test_incomplete_manifest(ds, edit, message):
    edit_manifest(ds, edit)
    with pytest.raises(ShardError, match=message) as info:
        convert(ds)
    assert "manifest.json" in str(info.value)


def test_a_json_manifest_is_refused_at_run_time_naming_the_command_that_converts_it(ds):
    from fastcas.loading.loader import Loader

    for open_ in (ShardReader, lambda p: Loader(p, batch_size=2, device="cpu")):
        with pytest.raises(ShardError, match=rf"{ds / 'manifest.json'}: a JSON manifest .*fastcas reads only the "
                                             rf"columnar manifest .*`fastcas convert {ds}`"):
            open_(ds)
    r = convert(ds)  # the one command: then it opens, the same samples
    assert len(r) == sum(COUNTS) and bytes(r[0].data)[:2] == b"\xff\xd8"


def test_invalid_manifest_and_missing_dataset(ds, tmp_path):
    (ds / "manifest.json").write_text("{not json")
    with pytest.raises(ShardError, match="manifest is not valid JSON"):
        ShardReader(ds)
    (ds / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        ShardReader(ds)
    with pytest.raises(FileNotFoundError, match="no such dataset or manifest"):
        ShardReader(tmp_path / "nowhere")


def test_missing_and_truncated_shards_raise_or_defer(ds, pristine):
    tars = sorted(ds.glob("*.tar"))
    m = json.loads((ds / "manifest.json").read_text())
    good = tars[1].read_bytes()
    tars[1].write_bytes(good[:1500])  # truncated mid-member: the JSON manifest's index check at convert
    with pytest.raises(ShardError, match="truncated") as info:
        convert(ds)
    assert tars[1].name in str(info.value)
    tars[1].write_bytes(good)
    convert(ds)
    tars[1].write_bytes(good[:1500])  # and the columnar manifest's size check at open
    with pytest.raises(ShardError, match="truncated") as info:
        ShardReader(ds)
    assert tars[1].name in str(info.value)
    r = ShardReader(ds, on_error="defer")
    assert list(r.broken) == [1]
    assert bytes(r[0].data)[:2] == b"\xff\xd8" and r[6].key == m["keys"][6]  # other shards read
    with pytest.raises(CorruptSampleError, match=m["keys"][3]) as err:
        r[3]
    assert err.value.key == m["keys"][3] and isinstance(err.value, ValueError)
    shutil.copy(pristine / tars[1].name, tars[1])  # shard 1 whole again, shard 2 gone
    tars[2].unlink()
    with pytest.raises(ShardError, match="shard is missing") as info:
        ShardReader(ds)
    assert tars[2].name in str(info.value)
    d = ShardReader(ds, on_error="defer")
    assert list(d.broken) == [2] and d[3].key == m["keys"][3]
    with pytest.raises(CorruptSampleError) as err:
        d[6]
    assert err.value.key == m["keys"][6]


def test_index_regenerated_for_another_tar_is_caught_at_read(ds):
    tars = sorted(ds.glob("*.tar"))
    # same sizes, other contents: swap the first two shards' tars (indexes stay)
    a, b = tars[0].read_bytes(), tars[1].read_bytes()
    if len(a) != len(b):
        pytest.skip("shards differ in size")
    tars[0].write_bytes(b)
    tars[1].write_bytes(a)
    r = convert(ds)
    with pytest.raises(CorruptSampleError, match="index does not match its tar") as err:
        r[0]
    assert err.value.key == r.keys[0]


@pytest.mark.dali
def test_multi_digit_zero_padded_labels_read_by_dali(tmp_path):
    """12 classes: labels 0..11 stored as '00'..'11'; DALI's webdataset reader batches them and
    they parse back to the manifest's labels, in order (our pipeline) and shuffled (bench)."""
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def

    from fastcas.loading.pipeline import build_reader_pipeline

    counts = tuple(2 if k < 6 else 1 for k in range(12))  # 18 samples, classes 0..11
    make_dataset(tmp_path / "ds", counts=counts, shard_size=5, size=(16, 12))
    r = ShardReader(tmp_path / "ds")
    assert r.num_classes == 12 and r.labels.max() == 11
    n = len(r)

    @pipeline_def(batch_size=6, num_threads=1, device_id=None)
    def in_order():
        return fn.readers.webdataset(paths=[str(p) for p in r.shard_paths], index_paths=[str(p) for p in r.index_paths],
                                     ext=["cls"], random_shuffle=False)

    p = in_order()
    p.build()
    raw = np.concatenate([np.array(p.run()[0].as_tensor()) for _ in range(n // 6)])
    assert raw.shape == (n, 2)  # one width for the whole dataset
    assert [int(bytes(row).decode()) for row in raw] == r.labels.tolist()
    shuffled = build_reader_pipeline(r, batch_size=6, image_size=16, num_threads=1, device="cpu", decode_only=True)
    got = np.concatenate([np.array(shuffled.run()[1].as_tensor()) for _ in range(n // 6)])
    labels = [int(bytes(row).decode()) for row in got]
    assert len(labels) == n and set(labels) <= set(range(12))
