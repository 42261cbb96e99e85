"""A manifest's columns are checked against its header: ``columns.hash`` once per node (a
marker in the derived cache, re-hashed when a column's stat changes) and by ``fastcas info
--verify``; ``class_counts`` are derived from the label column, never trusted from the header."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from fastcas.cli import main
from fastcas.core.errors import ShardError
from fastcas.dataset import integrity
from fastcas.dataset.reader import ShardReader
from tests.helpers import make_dataset


def _edit_in_place(path, transform) -> None:
    """Rewrite a .npy's data in the same inode, size kept, modification time set back."""
    st = os.stat(path)
    a = np.load(path)
    with open(path, "r+b") as f:
        f.seek(st.st_size - a.nbytes)
        f.write(np.ascontiguousarray(transform(a)).tobytes())
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size


def _past_the_clock_tick(tmp_path) -> None:
    """Wait until the filesystem clock has moved past every column's ctime (a marker written in
    the tick of a column's change is not trusted), by writing probe files: no sleep."""
    newest = max(p.stat().st_ctime_ns for p in (tmp_path / "ds" / "manifest.cols").iterdir())
    probe = tmp_path / "probe"
    while True:
        probe.write_bytes(b"x")
        if probe.stat().st_mtime_ns > newest:
            return


def _counting(monkeypatch) -> list:
    calls = []
    real = integrity.columns_hash
    monkeypatch.setattr(integrity, "columns_hash", lambda *a: calls.append(1) or real(*a))
    return calls


@pytest.mark.parametrize("opened_before", [False, True])
def test_label_column_edited_in_place_with_a_stale_hash_is_refused(tmp_path, opened_before):
    make_dataset(tmp_path / "ds", counts=(6, 4, 2), shard_size=5)
    if opened_before:  # a trusted marker exists: the edit changes the column's ctime
        _past_the_clock_tick(tmp_path)
        ShardReader(tmp_path / "ds")
        ShardReader(tmp_path / "ds")
    _edit_in_place(tmp_path / "ds" / "manifest.cols" / "label.npy", lambda a: a[::-1])
    with pytest.raises(ShardError, match=r"manifest\.json: the columns in .*manifest\.cols do not match the manifest "
                                         r".*a column file was changed .*`fastcas shard` / `fastcas index`"):
        ShardReader(tmp_path / "ds")


def test_header_class_counts_that_disagree_with_the_labels_are_refused_naming_both(tmp_path):
    make_dataset(tmp_path / "ds", counts=(6, 4, 2), shard_size=5)
    m = tmp_path / "ds" / "manifest.json"
    header = json.loads(m.read_text())
    assert header["class_counts"] == [6, 4, 2]
    m.write_text(json.dumps({**header, "class_counts": [2, 4, 6]}))
    with pytest.raises(ShardError, match=r"class_counts \[2, 4, 6\] in the header disagree with the label column's "
                                         r"\[6, 4, 2\]"):
        ShardReader(tmp_path / "ds")


def test_a_label_outside_the_classes_in_the_column_names_the_key(tmp_path):
    make_dataset(tmp_path / "ds", counts=(6, 4, 2), shard_size=5)
    r = ShardReader(tmp_path / "ds")
    key = r.keys[3]
    cols = tmp_path / "ds" / "manifest.cols"
    labels = np.load(cols / "label.npy")
    labels[3] = 7
    np.save(cols / "label.npy", labels)
    header = json.loads((tmp_path / "ds" / "manifest.json").read_text())  # a consistent hash, a bad label
    header["columns"]["hash"] = integrity.columns_hash(cols, [p.stem for p in cols.glob("*.npy")])
    (tmp_path / "ds" / "manifest.json").write_text(json.dumps(header))
    with pytest.raises(ShardError, match=rf"label 7 of sample '{key}' is outside \[0, 3\)"):
        ShardReader(tmp_path / "ds")


def test_the_columns_are_hashed_once_per_node_then_a_marker_is_trusted(tmp_path, monkeypatch):
    make_dataset(tmp_path / "ds", counts=(6, 4, 2), shard_size=5)
    _past_the_clock_tick(tmp_path)
    calls = _counting(monkeypatch)
    assert ShardReader(tmp_path / "ds").class_counts.tolist() == [6, 4, 2]
    assert len(calls) == 1 and list((tmp_path / "ds" / ".fastcas-cache").glob("columns-*.json"))
    for _ in range(3):
        assert ShardReader(tmp_path / "ds").class_counts.tolist() == [6, 4, 2]
    assert len(calls) == 1
    assert main(["info", str(tmp_path / "ds"), "--verify"]) == 0  # hashes regardless of the marker
    assert len(calls) == 2


def test_info_verify_names_a_changed_column(tmp_path, capsys):
    make_dataset(tmp_path / "ds", counts=(6, 4, 2), shard_size=5)
    assert main(["info", str(tmp_path / "ds"), "--verify"]) == 0
    assert "verified: the columns match columns.hash" in capsys.readouterr().out
    _edit_in_place(tmp_path / "ds" / "manifest.cols" / "size.npy", lambda a: a + 1)
    assert main(["info", str(tmp_path / "ds"), "--verify"]) == 2
    assert "do not match the manifest" in capsys.readouterr().err


def test_train_resume_after_label_npy_edited_in_place_is_refused(tmp_path, capsys):
    pytest.importorskip("torch")
    make_dataset(tmp_path / "train", counts=(6, 4, 2), shard_size=5, size=(16, 16))
    common = ["train", str(tmp_path / "train"), "--out", str(tmp_path / "run"), "--device", "cpu",
              "--model", "resnet32", "--batch-size", "4", "--image-size", "16", "--epoch-length", "8",
              "--py-workers", "0", "--no-amp"]
    assert main(common + ["--epochs", "1"]) == 0
    assert (tmp_path / "run" / "checkpoint.pt").exists()
    capsys.readouterr()
    _edit_in_place(tmp_path / "train" / "manifest.cols" / "label.npy", lambda a: a[::-1])
    assert main(common + ["--epochs", "2", "--resume"]) == 2
    assert "do not match the manifest" in capsys.readouterr().err
