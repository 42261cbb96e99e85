"""Atomic writes replace the whole file or nothing."""
import json

import pytest

from fastcas.core import io


def test_atomic_write_replaces_whole_file_or_nothing(tmp_path):
    target = tmp_path / "m.json"
    io.atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError, match="boom"):
        with io.atomic_open(target, "w") as fh:
            fh.write('{"half": ')
            raise RuntimeError("boom")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temp file left
