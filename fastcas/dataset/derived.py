"""Per-dataset derived columns (score columns, sampler CDFs) cached beside the manifest.

Built once per node and memory-mapped by every process: ranks and DALI workers share the
pages instead of each holding an 8 B/sample copy. Each file is named by a digest of what it
is derived from (the manifest's :attr:`~fastcas.dataset.reader.ShardReader.digest`, the
score file's SHA-256, the weight settings), so a stale entry is never read; it is written to
a temporary name and renamed, so ranks racing to build one are safe (identical bytes win).
Every load checks the array (dtype, length N, finite; a CDF non-decreasing with a last value
> 0; :func:`cached_array`): a file edited, truncated or replaced by hand is rebuilt, never used.

Location: ``<dataset>/.fastcas-cache/`` when the dataset directory is writable, else
``~/.cache/fastcas/derived/<dataset digest>/``. Deleting it only costs a rebuild.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np

from fastcas.core import npy
from fastcas.core.io import atomic_open, atomic_write_json

CACHE_DIR = ".fastcas-cache"


def cache_dir(reader) -> Path:
    """The derived-column directory of ``reader``'s dataset (created)."""
    d = reader.root / CACHE_DIR
    try:
        d.mkdir(exist_ok=True)
        if os.access(d, os.W_OK):
            return d
    except OSError:
        pass
    d = Path.home() / ".cache" / "fastcas" / "derived" / reader.digest
    d.mkdir(parents=True, exist_ok=True)
    return d


def stat_id(path: str | Path) -> str:
    """``inode:size:mtime_ns:ctime_ns`` of ``path``: any write changes ``ctime``, even one that
    keeps the size and sets the modification time back."""
    st = os.stat(path)
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def file_sha256(path: str | Path, where: Path) -> str:
    """SHA-256 of the file at ``path``, remembered in ``where`` by (inode, size, mtime, ctime):
    the file is read once per node, later calls cost two ``stat``. A memo written in the same
    clock tick as the file's last change is not trusted (a change later in that tick would keep
    every timestamp): the file is hashed again, as git does for "racily clean" entries."""
    sid = stat_id(path)
    memo = where / f"sha256-{hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:16]}.json"
    try:
        m = json.loads(memo.read_text())
        if m["stat"] == sid and os.stat(path).st_ctime_ns < memo.stat().st_mtime_ns:
            return m["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if stat_id(path) == sid:  # unchanged while it was read
        atomic_write_json(memo, {"path": str(path), "stat": sid, "sha256": h.hexdigest()})
    return h.hexdigest()


def _problem(a: np.ndarray, check) -> str | None:
    try:
        return check(a)
    except (ValueError, TypeError, IndexError) as exc:
        return str(exc)


def cached_array(reader, name: str, build, check) -> np.ndarray:
    """The array ``<cache>/<name>.npy``, memory-mapped, built by ``build() -> ndarray`` and saved
    when the file does not exist yet. Every load is checked by ``check(array) -> problem or
    None`` (dtype, length, finiteness, ...): a file that fails it (edited, truncated, written by
    something else) is never used; it is rebuilt and replaced atomically, with a warning naming
    the file and the problem. A freshly built array that fails ``check`` is a ``ValueError``."""
    path = cache_dir(reader) / f"{name}.npy"
    if path.exists():
        try:
            a = npy.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            problem = str(exc)
        else:
            problem = _problem(a, check)
            if problem is None:
                return a
            del a
        warnings.warn(f"fastcas: {path}: cached array rejected ({problem}); rebuilding it", RuntimeWarning,
                      stacklevel=3)
    a = np.ascontiguousarray(build())
    bad = _problem(a, check)
    if bad is not None:
        raise ValueError(f"{path}: the array built for the cache fails its check ({bad})")
    try:
        with atomic_open(path, "wb") as f:
            np.save(f, a, allow_pickle=False)
    except OSError as exc:
        raise ValueError(f"{path}: cannot write the derived cache ({exc}); delete {path.parent} "
                         "or make it writable") from None
    return npy.load(path, mmap_mode="r")


def check_vector(a: np.ndarray, n: int, *, positive: bool = False, cdf: bool = False,
                 chunk: int = 1 << 20) -> str | None:
    """The problem with ``a`` as a float64 [n] column (finite; ``positive``: every value > 0;
    ``cdf``: non-decreasing from >= 0 to a last value > 0), or None. Chunked: O(chunk) memory."""
    if a.dtype != np.float64 or a.shape != (n,):
        return f"{a.dtype} {a.shape}, expected float64 ({n},)"
    prev = 0.0
    for lo in range(0, n, chunk):
        c = np.asarray(a[lo : lo + chunk])
        if not np.isfinite(c).all():
            return f"non-finite value at index {lo + int(np.argmin(np.isfinite(c)))}"
        if positive and (c <= 0).any():
            return f"value {float(c[np.argmax(c <= 0)])} <= 0 at index {lo + int(np.argmax(c <= 0))}"
        if cdf:
            d = np.diff(c, prepend=prev)
            if (d < 0).any():
                return f"decreases at index {lo + int(np.argmax(d < 0))} (not a CDF)"
            prev = float(c[-1])
    if cdf and n and prev <= 0:
        return f"last value {prev} is not > 0 (not a CDF)"
    return None


def score_column(reader, path: str | Path) -> tuple[np.ndarray, str]:
    """(float64 [N] CAS of each sample in manifest order, memory-mapped; the score file's
    SHA-256). The join by key (:func:`fastcas.dataset.scorefile.read_scores`) runs once per
    node and score file; its checks (missing keys, non-finite values) run with it."""
    d = cache_dir(reader)
    sha = file_sha256(path, d)

    def build():
        from fastcas.dataset.scorefile import read_scores

        return read_scores(path, keys=reader.keys, labels=reader.labels).cas.astype(np.float64)

    n = len(reader)
    return cached_array(
        reader, f"cas-{reader.digest}-{sha[:16]}", build, lambda a: check_vector(a, n, positive=True)
    ), sha
