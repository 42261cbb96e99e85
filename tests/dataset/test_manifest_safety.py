"""A manifest is input: labels must be integer class ids in range, shard paths stay inside the
dataset directory, member offsets inside their tar, and non-ASCII keys (pax headers) read back."""
import json

import numpy as np
import pytest

from fastcas.core.errors import ShardError
from fastcas.dataset.reader import ShardReader
from tests.helpers import convert, index_json, jpeg_bytes, make_dataset


def _edit(ds, fn):
    p = ds / "manifest.json"
    m = json.loads(p.read_text())
    fn(m)
    p.write_text(json.dumps(m))


@pytest.mark.parametrize("label, match", [(-1, r"label -1 of sample 's\d+' is outside \[0, 3\)"),
                                          (3, r"label 3 of sample 's\d+' is outside \[0, 3\)"),
                                          (1.7, r"label 1.7 of sample 's\d+' is not an integer class id"),
                                          ("2", r"label \"2\" of sample 's\d+' is not an integer class id"),
                                          (None, r"label null of sample 's\d+' is not an integer")])
def test_a_bad_manifest_label_names_the_manifest_and_the_key(tmp_path, label, match):
    make_dataset(tmp_path / "d", counts=(2, 2, 2), manifest="json")  # per-sample lists edited below

    def bad(m):
        m["labels"][3] = label
    _edit(tmp_path / "d", bad)
    with pytest.raises(ShardError, match="manifest.json: " + match):
        convert(tmp_path / "d")  # the JSON manifest's labels are checked where it is read


@pytest.mark.parametrize("field, value", [("tar", "/etc/passwd"), ("tar", "../../outside.tar"),
                                          ("index", "/etc/passwd"), ("index", "../x.idx")])
def test_a_shard_path_outside_the_dataset_directory_is_refused(tmp_path, field, value):
    make_dataset(tmp_path / "d", counts=(2, 2))
    (tmp_path / "outside.tar").write_bytes(b"\0" * 1024)

    def bad(m):
        m["shards"][0][field] = value
    _edit(tmp_path / "d", bad)
    with pytest.raises(ShardError, match=f"shard {field} '{value}' points outside the dataset directory"):
        ShardReader(tmp_path / "d", on_error="defer")


def _wds(root, keys, label=1):
    import webdataset as wds

    root.mkdir(parents=True)
    with wds.TarWriter(str(root / "a.tar")) as w:
        for j, k in enumerate(keys):
            w.write({"__key__": k, "jpg": jpeg_bytes(j, (24, 20)), "cls": label})
    return root / "a.tar"


def test_an_index_offset_past_the_end_of_its_tar_says_the_manifest_is_wrong(tmp_path):
    _wds(tmp_path / "w", ["k0", "k1"])
    index_json([tmp_path / "w" / "a.tar"], tmp_path / "ix")

    def bad(m):
        m["image_offset"][1] = m["shards"][0]["size"] + 4096
    _edit(tmp_path / "ix", bad)
    with pytest.raises(ShardError, match="sample 'k1' lies outside its tar .*the manifest does not describe this tar"):
        convert(tmp_path / "ix")


def test_non_ascii_keys_in_pax_headers_are_read_not_counted_corrupt(tmp_path):
    """webdataset/tarfile store ``café_0.jpg`` in a pax header, ``caf?_0.jpg`` in the ustar field."""
    keys = ["café_0", "猫", "naïve-κ", "plain"]
    _wds(tmp_path / "w", keys)
    m = index_json([tmp_path / "w" / "a.tar"], tmp_path / "ix")
    assert m["keys"] == keys and m["skipped"] == []
    r = convert(tmp_path / "ix")
    for i, k in enumerate(keys):
        s = r[i]
        assert s.key == k and bytes(s.data) == jpeg_bytes(i, (24, 20)) and s.label == 1


def test_a_non_ascii_key_whose_header_names_another_member_is_still_refused(tmp_path):
    from fastcas.core.errors import CorruptSampleError

    _wds(tmp_path / "w", ["café_0", "cafe_1"])
    index_json([tmp_path / "w" / "a.tar"], tmp_path / "ix")

    def swap(m):  # sample 0's offset now points at sample 1's member
        m["image_offset"][0], m["image_size"][0] = m["image_offset"][1], m["image_size"][1]
    _edit(tmp_path / "ix", swap)
    with pytest.raises(CorruptSampleError, match="index does not match its tar at key 'café_0'"):
        convert(tmp_path / "ix")[0]
    np.testing.assert_array_equal(ShardReader(tmp_path / "ix").labels, [1, 1])
