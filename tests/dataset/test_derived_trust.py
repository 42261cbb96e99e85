"""Derived arrays cached beside a manifest (``<dataset>/.fastcas-cache/``) are checked on every
load: a CDF or CAS column edited, truncated or replaced is rebuilt, never used; the score-file
SHA-256 memo sees a rewrite in place."""
from __future__ import annotations

import os

import numpy as np
import pytest

from fastcas.dataset.derived import CACHE_DIR, file_sha256, score_column
from fastcas.dataset.reader import ShardReader
from fastcas.dataset.scorefile import write_scores
from fastcas.sampling.shared import shared_cdf, shared_concentration
from tests.helpers import make_dataset


def _tamper(path, kind: str, n: int) -> None:
    good = np.load(path)
    if kind == "short":  # 6 entries for 12 samples: samples 6-11 would never be drawn
        np.save(path, good[: n // 2])
    elif kind == "long":  # 24 entries: draws past N would wrap
        np.save(path, np.concatenate([good, good + good[-1]]))
    elif kind == "nan":  # every draw would land on one sample
        np.save(path, np.full(n, np.nan))
    elif kind == "int":  # an integer CDF: uniform draws instead of the weights
        np.save(path, np.arange(1, n + 1))
    elif kind == "decreasing":
        np.save(path, good[::-1].copy())
    elif kind == "zero":
        np.save(path, np.zeros(n))
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[:-20])
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["short", "long", "nan", "int", "decreasing", "zero", "truncated"])
def test_a_tampered_cdf_is_rebuilt_never_used(tmp_path, kind):
    make_dataset(tmp_path / "ds", counts=(6, 4, 2), shard_size=5)
    r = ShardReader(tmp_path / "ds")
    cdf, d = shared_cdf(r, "cmo")
    want = np.array(cdf)
    path = tmp_path / "ds" / CACHE_DIR / f"cdf-{d}.npy"
    assert path.exists() and len(want) == 12
    _tamper(path, kind, 12)
    with pytest.warns(RuntimeWarning, match=rf"cdf-{d}\.npy: cached array rejected"):
        again, d2 = shared_cdf(r, "cmo")
    assert d2 == d and np.array_equal(np.asarray(again), want)
    assert np.array_equal(np.load(path), want)  # replaced on disk too
    stats = np.array(shared_concentration(r, again, d))
    np.save(tmp_path / "ds" / CACHE_DIR / f"ess-{d}.npy", np.array([np.nan, 1.0, 0.0, 1.0]))
    with pytest.warns(RuntimeWarning, match=rf"ess-{d}\.npy: cached array rejected"):
        assert np.array_equal(shared_concentration(r, again, d), stats)


@pytest.mark.parametrize("kind", ["short", "nan", "zero", "truncated"])
def test_a_tampered_score_column_is_rebuilt(tmp_path, kind):
    make_dataset(tmp_path / "ds", counts=(6, 4, 2), shard_size=5)
    r = ShardReader(tmp_path / "ds")
    cas = np.arange(12) % 5 + 1
    write_scores(tmp_path / "s.parquet", list(r.keys), r.labels, cas, None, {})
    col, sha = score_column(r, tmp_path / "s.parquet")
    (path,) = (tmp_path / "ds" / CACHE_DIR).glob("cas-*.npy")
    _tamper(path, kind, 12)
    with pytest.warns(RuntimeWarning, match=r"cas-.*\.npy: cached array rejected"):
        again, sha2 = score_column(r, tmp_path / "s.parquet")
    assert sha2 == sha and np.asarray(again).tolist() == cas.tolist()


def _rewrite_in_place(path, data: bytes) -> None:
    """New bytes into the same inode, the size kept and the modification time set back."""
    st = os.stat(path)
    assert len(data) == st.st_size
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_mtime_ns == st.st_mtime_ns and os.stat(path).st_ino == st.st_ino


def test_the_sha256_memo_sees_a_rewrite_in_place_with_the_same_size_and_mtime(tmp_path):
    import hashlib

    f = tmp_path / "scores.bin"
    f.write_bytes(b"a" * 1000)
    (tmp_path / "memo").mkdir()
    assert file_sha256(f, tmp_path / "memo") == hashlib.sha256(b"a" * 1000).hexdigest()
    assert file_sha256(f, tmp_path / "memo") == hashlib.sha256(b"a" * 1000).hexdigest()  # memo read
    _rewrite_in_place(f, b"b" * 1000)
    assert file_sha256(f, tmp_path / "memo") == hashlib.sha256(b"b" * 1000).hexdigest()


def test_a_score_file_rewritten_in_place_gives_the_new_column(tmp_path):
    make_dataset(tmp_path / "ds", counts=(6, 4, 2), shard_size=5)
    r = ShardReader(tmp_path / "ds")
    cas = np.arange(12) % 5 + 1
    write_scores(tmp_path / "s.parquet", list(r.keys), r.labels, cas, None, {})
    write_scores(tmp_path / "t.parquet", list(r.keys), r.labels, cas[::-1], None, {})
    first, sha = score_column(r, tmp_path / "s.parquet")
    assert np.asarray(first).tolist() == cas.tolist()
    new = (tmp_path / "t.parquet").read_bytes()
    if len(new) != (tmp_path / "s.parquet").stat().st_size:
        pytest.skip("the two parquet files differ in size")
    _rewrite_in_place(tmp_path / "s.parquet", new)
    second, sha2 = score_column(r, tmp_path / "s.parquet")
    assert sha2 != sha and np.asarray(second).tolist() == cas[::-1].tolist()


def test_a_truncated_manifest_column_names_the_file(tmp_path):
    make_dataset(tmp_path / "ds", counts=(6, 4, 2), shard_size=5)
    col = tmp_path / "ds" / "manifest.cols" / "label.npy"
    col.write_bytes(col.read_bytes()[:-8])
    with pytest.raises(ValueError, match=r"label\.npy: truncated \.npy file"):
        ShardReader(tmp_path / "ds")
