"""fastcas.core.npy: .npy headers read without ``ast`` (CPython 3.11 gh-106905: two threads
parsing at once fail with "AST constructor recursion depth mismatch")."""
from __future__ import annotations

import ast
import gc
import sys
import threading

import numpy as np
import pytest

from fastcas.core import npy
from fastcas.dataset.reader import ShardReader
from tests.helpers import make_dataset


@pytest.mark.parametrize("a", [np.arange(12, dtype="<i8"), np.zeros((5, 2), "<i4"), np.array(3.5), np.zeros(0),
                               np.asfortranarray(np.arange(6.0).reshape(2, 3)), np.array([True, False]),
                               np.array(["ab", "c"]), np.arange(4, dtype=">u2"),
                               np.zeros(3, [("a", "<i4"), ("b", "<f8")])])
def test_load_equals_numpy_for_every_header_form(tmp_path, a):
    np.save(tmp_path / "a.npy", a)
    for mode in (None, "r"):
        got, want = npy.load(tmp_path / "a.npy", mmap_mode=mode), np.load(tmp_path / "a.npy", mmap_mode=mode)
        assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)
        assert got.flags.f_contiguous == want.flags.f_contiguous


def test_load_refuses_pickles_and_names_a_truncated_file(tmp_path):
    np.save(tmp_path / "o.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"o\.npy: .*Python objects"):
        npy.load(tmp_path / "o.npy")
    np.save(tmp_path / "t.npy", np.arange(100.0))
    (tmp_path / "t.npy").write_bytes((tmp_path / "t.npy").read_bytes()[:-8])
    for mode in (None, "r"):
        with pytest.raises(ValueError, match=r"t\.npy: truncated \.npy file"):
            npy.load(tmp_path / "t.npy", mmap_mode=mode)
    (tmp_path / "x.npy").write_bytes(b"PK\x03\x04 not a npy")
    with pytest.raises(ValueError, match=r"x\.npy: not a \.npy file"):
        npy.load(tmp_path / "x.npy")


def test_opening_a_dataset_never_parses_a_header_with_ast(tmp_path, monkeypatch):
    make_dataset(tmp_path / "ds", counts=(3, 2), shard_size=2)

    def refuse(*a, **k):
        raise AssertionError("ast.literal_eval called (not thread-safe on CPython 3.11, gh-106905)")

    monkeypatch.setattr(ast, "literal_eval", refuse)
    r = ShardReader(tmp_path / "ds")
    assert len(r) == 5 and r.labels.tolist().count(0) == 3


class _Cycle:
    """Cyclic garbage with a finaliser: the garbage collector then runs Python code in the
    middle of C code (such as the AST constructor), where the interpreter may switch threads."""

    def __init__(self):
        self.me = self

    def __del__(self):
        [i for i in range(3)]


def test_manifests_open_from_8_threads_at_once_many_times(tmp_path):
    make_dataset(tmp_path / "ds", counts=(3, 2), shard_size=2)
    errors: list = []
    start = threading.Barrier(8)

    def work():
        start.wait()
        for _ in range(40):
            try:
                _Cycle()
                r = ShardReader(tmp_path / "ds")
                assert len(r) == 5
            except BaseException as exc:  # noqa: BLE001 - collected, asserted below
                errors.append(repr(exc))
                return

    interval, threshold = sys.getswitchinterval(), gc.get_threshold()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    gc.set_threshold(50, 1, 1)
    try:
        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
        gc.set_threshold(*threshold)
    assert errors == []
